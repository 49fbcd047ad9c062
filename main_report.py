"""Tables and figures from run folders: python main_report.py checkpoints/reproduce/cifar10-mini --out report
(see docs/reproducing.md)."""
import sys

try:
    from reporting.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch imports: no traceback
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
