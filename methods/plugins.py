"""Plug-in terms: a term added to the loss of any distillation method by a flag, not by a new copy of
each method (docs/methods.md section 3.11). A plug-in names the passes it reads (added after the
method's own when missing), its options and its logged parts, and adds its term to the method's."""
from typing import Dict

import torch

from losses import igdm_term

from .base import Option, StepOutputs


def default_igdm_alpha(args) -> float:
    """The term's weight where the released code adds it by default (IGDM; SAAD, whose code comment
    gives 10 off CIFAR-10), else 0: off."""
    if args.method == "IGDM":
        return 1.0
    if args.method == "SAAD":
        return 1.0 if args.dataset == "CIFAR10" else 10.0
    return 0.0


class IGDMTerm:
    """IGDM (Lee et al., ICLR 2025): + alpha * (epoch / horizon) * KL(softmax(T(x+d) - T(x-d)) ||
    softmax(S(x+d) - S(x-d))), d = x' - x, the student's passes in train() mode with gradient, the
    teacher's without; x - d is not clamped to [0, 1] (as the released igdm.py)."""
    passes = ("s_adv", "t_adv", "s_minus", "t_minus")
    parts = ("igdm",)
    options = {
        "igdm_alpha": Option(default_igdm_alpha, type=float, low=0,
                             help="IGDM plug-in: weight alpha of the input-gradient matching term, reached at "
                                  "epoch --igdm_horizon and growing linearly to it (0 = off; IGDM: 1; SAAD, in its "
                                  "per-sample weighted loss, over all --epochs: 1 on CIFAR-10, 10 elsewhere)"),
        "igdm_horizon": Option(200, type=int, low=1,
                               help="IGDM plug-in: the epoch at which the term's weight reaches --igdm_alpha "
                                    "(the released igdm.py divides the epoch by 200 whatever the run's length)"),
    }

    def __init__(self, config):
        self.alpha, self.horizon = config.options["igdm_alpha"], config.options["igdm_horizon"]

    @staticmethod
    def enabled(config) -> bool:
        return config.options.get("igdm_alpha", 0.0) > 0

    def add(self, terms: Dict[str, torch.Tensor], out: StepOutputs) -> Dict[str, torch.Tensor]:
        term = igdm_term(out.s_adv, out.s_minus, out.t_adv, out.t_minus)
        weight = self.alpha * out.epoch / self.horizon
        return {**terms, "loss": terms["loss"] + weight * term, "igdm": term}


IGDM_OPTIONS = IGDMTerm.options
