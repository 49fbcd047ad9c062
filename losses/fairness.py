"""Losses of the robust-fairness distillation methods (docs/methods.md sections 3.15 and 3.16): Fair-ARD's class
reweighting of ARD, IAD, RSLAD and MTARD, and ABSLD's class-wise teacher temperatures.

Each Fair loss is its base method's loss as the released Fair-*.py writes it, every sample's terms weighted by
its class's weight (`weights` holds w[y_i] per sample; all ones gives the base loss). The class statistics, the
weight rule and the temperature rule are pure functions too: the methods keep their state and call them."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .common import kl_entries_eps, kl_rows
from .distillation import KL_REDUCTIONS, mtard_mixture, teacher_trust

# Fair-ARD's weight rule: kappa + 1e-5 keeps a class no iterate survives finite; the weights, scaled to sum to C,
# are then clamped to [5/6, 5/2] (the released weight_assign).
KAPPA_EPS = 1e-5
WEIGHT_BOUNDS = (5 / 6, 5 / 2)


def per_class_sums(values: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sum_i values_i [y_i = c] for every class c, shape (C,): booleans count as int64 and stay exact, floats
    keep their dtype. A one-hot product summed over the batch: no atomics, the same sum on every run."""
    if values.dtype == torch.bool:
        values = values.long()
    return (F.one_hot(y, num_classes).to(values.dtype) * values[:, None]).sum(0)


def class_weights(kappa: torch.Tensor, beta: float, eps: float = KAPPA_EPS, bounds=WEIGHT_BOUNDS) -> torch.Tensor:
    """Fair-ARD's weights from each class's robustness kappa_c: (1 / (kappa_c + eps)) ** beta, scaled to sum
    to C, then clamped to `bounds` (after the scaling, as released: the clamped weights need not sum to C). The
    least robust class weighs most; beta = 0 weighs every class 1."""
    weights = (1 / (kappa + eps)) ** beta
    weights = weights * (kappa.numel() / weights.sum())
    return weights.clamp(*bounds)


def weighted_kl(target_logits: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor, reduction: str,
                temperature: float = 1.0, eps: Optional[float] = None) -> torch.Tensor:
    """sum_i w_i KL_i(softmax(target/T) || softmax(logits/T)), divided by N ('batchmean') or by N*C ('entries'),
    the Fair-*.py reductions of a per-sample weighted KL. eps: the released KL with log(p + eps) (`kl_entries_eps`,
    no temperature), else the exact one. Unit weights give `kl_reduced` bitwise."""
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    if eps is None:
        rows = kl_rows(target_logits.detach(), logits, temperature)
    else:
        rows = kl_entries_eps(target_logits / temperature, logits / temperature, eps).sum(1)
    weighted = weights * rows
    return weighted.sum() / logits.numel() if reduction == "entries" else weighted.mean()


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(1/N) sum_i w_i CE(logits_i, y_i)."""
    return (weights * F.cross_entropy(logits, y, reduction="none")).mean()


def fair_ard_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, y: torch.Tensor,
                   weights: torch.Tensor, alpha: float, temperature: float, reduction: str) -> Dict[str, torch.Tensor]:
    """Fair-ARD.py: alpha tau^2 (1/N) sum_i w_i KL_i(softmax_tau(T(x)) || softmax_tau(S(x'))) / C + (1 - alpha)
    (1/N) sum_i w_i CE(S(x_i), y_i) (its per-row KLDivLoss averages the C entries: 'entries'); parts 'kl'
    (before tau^2) and 'ce' (0 when alpha = 1), as ARD's."""
    kl = weighted_kl(t_clean, s_adv, weights, reduction, temperature)
    loss = alpha * temperature ** 2 * kl
    ce = s_adv.new_zeros(())
    if alpha != 1:
        ce = weighted_ce(s_clean, y, weights)
        loss = loss + (1 - alpha) * ce
    return {"loss": loss, "kl": kl, "ce": ce}


def fair_iad_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, t_adv: torch.Tensor,
                   y: torch.Tensor, weights: torch.Tensor, alpha: float, temperature: float, beta: float,
                   introspect: bool) -> Dict[str, torch.Tensor]:
    """Fair-IAD.py: alpha tau^2 (1/N) sum_i w_i KL_i(softmax_tau(T(x)) || softmax_tau(S(x'))) during the warm-up;
    after it, + alpha (1/N) sum_i w_i (1 - P_T(y_i | x'_i)^beta) KL_i(S(x) || S(x')) + (1 - alpha) (1/N) sum_i w_i
    CE(S(x'_i), y_i) (the adversarial logits, and only after the warm-up, as released; IAD's CE reads S(x)). Parts
    'ard' (the weighted KL and CE terms) and 'introspection' (before alpha; 0 during the warm-up), as IAD's. The
    self-distillation target S(x) keeps its gradient; the trust weights carry none."""
    ard = alpha * temperature ** 2 * weighted_kl(t_clean, s_adv, weights, "batchmean", temperature)
    introspection = s_adv.new_zeros(())
    if introspect:
        distrust = 1 - teacher_trust(t_adv, y, beta)
        introspection = (weights * distrust * kl_rows(s_clean, s_adv)).mean()
        if alpha != 1:
            ard = ard + (1 - alpha) * weighted_ce(s_adv, y, weights)
    return {"loss": ard + alpha * introspection if introspect else ard, "ard": ard, "introspection": introspection}


def fair_rslad_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, weights: torch.Tensor,
                     reduction: str, scale: float = 1.0) -> Dict[str, torch.Tensor]:
    """Fair-RSLAD.py: scale ((5/6) KL_w(T(x) || S(x')) + (1/6) KL_w(T(x) || S(x))), each KL the released one
    (log(p_T + 1e-5)) weighted per sample and averaged over the N*C entries ('entries'); parts 'kl_adv' and
    'kl_clean' (before the weights 5/6, 1/6 and the scale), as RSLAD's."""
    kl_adv = weighted_kl(t_clean, s_adv, weights, reduction, eps=1e-5)
    kl_clean = weighted_kl(t_clean, s_clean, weights, reduction, eps=1e-5)
    return {"loss": scale * (5 / 6 * kl_adv + 1 / 6 * kl_clean), "kl_adv": kl_adv, "kl_clean": kl_clean}


def fair_mtard_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_adv: torch.Tensor, clean_target: torch.Tensor,
                     weights: torch.Tensor, w_nat: torch.Tensor, first_adv: Optional[torch.Tensor],
                     first_nat: Optional[torch.Tensor], rate: float, power: float = 1.0,
                     scale: float = 1.0) -> Dict[str, torch.Tensor]:
    """Fair-MTARD.py: MTARD's adaptive mix (`mtard_mixture`) of kl_adv = KL_w(T_adv(x') || S(x')) and kl_nat =
    KL_w(clean_target || S(x)), each the released KL weighted per sample and averaged over the N*C entries (times
    `scale`). The released script's clean target is T_adv(x'), not the natural teacher's T_nat(x) that MTARD
    distils (docs/methods.md section 3.15): the caller passes one or the other."""
    kl_adv = scale * weighted_kl(t_adv, s_adv, weights, "entries", eps=1e-5)
    kl_nat = scale * weighted_kl(clean_target, s_clean, weights, "entries", eps=1e-5)
    return mtard_mixture(kl_adv, kl_nat, w_nat, first_adv, first_nat, rate, power)


# -- ABSLD ----------------------------------------------------------------------------------------------

def class_tempered(logits: torch.Tensor, y: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """Each row divided by the temperature of its sample's class: logits_i / tau[y_i]."""
    return logits / temperatures.to(logits.dtype)[y][:, None]


def absld_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_clean: torch.Tensor, y: torch.Tensor,
                tau_adv: torch.Tensor, tau_nat: torch.Tensor) -> Dict[str, torch.Tensor]:
    """ABSLD: (5/6) KL(softmax(T(x) / tau_adv[y]) || softmax(S(x'))) + (1/6) KL(softmax(T(x) / tau_nat[y]) ||
    softmax(S(x))), the released KL (log(p + 1e-5)) averaged over the N*C entries; the student's logits are not
    tempered. Parts 'kl_adv' and 'kl_clean' (before 5/6 and 1/6)."""
    t_clean = t_clean.detach()
    kl_adv = kl_entries_eps(class_tempered(t_clean, y, tau_adv), s_adv).mean()
    kl_clean = kl_entries_eps(class_tempered(t_clean, y, tau_nat), s_clean).mean()
    return {"loss": 5 / 6 * kl_adv + 1 / 6 * kl_clean, "kl_adv": kl_adv, "kl_clean": kl_clean}


def absld_temperature_update(temperatures: torch.Tensor, class_losses: torch.Tensor, rate: float, low: float,
                             high: float) -> torch.Tensor:
    """ABSLD's step after an epoch: with L_c the class's summed training loss and gap = L - mean(L),
    tau <- clamp(tau - rate * gap / max|gap|, low, high): the class the student finds hardest gets a colder
    (sharper) teacher, the easiest a warmer one. Equal losses (max|gap| = 0, where the released code divides
    by zero) leave the temperatures as they are."""
    gap = class_losses - class_losses.mean()
    largest = gap.abs().max()
    step = torch.where(largest > 0, gap / largest.clamp(min=torch.finfo(gap.dtype).tiny), torch.zeros_like(gap))
    return (temperatures - rate * step.to(temperatures.dtype)).clamp(low, high)
