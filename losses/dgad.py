"""DGAD: Dynamic Guidance Adversarial Distillation (docs/methods.md section 2).

Misclassification-Aware Partitioning (MAP) splits the batch by whether the teacher is right on
the clean input; Error-corrective Label Swapping (ELS) repairs the teacher's wrong
distributions; Predictive Consistency Regularization (PCR) ties the student's clean and
adversarial predictions together. All functions are pure functions of logits; this folder
depends on torch only.
"""
from typing import Dict

import torch
import torch.nn.functional as F

from .common import kl_rows, swap_columns

LOSS_FORMULAS = ("fixed", "authors")


def misclassified_by_teacher(t_clean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MAP: True for the samples the teacher gets wrong on clean inputs (the ST set)."""
    return t_clean.argmax(1) != y


def swap_clean_teacher(t_clean: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """ELS on clean logits: in each selected row, swap the true class's logit with the top one."""
    return swap_columns(t_clean, y, t_clean.argmax(1), rows)


def swap_adversarial_teacher(t_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ELS on adversarial logits: where the best wrong class strictly beats the true one, swap them."""
    others = t_adv.masked_fill(F.one_hot(y, t_adv.shape[1]).bool(), float("-inf"))
    best_wrong = others.argmax(1)
    true_logit = t_adv.gather(1, y[:, None]).squeeze(1)
    wrong_logit = t_adv.gather(1, best_wrong[:, None]).squeeze(1)
    return swap_columns(t_adv, y, best_wrong, true_logit < wrong_logit)


def predictive_consistency(s_clean: torch.Tensor, s_adv: torch.Tensor) -> torch.Tensor:
    """PCR: mean over all N*C entries of (softmax(s_adv) - softmax(s_clean))^2, gradient through both."""
    return (F.softmax(s_adv, dim=1) - F.softmax(s_clean, dim=1)).pow(2).mean()


INTROSPECTION = ("off", "authors", "intent")


def dgad_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, t_adv: torch.Tensor,
               y: torch.Tensor, beta: float, batch_size: int, use_map: bool = True, use_els: bool = True,
               use_pcr: bool = True, formula: str = "fixed", introspection: str = "off",
               iad_beta: float = 0.1) -> Dict[str, torch.Tensor]:
    """L = (n_ST/B) L_ST + ((B - n_ST)/B) L_AT + beta L_PCR, and its parts.

    batch_size is B: the configured batch size (the authors' choice, also on the last smaller
    batch) or the actual one (`--weight_by actual`). formula='authors' reproduces the DGAD
    code's MobileNetV2 expression 0.5 ((n_ST/B) L_ST + (B - n_ST)/B) L_AT + beta L_PCR
    (docs/methods.md section 2.6). Returns {'loss', 'L_ST', 'L_AT', 'L_PCR', 'st_fraction'}: the
    unweighted terms, L_PCR 0 when it is off, and n_ST / N.

    introspection: the DGAD_IAD1 variant of the authors' code (docs/methods.md section 2.7), IAD's
    self-distillation added to L_ST and L_AT, each sample weighted by 1 - P(y)^iad_beta of the swapped
    teacher: 'authors' compares S(x) with S(x) and S(x') with S(x') (the released code's two train()
    passes of one input: zero), 'intent' the adversarial S(x') with S(x) on the AT set. Adds 'L_IAD'."""
    if formula not in LOSS_FORMULAS:
        raise ValueError(f"formula must be one of {LOSS_FORMULAS}, got {formula!r}")
    if introspection not in INTROSPECTION:
        raise ValueError(f"introspection must be one of {INTROSPECTION}, got {introspection!r}")
    t_clean, t_adv = t_clean.detach(), t_adv.detach()
    st = misclassified_by_teacher(t_clean, y) if use_map else torch.zeros_like(y, dtype=torch.bool)
    if use_els:
        t_clean = swap_clean_teacher(t_clean, y, st)
        t_adv = swap_adversarial_teacher(t_adv, y)
    # The released arithmetic (its main.py): the counts are exact floats, each mean is the sum times a
    # reciprocal taken in double precision, 1 / (n_ST + 1e-10) for L_ST (0 when n_ST = 0) and 1 / n_AT
    # for L_AT (where the released code divides by zero when n_AT = 0, L_AT is 0 here), and the weights
    # n_ST / B and (B - n_ST) / B are doubles too, each rounded to the loss's dtype as a Python float is.
    dtype = s_clean.dtype
    n_st = st.sum(dtype=torch.float64)
    n_at = st.numel() - n_st
    loss_st = (1 / (n_st + 1e-10)).to(dtype) * (kl_rows(t_clean, s_clean) * st).sum()
    loss_at = (1 / n_at.clamp(min=1)).to(dtype) * (kl_rows(t_adv, s_adv) * ~st).sum()
    self_st, self_at = s_clean.new_zeros(()), s_clean.new_zeros(())
    if introspection != "off":
        distrust_clean = 1 - F.softmax(t_clean, dim=1).gather(1, y[:, None]).squeeze(1).pow(iad_beta)
        distrust_adv = 1 - F.softmax(t_adv, dim=1).gather(1, y[:, None]).squeeze(1).pow(iad_beta)
        if introspection == "authors":
            self_st = (1 / (n_st + 1e-10)).to(dtype) * (st * distrust_clean * kl_rows(s_clean, s_clean)).sum()
            self_at = (1 / n_at.clamp(min=1)).to(dtype) * (~st * distrust_adv * kl_rows(s_adv, s_adv)).sum()
        else:
            self_at = (1 / n_at.clamp(min=1)).to(dtype) * (~st * distrust_adv * kl_rows(s_clean, s_adv)).sum()
    w_st = (n_st / batch_size).to(dtype)
    w_at = ((batch_size - n_st) / batch_size).to(dtype)
    if formula == "authors":
        loss = 0.5 * (w_st * (loss_st + self_st) + w_at) * (loss_at + self_at)
    else:
        loss = w_st * (loss_st + self_st) + w_at * (loss_at + self_at)
    loss_pcr = predictive_consistency(s_clean, s_adv) if use_pcr else s_clean.new_zeros(())
    terms = {"loss": loss + beta * loss_pcr if use_pcr else loss, "L_ST": loss_st, "L_AT": loss_at,
             "L_PCR": loss_pcr, "st_fraction": (n_st / st.numel()).to(dtype)}
    if introspection != "off":
        terms["L_IAD"] = self_st + self_at
    return terms


def dgad_loss(*args, **kwargs) -> torch.Tensor:
    """The total of `dgad_terms` (same arguments)."""
    return dgad_terms(*args, **kwargs)["loss"]
