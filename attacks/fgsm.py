"""FGSM: one signed-gradient step of size eps on the cross-entropy, from the clean input.

It is the PGD engine with one step and no random start, so it shares PGD's projection and
[0,1] clipping and needs no code of its own beyond the settings."""
import torch
import torch.nn as nn

from .pgd import ce_sum, pgd


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, loss_fn=ce_sum, init="none")
