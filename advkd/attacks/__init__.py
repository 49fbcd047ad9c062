"""The PGD engine and its inner losses."""
from .pgd import ce_sum, cw_margin_sum, init_delta, kl_sum, module_mode, pgd, pgd_step

__all__ = ["ce_sum", "cw_margin_sum", "init_delta", "kl_sum", "module_mode", "pgd", "pgd_step"]
