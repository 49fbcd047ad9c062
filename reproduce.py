"""Reproduce a table end to end: python reproduce.py --preset cifar10-mini (see README, Reproducing a table)."""
import sys

try:
    from pipeline.cli import main
except KeyboardInterrupt:
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
