"""Evaluate a CIFAR-10/100 checkpoint's robustness: python main_eval.py --model resnet18 --model_path ... (see README.md)."""
import sys

try:
    from evaluation.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch imports: no traceback
    sys.exit(130)

DEFAULTS = {"dataset": "CIFAR10", "datasets": ["CIFAR10", "CIFAR100"]}

DESCRIPTION = ("Robustness evaluation on CIFAR-10/100 under the DGAD/AdaAD ('paper') or the "
               "ARD/IAD/RSLAD ('standard') protocol.")

if __name__ == "__main__":
    sys.exit(main(DEFAULTS, DESCRIPTION))
