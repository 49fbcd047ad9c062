"""Reproduce a table end to end: python reproduce.py --preset cifar10-mini (see docs/reproducing.md)."""
import sys

try:
    from pipeline.cli import main
except KeyboardInterrupt:
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
