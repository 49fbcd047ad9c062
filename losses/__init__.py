"""Training losses (docs/methods.md sections 2-4): pure functions of logits (and features), no
model or optimiser inside. Depends on torch only: copy this folder into another project as it is.
Each method has a `*_terms` function (the total under 'loss' and its named parts) and a `*_loss`
function (the total)."""
from .adversarial_training import cross_entropy_loss, cross_entropy_terms, trades_loss, trades_terms
from .common import kl_batchmean, kl_entries_eps, kl_mean_entries, kl_rows, swap_columns
from .dgad import dgad_loss, dgad_terms
from .distillation import (KL_REDUCTIONS, adaad_loss, adaad_terms, akd_terms, ard_loss, ard_terms, iad_loss,
                           iad_terms, igdm_term, kl_mean_entries_eps, kl_reduced, mtard_mixture, mtard_terms,
                           mtard_weight_update, peeraid_terms, rslad_loss, rslad_terms, saad_terms, teacher_trust)
from .fairness import (absld_temperature_update, absld_terms, class_tempered, class_weights, fair_ard_terms,
                       fair_iad_terms, fair_mtard_terms, fair_rslad_terms, per_class_sums, weighted_ce, weighted_kl)
from .vargap import batch_covariance, covariance_alignment, gram_alignment, variance_gap_alignment, variance_gap_terms

__all__ = ["KL_REDUCTIONS", "absld_temperature_update", "absld_terms", "adaad_loss", "adaad_terms", "akd_terms",
           "ard_loss", "ard_terms", "batch_covariance", "class_tempered", "class_weights", "covariance_alignment",
           "cross_entropy_loss", "cross_entropy_terms", "dgad_loss", "dgad_terms", "fair_ard_terms",
           "fair_iad_terms", "fair_mtard_terms", "fair_rslad_terms", "gram_alignment", "iad_loss", "iad_terms",
           "igdm_term", "kl_batchmean", "kl_entries_eps", "kl_mean_entries", "kl_mean_entries_eps", "kl_reduced",
           "kl_rows", "mtard_mixture", "mtard_terms", "mtard_weight_update", "peeraid_terms", "per_class_sums",
           "rslad_loss", "rslad_terms", "saad_terms", "swap_columns", "teacher_trust", "trades_loss", "trades_terms",
           "variance_gap_alignment", "variance_gap_terms", "weighted_ce", "weighted_kl"]
