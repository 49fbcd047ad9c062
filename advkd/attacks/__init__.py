"""The PGD engine and its inner losses, and the evaluation attacks built on it (plus AutoAttack,
which is the authors' package)."""
from .autoattack import StandardAutoAttack, pyautoattack_version
from .cw import PAPER_CW_L2, cw_inf, cw_l2
from .fgsm import fgsm
from .pgd import ce_sum, cw_hinge, cw_margin_sum, init_delta, kl_sum, module_mode, pgd, pgd_step

__all__ = ["ce_sum", "cw_hinge", "cw_margin_sum", "init_delta", "kl_sum", "module_mode", "pgd", "pgd_step",
           "fgsm", "cw_l2", "cw_inf", "PAPER_CW_L2", "StandardAutoAttack", "pyautoattack_version"]
