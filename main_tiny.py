"""Train a robust student on Tiny ImageNet: python main_tiny.py --method DGAD ... (see README.md)."""
import sys

try:
    from training.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch imports: no traceback
    sys.exit(130)

DEFAULTS = {"dataset": "Tiny_Image", "datasets": ["Tiny_Image"], "teacher_model": "presnet18"}

if __name__ == "__main__":
    sys.exit(main(DEFAULTS, "Adversarial knowledge distillation on Tiny ImageNet (default method: DGAD)."))
