"""Losses of the adversarial distillation baselines (docs/methods.md sections 3.4-3.8): ARD, IAD,
RSLAD, AdaAD.

Teacher logits are targets only: they are detached here, whatever the caller passed.
`reduction` is 'entries' (KL summed, divided by N*C: PyTorch's reduction='mean', which the
ARD, RSLAD and AdaAD code use) or 'batchmean' (summed over classes, averaged over samples).
Each `*_terms` returns the total under 'loss' and its unweighted parts (0 where switched off);
each `*_loss` is that total."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .common import kl_batchmean, kl_entries_eps, kl_mean_entries, kl_rows

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


def akd_terms(s_adv: torch.Tensor, t_adv: torch.Tensor, n_adv: torch.Tensor, y: torch.Tensor, a_robust: float,
              a_natural: float, temperature: float) -> Dict[str, torch.Tensor]:
    """AKD: (1 - a1 - a2) CE(S(x'), y) + a1 tau^2 KL(T_AT(x') || S(x')) + a2 tau^2 KL(T_ST(x') || S(x')), every KL
    tempered by tau, summed over classes and averaged over samples; parts 'ce', 'kl_robust', 'kl_natural'
    (before the weights and tau^2)."""
    ce = F.cross_entropy(s_adv, y)
    kl_robust = kl_batchmean(t_adv.detach(), s_adv, temperature)
    kl_natural = kl_batchmean(n_adv.detach(), s_adv, temperature)
    loss = (1 - a_robust - a_natural) * ce + temperature ** 2 * (a_robust * kl_robust + a_natural * kl_natural)
    return {"loss": loss, "ce": ce, "kl_robust": kl_robust, "kl_natural": kl_natural}


def kl_mean_entries_eps(target_logits: torch.Tensor, logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MTARD's own KL: the mean over the N*C entries of p (log(p + eps) - log q), p = softmax(target),
    q = softmax(logits) (the eps keeps log p finite)."""
    return kl_entries_eps(target_logits, logits, eps).mean()


def mtard_weight_update(w_nat: torch.Tensor, kl_adv: torch.Tensor, kl_nat: torch.Tensor, first_adv: torch.Tensor,
                        first_nat: torch.Tensor, rate: float, power: float = 1.0) -> torch.Tensor:
    """MTARD's adaptive weight of the natural teacher after one batch: each loss relative to its value on
    the run's first batch, r = (L / L_first) ** power, and w_nat moves by `rate` towards
    r_nat / (r_adv + r_nat): the teacher whose loss has fallen less gets more weight. w_adv = 1 - w_nat."""
    r_adv = (kl_adv.detach().double() / first_adv).pow(power)
    r_nat = (kl_nat.detach().double() / first_nat).pow(power)
    return w_nat - rate * (w_nat - r_nat / (r_adv + r_nat))


def mtard_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, t_adv: torch.Tensor, n_clean: torch.Tensor,
                w_nat: torch.Tensor, first_adv: Optional[torch.Tensor], first_nat: Optional[torch.Tensor],
                rate: float, power: float = 1.0, scale: float = 1.0) -> Dict[str, torch.Tensor]:
    """MTARD: w_adv KL(T_adv(x') || S(x')) + w_nat KL(T_nat(x) || S(x)), each KL MTARD's N*C-entry mean
    (times `scale`: 10 on CIFAR-100), with the weights already moved by this batch's losses
    (`mtard_weight_update`; `first_*` None: this is the run's first batch, whose losses become the
    references). Parts 'kl_adv', 'kl_nat' (scaled, before the weights) and 'w_adv'; the state for the next
    batch (float64) under 'next_w_nat', 'first_adv', 'first_nat'."""
    return mtard_mixture(scale * kl_mean_entries_eps(t_adv, s_adv), scale * kl_mean_entries_eps(n_clean, s_clean),
                         w_nat, first_adv, first_nat, rate, power)


def mtard_mixture(kl_adv: torch.Tensor, kl_nat: torch.Tensor, w_nat: torch.Tensor, first_adv: Optional[torch.Tensor],
                  first_nat: Optional[torch.Tensor], rate: float, power: float = 1.0) -> Dict[str, torch.Tensor]:
    """MTARD's adaptive mix of its two losses (`mtard_terms`; Fair-MTARD's are weighted by class): the weights moved
    by this batch's losses, then w_adv kl_adv + w_nat kl_nat, with the parts and the next state of `mtard_terms`."""
    if first_adv is None:
        first_adv, first_nat = kl_adv.detach().double(), kl_nat.detach().double()
    w_nat = mtard_weight_update(w_nat, kl_adv, kl_nat, first_adv, first_nat, rate, power)
    w_adv = 1 - w_nat
    loss = w_adv.to(kl_adv.dtype) * kl_adv + w_nat.to(kl_nat.dtype) * kl_nat
    return {"loss": loss, "kl_adv": kl_adv, "kl_nat": kl_nat, "w_adv": w_adv.to(kl_adv.dtype),
            "next_w_nat": w_nat, "first_adv": first_adv, "first_nat": first_nat}


def igdm_term(s_plus: torch.Tensor, s_minus: torch.Tensor, t_plus: torch.Tensor,
              t_minus: torch.Tensor) -> torch.Tensor:
    """IGDM: KL(softmax(T(x + d) - T(x - d)) || softmax(S(x + d) - S(x - d))), summed over classes and averaged
    over samples, d = x' - x: the student's logit difference across the perturbation matches the teacher's."""
    return kl_batchmean((t_plus - t_minus).detach(), s_plus - s_minus)


def peeraid_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, p_adv: torch.Tensor, y: torch.Tensor,
                  temperature: float, peer_temperature: float, lambdas: Tuple[float, float, float],
                  gammas: Tuple[float, float]) -> Dict[str, torch.Tensor]:
    """PeerAiD: the student's and the peer's losses, summed (one backward trains both).

    student: l1 CE(S(x'), y) + l2 T^2 KL(P(x')/T || S(x')/T) + l3 T^2 KL(S(x)/T || S(x')/T)
    peer:    g1 CE(P(x'), y) + g2 Tr^2 KL(S(x')/Tr || P(x')/Tr)
    Every KL is averaged over the N*C entries. The peer's prediction is detached as the student's target;
    the student's clean prediction (its own target) and its adversarial one (the peer's target) are not,
    as released. Parts 'ce', 'kl_peer', 'kl_self', 'peer_ce', 'peer_kl' (before weights and T^2) and
    'peer_acc' (% of the batch the peer classifies right on x')."""
    l1, l2, l3 = lambdas
    g1, g2 = gammas
    ce, peer_ce = F.cross_entropy(s_adv, y), F.cross_entropy(p_adv, y)
    kl_peer = kl_mean_entries(p_adv.detach(), s_adv, temperature)
    kl_self = kl_mean_entries(s_clean, s_adv, temperature)
    peer_kl = kl_mean_entries(s_adv, p_adv, peer_temperature)
    student = l1 * ce + temperature ** 2 * (l2 * kl_peer + l3 * kl_self)
    peer = g1 * peer_ce + g2 * peer_temperature ** 2 * peer_kl
    peer_acc = 100.0 * (p_adv.detach().argmax(1) == y).to(p_adv.dtype).mean()
    return {"loss": student + peer, "ce": ce, "kl_peer": kl_peer, "kl_self": kl_self, "peer_ce": peer_ce,
            "peer_kl": peer_kl, "peer_acc": peer_acc}


def entropy_weights(t_adv: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAAD's per-sample weights from the teacher's entropy H_i on x'_i: w = scale (H - min H), and w
    rescaled to [0, 1] (the weight of the clean term's complement). No gradient."""
    p = F.softmax(t_adv.detach(), dim=1)
    entropy = -(p * F.log_softmax(t_adv.detach(), dim=1)).sum(1)
    w = (scale * (entropy - entropy.min())).clamp(min=0)
    return w, (w - w.min()) / (w.max() - w.min() + 1e-8)


def saad_terms(s_clean: torch.Tensor, s_adv: torch.Tensor, s_minus: torch.Tensor, t_clean: torch.Tensor,
               t_adv: torch.Tensor, t_minus: torch.Tensor, igdm_weight: float, scale: float,
               beta: float) -> Dict[str, torch.Tensor]:
    """SAAD: (1/N) sum_i [ w_i (KL_i(T(x') || S(x')) + a KL_i(IGDM)) + beta (1 - w~_i) KL_i(T(x) || S(x)) ],
    w and w~ from `entropy_weights`, a = `igdm_weight` (alpha * epoch / epochs), every KL summed over
    classes; parts 'kl_adv', 'kl_clean', 'igdm' (batch means, unweighted), 'w_mean' and 'w_max'."""
    w, w_scaled = entropy_weights(t_adv, scale)
    kl_adv = kl_rows(t_adv.detach(), s_adv)
    kl_clean = kl_rows(t_clean.detach(), s_clean)
    igdm = kl_rows((t_adv - t_minus).detach(), s_adv - s_minus)
    loss = (w * (kl_adv + igdm_weight * igdm) + beta * (1 - w_scaled) * kl_clean).mean()
    return {"loss": loss, "kl_adv": kl_adv.mean(), "kl_clean": kl_clean.mean(), "igdm": igdm.mean(),
            "w_mean": w.mean(), "w_max": w.max()}
