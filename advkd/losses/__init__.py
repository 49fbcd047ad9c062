"""Training losses: pure functions of logits (and features); no model or optimiser inside."""
from .common import kl_batchmean, kl_mean_entries, kl_rows, swap_columns
from .dgad import dgad_loss

__all__ = ["dgad_loss", "kl_batchmean", "kl_mean_entries", "kl_rows", "swap_columns"]
