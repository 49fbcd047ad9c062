"""The evaluation's sanity checks (docs/methods.md section 7.5), each a small function: the signs
of a broken attack, a randomised model or masked gradients that reviewers look for."""
from typing import Dict, List

import torch
import torch.nn as nn

from attacks import ce_sum, module_mode
from data import Split, to_float

from .protocols import TITLES

MASKING_GAP = 10.0  # AutoAttack this many points below PGD suggests masked gradients


def model_checks(model: nn.Module, split: Split, batch_size: int) -> Dict:
    """On the first batch: are the outputs finite, is the forward deterministic in eval mode (no
    dropout or randomised defence left on), and how many examples have an exactly zero input gradient."""
    x = to_float(split.images[:batch_size])
    y = split.labels[:batch_size]
    with module_mode(model, False):
        with torch.no_grad():
            first, second = model(x), model(x)
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(ce_sum(model(x), y), [x])
    zero = (grad.flatten(1).abs().sum(1) == 0).sum().item()
    return {"finite_outputs": bool(torch.isfinite(first).all()),
            "deterministic_forward": bool(torch.allclose(first, second, rtol=1e-5, atol=1e-6, equal_nan=True)),
            "zero_gradient_examples": int(zero), "zero_gradient_checked": int(y.shape[0])}


def buffers_of(model: nn.Module) -> List[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def ordering_warnings(results: Dict, pgd_name: str) -> List[str]:
    """The inequalities a sound evaluation satisfies, and what breaking each one suggests."""
    acc = {name: entry["accuracy"] for name, entry in results.items()}
    found = []

    def above(low, high, meaning):
        if low in acc and high in acc and acc[low] > acc[high]:
            found.append(f"{TITLES[low]} accuracy {acc[low]:.2f}% is above {TITLES[high]} {acc[high]:.2f}%: {meaning}")

    for name in acc:
        if name != "natural":
            above(name, "natural", "an attack that raises accuracy is broken or the model is randomised")
    above(pgd_name, "fgsm", "a multi-step attack weaker than one step is a sign of gradient masking")
    above("aa", pgd_name, "AutoAttack weaker than PGD: check that the model is deterministic and in eval mode")
    if "aa" in acc and pgd_name in acc and acc[pgd_name] - acc["aa"] > MASKING_GAP:
        found.append(f"AutoAttack accuracy {acc['aa']:.2f}% is {acc[pgd_name] - acc['aa']:.1f} points below "
                     f"{TITLES[pgd_name]} {acc[pgd_name]:.2f}%: the model may be masking gradients; "
                     f"trust AutoAttack, not the gradient attacks")
    return found


class Inspected:
    """Wraps an attack and keeps, on the device, the largest perturbation and the pixel range of
    its examples, for the report's checks."""

    def __init__(self, attack):
        self.attack = attack
        self.linf = self.l2 = self.low = self.high = None

    def __call__(self, model, x, y):
        x_adv = self.attack(model, x, y)
        delta = (x_adv - x).flatten(1)
        stats = (delta.abs().amax(), delta.norm(dim=1).amax(), x_adv.amin(), x_adv.amax())
        if self.linf is None:
            self.linf, self.l2, self.low, self.high = stats
        else:
            self.linf, self.l2 = torch.maximum(self.linf, stats[0]), torch.maximum(self.l2, stats[1])
            self.low, self.high = torch.minimum(self.low, stats[2]), torch.maximum(self.high, stats[3])
        return x_adv

    def summary(self) -> Dict:
        if self.linf is None:
            return {}
        return {"max_linf_perturbation": self.linf.item(), "max_l2_perturbation": self.l2.item(),
                "pixel_range": [self.low.item(), self.high.item()]}
