"""Losses of the methods that need no teacher: natural training, PGD-AT (Madry) and TRADES
(docs/methods.md sections 3.1-3.3)."""
from typing import Dict

import torch
import torch.nn.functional as F

from .common import kl_batchmean


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy: on clean logits for Natural, on adversarial logits for PGD-AT."""
    return F.cross_entropy(logits, y)


def cross_entropy_terms(logits: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The mean cross-entropy as the total and as its one part, 'ce'."""
    ce = cross_entropy_loss(logits, y)
    return {"loss": ce, "ce": ce}


def trades_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, y: torch.Tensor, beta: float) -> Dict[str, torch.Tensor]:
    """CE(S(x), y) + beta * (1/N) sum_i KL(softmax(S(x_i)) || softmax(S(x'_i))), with 'ce' and 'kl'.

    The clean prediction is the KL's target and is not detached: TRADES pulls both predictions
    together."""
    ce, kl = F.cross_entropy(s_clean, y), kl_batchmean(s_clean, s_adv)
    return {"loss": ce + beta * kl, "ce": ce, "kl": kl}


def trades_loss(s_clean: torch.Tensor, s_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    return trades_terms(s_clean, s_adv, y, beta)["loss"]
