"""VarGap: distillation that aligns the student's feature statistics with the teacher's
(docs/methods.md section 4).

APPROXIMATE re-implementation: only the abstract of the paper is available to us, so the
alignment losses (losses/vargap.py) are our design, not the authors'. The total loss is
L_base + vg_cov * L_cov + vg_gram * L_gram, where L_base and the attack are those of the method
named by --vg_base, called as they are."""
from typing import Optional

import torch
import torch.nn as nn

from losses import variance_gap_terms

from .adversarial_training import PGDAT, TRADES
from .base import Method, Option
from .plugins import IGDM_OPTIONS
from .dgad import DGAD
from .distillation import ARD, IAD, RSLAD, AdaAD

ALIGNED = ("s_clean", "s_adv", "t_clean", "t_adv")  # the passes whose features the alignment reads
BASES = {cls.name: cls for cls in (PGDAT, TRADES, ARD, IAD, RSLAD, AdaAD, DGAD)}
DEFAULT_BASE = "RSLAD"
APPROXIMATE = "approximate re-implementation from the paper's abstract only; not the authors' code or exact losses"

VARGAP_OPTIONS = {
    "vg_base": Option(DEFAULT_BASE, choices=tuple(BASES),
                      help="VarGap (approximate re-implementation): the method whose attack and loss form L_base; "
                           "VarGap also reads that method's options"),
    "vg_cov": Option(1.0, type=float, low=0,
                     help="VarGap (approximate re-implementation, weight not from the paper): weight of "
                          "||Cov(P f_S) - Cov(f_T)||_F^2 / d_T^2 on the clean plus the adversarial batch, "
                          "P a learned linear projector"),
    "vg_gram": Option(0.0, type=float, low=0,
                      help="VarGap (approximate re-implementation, weight not from the paper): weight of "
                           "||G_S - G_T||_F^2 / N^2, G the Gram matrix of row-normalised features, on the clean "
                           "plus the adversarial batch (0 = off)"),
}


class VarGap(Method):
    name = "VarGap"
    summary = (f"[{APPROXIMATE}] L_base (--vg_base, default {DEFAULT_BASE}, with its own attack) + alignment of the "
               "student's (projected) penultimate-feature covariance and/or Gram matrix to the teacher's, on clean "
               "and adversarial batches")
    paper = ("Adversarially Robust Distillation by Reducing the Student-Teacher Variance Gap (Dong, Koniusz, Chen, "
             f"Ong, ECCV 2024) [{APPROXIMATE}]")
    needs_teacher = True
    with_features = True
    options = VARGAP_OPTIONS

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.base = BASES[o["vg_base"]](config)
        self.attack = self.base.attack
        self.forwards = self.with_every_pass(self.base.forwards)
        self.parts = self.base.parts + ("cov", "gram")
        self.cov_weight, self.gram_weight = o["vg_cov"], o["vg_gram"]

    @staticmethod
    def with_every_pass(sequence):
        """The base's passes in its order, then any it lacks: the alignment reads all four."""
        return tuple(sequence) + tuple(key for key in ALIGNED if key not in sequence)

    def forward_sequence(self, epoch):
        return self.with_every_pass(self.base.forward_sequence(epoch))

    @classmethod
    def released_recipe(cls, args):
        return BASES[getattr(args, "vg_base", None) or DEFAULT_BASE].recipe

    @classmethod
    def options_for(cls, args):
        base = BASES[getattr(args, "vg_base", None) or DEFAULT_BASE].options
        return {**VARGAP_OPTIONS, **{name: option for name, option in base.items() if name not in IGDM_OPTIONS}}

    def extra_module(self, student: nn.Module, teacher: Optional[nn.Module]) -> nn.Module:
        """P: student features -> teacher width, for the covariance term (a bias would cancel in Cov).
        The run owns it (trained and saved with the student) and hands it back as StepOutputs.extra."""
        return nn.Linear(student.feature_dim, teacher.feature_dim, bias=False)

    def loss(self, out):
        projector = out.extra
        if projector is None:
            raise RuntimeError("VarGap's loss needs the run's projector: pass extra_module(...) to training_step")
        # Features come out of autocast in bf16; covariances need at least fp32.
        f = {key: value.to(torch.promote_types(value.dtype, torch.float32)) for key, value in out.features.items()}
        alignment = variance_gap_terms(projector(f["s_clean"]), projector(f["s_adv"]), f["s_clean"], f["s_adv"],
                                       f["t_clean"], f["t_adv"], cov_weight=self.cov_weight,
                                       gram_weight=self.gram_weight)
        base = self.base.loss(out)
        return {**base, "loss": base["loss"] + alignment["loss"], "cov": alignment["cov"], "gram": alignment["gram"]}
