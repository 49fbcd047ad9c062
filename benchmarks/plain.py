"""The reference ("plain") training step that bench.py times beside ours. Nothing trains with it.

It computes the same adversarial examples and loss as `methods.training_step` in fp32, the way
an unoptimised adversarial-distillation loop (the shape of the authors' released code) does:
- fp32 only, NCHW, no compilation;
- every student and teacher parameter requires grad, and each attack step takes its input
  gradient with `loss.backward()`, so both networks' weight gradients are computed (and thrown
  away) at every step;
- the teacher is not frozen: its forward passes in the update record autograd graphs, and T(x)
  is computed again in the update even when the attack already used it;
- augmentation runs on the host and each batch is then copied to the device.
It has its own attack loop only because `pgd` deliberately cannot take the gradient this way; the
initialisation and the projected step are the shared ones, so both paths agree exactly in fp32.
"""
import copy
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn

from attacks import init_delta, module_mode, pgd_step
from data import Split, TrainBatches
from methods import Method, StepOutputs, attack_target, forward


def plain_models(student: nn.Module, teacher: Optional[nn.Module]) -> Tuple[nn.Module, Optional[nn.Module]]:
    """fp32 NCHW copies of the networks with every parameter requiring grad, teacher in eval()."""
    def plain_copy(model):
        clone = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)
        return clone.requires_grad_(True)
    return plain_copy(student), (plain_copy(teacher).eval() if teacher is not None else None)


def host_batches(split: Split, batch_size: int, generator: torch.Generator, device) -> Iterator:
    """Batches augmented on the host from a host-resident split, then copied to `device`."""
    for x, y in TrainBatches(split, batch_size, generator):
        yield x.to(device), y.to(device)


def plain_attack(method: Method, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor,
                 y: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The method's attack with the gradient from `loss.backward()` (parameter grads included)."""
    spec, budget = method.attack, method.budget
    x = x.detach()
    target = attack_target(spec, student, teacher, x, t_clean=None)
    x_adv = init_delta(x, budget.eps, spec.init, generator).detach()
    with module_mode(student, spec.train_mode):
        for _ in range(budget.steps):
            x_adv.requires_grad_(True)
            logits = student(x_adv)
            reference = target(x_adv) if callable(target) else target
            spec.inner_loss(logits, y, reference).backward()
            x_adv = pgd_step(x_adv.detach(), x_adv.grad, x, budget.eps, budget.step_size)
    return x_adv.detach()


def plain_step(method: Method, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor,
               y: torch.Tensor, epoch: int, generator: Optional[torch.Generator] = None,
               extra: Optional[nn.Module] = None):
    """(loss terms, StepOutputs) as `training_step` returns them, computed the plain way."""
    x_adv = plain_attack(method, student, teacher, x, y, generator) if method.attack is not None else x
    for model in (student, teacher):  # the attack left weight gradients behind
        if model is not None:
            model.zero_grad(set_to_none=True)
    out = StepOutputs(y=y, epoch=epoch, extra=extra)
    inputs = {"s_clean": (student, x), "s_adv": (student, x_adv), "t_clean": (teacher, x), "t_adv": (teacher, x_adv)}
    with module_mode(student, True):
        for key in method.forward_sequence(epoch):
            model, batch = inputs[key]
            logits = forward(model, batch, key, out, method.with_features)
            if model is teacher:  # recorded with a graph, then cut: the teacher is a target
                logits = logits.detach()
                if key in out.features:
                    out.features[key] = out.features[key].detach()
            setattr(out, key, logits)
    return method.loss(out), out
