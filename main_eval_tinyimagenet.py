"""Evaluate a Tiny ImageNet checkpoint's robustness: python main_eval_tinyimagenet.py --model resnet18 --model_path ... (see README.md)."""
import sys

try:
    from evaluation.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch imports: no traceback
    sys.exit(130)

DEFAULTS = {"dataset": "Tiny_Image", "datasets": ["Tiny_Image"]}

DESCRIPTION = ("Robustness evaluation on Tiny ImageNet (validation set) under the DGAD/AdaAD "
               "('paper') or the ARD/IAD/RSLAD ('standard') protocol.")

if __name__ == "__main__":
    sys.exit(main(DEFAULTS, DESCRIPTION))
