"""Carlini-Wagner attacks of the evaluation protocols (docs/methods.md sections 6.3 and 6.4).

cw_inf: the L-inf "CW" of the ARD/IAD/RSLAD tables, i.e. the PGD engine on the CW loss.

cw_l2: the L2 attack of the DGAD/AdaAD tables, which were produced with advertorch 0.2.3's
`CarliniWagnerL2Attack` (untargeted). advertorch no longer imports on current torch, so this
is our own implementation of the same computation, chosen so that the same model and inputs give
the same adversarial examples (tests/test_eval_agreement.py checks it against advertorch itself):
  * the search runs over w in tanh space, x' = (tanh(w) + 1) / 2, from w0 = arctanh of the
    input squeezed by 0.999999 (so that 0 and 1 stay finite), and the L2 distance is measured
    from (tanh(w0) + 1) / 2, not from x itself;
  * objective per example: c * max(z_y - max_{c' != y} z_c' + confidence, 0) + ||x' - x0||^2,
    summed over the batch, minimised with Adam on the perturbation of w (fresh each search step);
  * after every iteration, an example whose pre-step iterate is misclassified by `confidence`
    (z_y + confidence below another logit) and closer than its best so far keeps that iterate;
  * early abort, as advertorch does it, is decided for the whole batch: every
    max_iterations // 10 iterations, stop when the batch's total objective has not fallen
    below 0.999999 times its value at the previous check (so results depend on the batch);
  * an example never misclassified comes back as the original input, unchanged;
  * binary search on c per example, as advertorch does it (the paper's settings use one step).
"""
import functools
from typing import Optional

import torch
import torch.nn as nn

from .pgd import cw_hinge, cw_margin_sum, module_mode, pgd

TANH_SQUEEZE = 0.999999
FIRST_PREVIOUS_OBJECTIVE = 1e6  # an abort check never fires at iteration 0 unless the objective exceeds this
NO_BOUND = 1e10                 # "no upper bound on c found yet" (and "no adversarial found yet" for distances)
BOUND_FOUND_BELOW = 1e9
ABORT_CHECKS = 10               # early-abort checks per search step
REPEAT_LAST_FROM = 10           # with this many search steps or more, the last one restarts from the upper bounds

PAPER_CW_L2 = {"c": 0.1, "confidence": 0.01, "lr": 0.01, "max_iterations": 1000, "binary_search_steps": 1,
               "abort_early": True}


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    r = (x.clamp(0.0, 1.0) * 2 - 1) * TANH_SQUEEZE
    return torch.log((1 + r) / (1 - r)) * 0.5


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w) * 0.5 + 0.5


def misclassified_by(logits: torch.Tensor, y: torch.Tensor, confidence: float) -> torch.Tensor:
    """True where another class beats z_y + confidence (argmax of the handicapped logits is not y)."""
    handicapped = logits.scatter_add(1, y[:, None], torch.full_like(logits[:, :1], confidence))
    return handicapped.argmax(1) != y


def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, c: float = 0.1, confidence: float = 0.01,
          lr: float = 0.01, max_iterations: int = 1000, binary_search_steps: int = 1,
          abort_early: bool = True) -> torch.Tensor:
    """Untargeted Carlini-Wagner L2 adversarial examples in [0,1] (see the module docstring);
    `model` runs in eval() mode and its mode is restored."""
    x = x.detach()
    n = x.shape[0]
    w0 = to_tanh_space(x)
    x0 = from_tanh_space(w0)
    const = torch.full((n,), float(c), device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), NO_BOUND, device=x.device)
    best_dist = torch.full((n,), NO_BOUND, device=x.device)
    best_adv = x.clone()
    check_every = max(max_iterations // ABORT_CHECKS, 1)
    with module_mode(model, False), torch.enable_grad():
        for search_step in range(binary_search_steps):
            if binary_search_steps >= REPEAT_LAST_FROM and search_step == binary_search_steps - 1:
                const = upper.clone()
            step_succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            perturbation = torch.zeros_like(x, requires_grad=True)
            optimizer = torch.optim.Adam([perturbation], lr=lr)
            previous = FIRST_PREVIOUS_OBJECTIVE
            for iteration in range(max_iterations):
                candidate = from_tanh_space(perturbation + w0)
                logits = model(candidate)
                dist = (candidate - x0).pow(2).flatten(1).sum(1)
                objective = (const * cw_hinge(logits, y, confidence)).sum() + dist.sum()
                (perturbation.grad,) = torch.autograd.grad(objective, [perturbation])
                optimizer.step()
                if abort_early and iteration % check_every == 0:
                    value = objective.item()  # one host sync per check, ABORT_CHECKS per search step
                    if value > previous * TANH_SQUEEZE:
                        break
                    previous = value
                succeeded = misclassified_by(logits.detach(), y, confidence)
                step_succeeded |= succeeded
                closer = succeeded & (dist.detach() < best_dist)
                best_dist = torch.where(closer, dist.detach(), best_dist)
                best_adv = torch.where(closer[:, None, None, None], candidate.detach(), best_adv)
            upper = torch.where(step_succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(step_succeeded, lower, torch.maximum(lower, const))
            const = torch.where(upper < BOUND_FOUND_BELOW, (lower + upper) / 2,
                                torch.where(step_succeeded, const, const * 10))
    return best_adv


def cw_inf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int = 30,
           confidence: float = 50.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD from a uniform start on the CW loss with `confidence` (ARD/IAD/RSLAD's CW-inf)."""
    return pgd(model, x, y, eps=eps, step_size=step_size, steps=steps,
               loss_fn=functools.partial(cw_margin_sum, confidence=confidence), init="uniform",
               generator=generator)
