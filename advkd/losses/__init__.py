"""Training losses: pure functions of logits (and features); no model or optimiser inside."""
from .adversarial_training import cross_entropy_loss, trades_loss
from .common import kl_batchmean, kl_mean_entries, kl_rows, swap_columns
from .dgad import dgad_loss
from .distillation import KL_REDUCTIONS, adaad_loss, ard_loss, iad_loss, kl_reduced, rslad_loss, teacher_trust
from .vargap import batch_covariance, covariance_alignment, gram_alignment, variance_gap_alignment

__all__ = ["KL_REDUCTIONS", "adaad_loss", "ard_loss", "batch_covariance", "covariance_alignment",
           "cross_entropy_loss", "dgad_loss", "gram_alignment", "iad_loss", "kl_batchmean", "kl_mean_entries",
           "kl_reduced", "kl_rows", "rslad_loss", "swap_columns", "teacher_trust", "trades_loss",
           "variance_gap_alignment"]
