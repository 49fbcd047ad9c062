"""Losses of the adversarial distillation baselines (SPEC section 2): ARD, IAD, RSLAD, AdaAD.

Teacher logits are targets only: they are detached here, whatever the caller passed.
`reduction` is 'entries' (KL summed, divided by N*C: PyTorch's reduction='mean', which the
ARD, RSLAD and AdaAD code use) or 'batchmean' (summed over classes, averaged over samples)."""
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


def ard_loss(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, y: torch.Tensor,
             alpha: float, temperature: float, reduction: str) -> torch.Tensor:
    """alpha * tau^2 * KL(softmax_tau(T(x)) || softmax_tau(S(x'))) + (1 - alpha) * CE(S(x), y)."""
    loss = alpha * temperature ** 2 * kl_reduced(t_clean.detach(), s_adv, reduction, temperature)
    if alpha != 1:
        loss = loss + (1 - alpha) * F.cross_entropy(s_clean, y)
    return loss


def teacher_trust(t_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """IAD's w_i = softmax(T(x'_i))[y_i] ** beta: how far the student trusts the teacher on sample i."""
    return F.softmax(t_adv.detach(), dim=1).gather(1, y[:, None]).squeeze(1).pow(beta)


def iad_loss(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, t_adv: torch.Tensor,
             y: torch.Tensor, alpha: float, temperature: float, beta: float, introspect: bool) -> torch.Tensor:
    """IAD-I: the ARD loss with per-sample mean KL, plus, once `introspect` is on,
    alpha * (1/N) sum_i (1 - w_i) * KL(softmax(S(x_i)) || softmax(S(x'_i))).

    The student's clean prediction (the target of the second term) keeps its gradient; the
    trust weights w_i do not carry any."""
    loss = ard_loss(s_clean, s_adv, t_clean, y, alpha, temperature, "batchmean")
    if introspect:
        distrust = 1 - teacher_trust(t_adv, y, beta)
        loss = loss + alpha * (distrust * kl_rows(s_clean, s_adv)).mean()
    return loss


def rslad_loss(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, reduction: str,
               scale: float = 1.0) -> torch.Tensor:
    """scale * ((5/6) KL(softmax(T(x)) || softmax(S(x'))) + (1/6) KL(softmax(T(x)) || softmax(S(x))))."""
    t_clean = t_clean.detach()
    return scale * (5 / 6 * kl_reduced(t_clean, s_adv, reduction) + 1 / 6 * kl_reduced(t_clean, s_clean, reduction))


def adaad_loss(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, t_adv: torch.Tensor,
               alpha: float, reduction: str) -> torch.Tensor:
    """alpha * KL(softmax(T(x')) || softmax(S(x'))) + (1 - alpha) * KL(softmax(T(x)) || softmax(S(x)))."""
    loss = alpha * kl_reduced(t_adv.detach(), s_adv, reduction)
    if alpha != 1:
        loss = loss + (1 - alpha) * kl_reduced(t_clean.detach(), s_clean, reduction)
    return loss
