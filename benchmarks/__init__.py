"""What only bench.py uses: phase timing, FLOP counting and the device's peak (measure.py), and the
plain reference step it compares against (plain.py). Nothing trains with it."""
