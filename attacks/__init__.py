"""The PGD engine and its inner losses, and the evaluation attacks built on it (docs/methods.md
section 6). Depends on torch only. AutoAttack, the authors' package, is wrapped in evaluation/."""
from .cw import PAPER_CW_L2, cw_inf, cw_l2
from .fgsm import fgsm
from .pgd import Target, ce_sum, cw_hinge, cw_margin_sum, init_delta, kl_sum, module_mode, pgd, pgd_step

__all__ = ["Target", "ce_sum", "cw_hinge", "cw_margin_sum", "init_delta", "kl_sum", "module_mode", "pgd", "pgd_step",
           "fgsm", "cw_l2", "cw_inf", "PAPER_CW_L2"]
