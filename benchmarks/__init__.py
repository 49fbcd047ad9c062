"""What only bench.py uses: phase timing, FLOP counting and the device's peak (measure.py), and the
plain reference step it compares against (plain.py); and gpu_check.py, the one command of a GPU lease
(the gpu test tier, bench.py's runs, one real epoch). Nothing trains with it."""
