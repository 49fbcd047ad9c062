"""Losses of the adversarial distillation baselines (docs/methods.md sections 3.4-3.8): ARD, IAD,
RSLAD, AdaAD.

Teacher logits are targets only: they are detached here, whatever the caller passed.
`reduction` is 'entries' (KL summed, divided by N*C: PyTorch's reduction='mean', which the
ARD, RSLAD and AdaAD code use) or 'batchmean' (summed over classes, averaged over samples).
Each `*_terms` returns the total under 'loss' and its unweighted parts (0 where switched off);
each `*_loss` is that total."""
from typing import Dict

import torch
import torch.nn.functional as F

from .common import kl_batchmean, kl_mean_entries, kl_rows

KL_REDUCTIONS = ("entries", "batchmean")


def kl_reduced(target_logits: torch.Tensor, logits: torch.Tensor, reduction: str,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(target/T) || softmax(logits/T)) reduced by `reduction` (see the module doc)."""
    if reduction == "entries":
        return kl_mean_entries(target_logits, logits, temperature)
    if reduction == "batchmean":
        return kl_batchmean(target_logits, logits, temperature)
    raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")


def ard_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, y: torch.Tensor,
              alpha: float, temperature: float, reduction: str) -> Dict[str, torch.Tensor]:
    """alpha * tau^2 * KL(softmax_tau(T(x)) || softmax_tau(S(x'))) + (1 - alpha) * CE(S(x), y);
    parts 'kl' (the tempered KL, before tau^2) and 'ce' (0 when alpha = 1)."""
    kl = kl_reduced(t_clean.detach(), s_adv, reduction, temperature)
    loss = alpha * temperature ** 2 * kl
    ce = s_adv.new_zeros(())
    if alpha != 1:
        ce = F.cross_entropy(s_clean, y)
        loss = loss + (1 - alpha) * ce
    return {"loss": loss, "kl": kl, "ce": ce}


def ard_loss(*args, **kwargs) -> torch.Tensor:
    return ard_terms(*args, **kwargs)["loss"]


def teacher_trust(t_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """IAD's w_i = softmax(T(x'_i))[y_i] ** beta: how far the student trusts the teacher on sample i."""
    return F.softmax(t_adv.detach(), dim=1).gather(1, y[:, None]).squeeze(1).pow(beta)


def iad_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, t_adv: torch.Tensor,
              y: torch.Tensor, alpha: float, temperature: float, beta: float,
              introspect: bool) -> Dict[str, torch.Tensor]:
    """IAD-I: the ARD loss with per-sample mean KL, plus, once `introspect` is on,
    alpha * (1/N) sum_i (1 - w_i) * KL(softmax(S(x_i)) || softmax(S(x'_i))); parts 'ard' and
    'introspection' (the mean before alpha; 0 during the warm-up).

    The student's clean prediction (the target of the second term) keeps its gradient; the
    trust weights w_i do not carry any."""
    ard = ard_loss(s_clean, s_adv, t_clean, y, alpha, temperature, "batchmean")
    introspection = s_adv.new_zeros(())
    if introspect:
        distrust = 1 - teacher_trust(t_adv, y, beta)
        introspection = (distrust * kl_rows(s_clean, s_adv)).mean()
    return {"loss": ard + alpha * introspection if introspect else ard, "ard": ard, "introspection": introspection}


def iad_loss(*args, **kwargs) -> torch.Tensor:
    return iad_terms(*args, **kwargs)["loss"]


def rslad_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, reduction: str,
                scale: float = 1.0) -> Dict[str, torch.Tensor]:
    """scale * ((5/6) KL(softmax(T(x)) || softmax(S(x'))) + (1/6) KL(softmax(T(x)) || softmax(S(x)))),
    parts 'kl_adv' and 'kl_clean' (before the weights and the scale)."""
    t_clean = t_clean.detach()
    kl_adv, kl_clean = kl_reduced(t_clean, s_adv, reduction), kl_reduced(t_clean, s_clean, reduction)
    return {"loss": scale * (5 / 6 * kl_adv + 1 / 6 * kl_clean), "kl_adv": kl_adv, "kl_clean": kl_clean}


def rslad_loss(*args, **kwargs) -> torch.Tensor:
    return rslad_terms(*args, **kwargs)["loss"]


def adaad_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, t_adv: torch.Tensor,
                alpha: float, reduction: str) -> Dict[str, torch.Tensor]:
    """alpha * KL(softmax(T(x')) || softmax(S(x'))) + (1 - alpha) * KL(softmax(T(x)) || softmax(S(x))),
    parts 'kl_adv' and 'kl_clean' (0 when alpha = 1)."""
    kl_adv = kl_reduced(t_adv.detach(), s_adv, reduction)
    loss = alpha * kl_adv
    kl_clean = s_adv.new_zeros(())
    if alpha != 1:
        kl_clean = kl_reduced(t_clean.detach(), s_clean, reduction)
        loss = loss + (1 - alpha) * kl_clean
    return {"loss": loss, "kl_adv": kl_adv, "kl_clean": kl_clean}


def adaad_loss(*args, **kwargs) -> torch.Tensor:
    return adaad_terms(*args, **kwargs)["loss"]
