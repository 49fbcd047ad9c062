"""The one training engine behind main.py and main_tiny.py: `fit(config)` (loop.py) reads top to
bottom; the run folder (run_dir.py), the networks and their random streams (networks.py), the
command line (config.py, cli.py), the schedules (schedule.py), signals (signals.py) and the
non-finite guard (finite.py) are each their own small piece."""
