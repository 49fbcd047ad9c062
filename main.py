"""Train a robust student on CIFAR-10/100: python main.py --method DGAD ... (see README.md)."""
import sys

try:
    from training.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch imports: no traceback
    sys.exit(130)

DEFAULTS = {"dataset": "CIFAR10", "datasets": ["CIFAR10", "CIFAR100"], "teacher_model": "wideresnet34_10"}

if __name__ == "__main__":
    sys.exit(main(DEFAULTS, "Adversarial knowledge distillation on CIFAR-10/100 (default method: DGAD)."))
