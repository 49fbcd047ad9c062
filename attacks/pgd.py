"""The one PGD engine, shared by training and evaluation (docs/methods.md section 6.1).

An attack maximises an inner loss `loss_fn(logits, y, reference)` over an L-inf ball:
  x' <- clip_[0,1]( Proj_eps( x' + step * sign(grad_x' loss) ) )
One `target` says what the reference is: nothing (labels only: CE, CW), fixed logits (the
teacher's or the student's on clean inputs: RSLAD, TRADES), or a network evaluated at x' every
step with the gradient flowing through it (AdaAD, DGAD). Only the input gets a gradient
(`torch.autograd.grad`), so no parameter gradients are computed or left behind.

This folder depends on torch only: copy it into another project as it is.
"""
import contextlib
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

InnerLoss = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]], torch.Tensor]
Target = Union[None, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
INITS = ("gauss", "gauss_clamped", "uniform", "uniform_unclamped", "none")


@contextlib.contextmanager
def module_mode(module: nn.Module, train: bool):
    """Put `module` (and every submodule) in train/eval mode, and restore each one's mode after."""
    modes = [(m, m.training) for m in module.modules()]
    module.train(train)
    try:
        yield module
    finally:
        for m, was_training in modes:
            m.training = was_training


def init_delta(x: torch.Tensor, eps: float, init: str, generator: Optional[torch.Generator] = None,
               batch_rows: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
    """The starting point of the attack (docs/methods.md section 1.4): `gauss` x + 0.001 N(0,I),
    `uniform` x + U(-eps, eps) clamped to [0,1], each also in the other clamping as the released
    code of some method has it (`gauss_clamped`: PGD-AT; `uniform_unclamped`: ARD, IAD), and
    `none` x itself. An unclamped start is clamped by the first step.

    batch_rows (total, start, stop): x is rows start:stop of a batch of `total` split across
    processes; the noise is drawn for the whole batch and these rows kept, so that each process
    starts where a single process attacking the whole batch would."""
    total, start, stop = batch_rows if batch_rows is not None else (x.shape[0], 0, x.shape[0])
    shape = (total, *x.shape[1:])
    if init in ("gauss", "gauss_clamped"):
        noise = torch.randn(shape, device=x.device, dtype=x.dtype, generator=generator)[start:stop]
        begin = x + 0.001 * noise
        return begin.clamp_(0.0, 1.0) if init == "gauss_clamped" else begin
    if init in ("uniform", "uniform_unclamped"):
        noise = torch.rand(shape, device=x.device, dtype=x.dtype, generator=generator)[start:stop]
        begin = x + (noise * (2 * eps) - eps)
        return begin.clamp_(0.0, 1.0) if init == "uniform" else begin
    if init == "none":
        return x.clone()
    raise ValueError(f"unknown attack init {init!r}; choose from {INITS}")


def pgd_step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float, step_size: float) -> torch.Tensor:
    x_adv = x_adv + step_size * grad.sign()
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    return x_adv.clamp_(0.0, 1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor], *, eps: float, step_size: float,
        steps: int, loss_fn: InnerLoss, init: str = "uniform", target: Target = None, train_mode: bool = False,
        generator: Optional[torch.Generator] = None, autocast: Optional[Callable] = None,
        batch_rows: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
    """Return adversarial examples for `model` at `x` (detached, in [0,1], within eps of x).

    target: None, fixed reference logits, or a network called at x' each step (an nn.Module
    target runs in eval() mode, restored afterwards; the gradient flows through it).
    train_mode: run the attacked model in train() mode (BatchNorm uses and updates batch
    statistics, as ARD/IAD do) instead of eval(); its own mode is restored afterwards.
    generator: the source of the random start (the run's attack generator, for exact resume).
    batch_rows: (total, start, stop) when x is one process's rows of a larger batch (`init_delta`).
    autocast: an optional context-manager factory (e.g. bf16 autocast) for the forward passes;
    the image and its perturbation stay fp32."""
    x = x.detach()
    x_adv = init_delta(x, eps, init, generator, batch_rows).detach()
    if steps <= 0:
        return x_adv.clamp(0.0, 1.0)
    autocast = autocast or contextlib.nullcontext
    target_mode = module_mode(target, False) if isinstance(target, nn.Module) else contextlib.nullcontext()
    with module_mode(model, train_mode), target_mode, torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with autocast():
                logits = model(x_adv)
                reference = target(x_adv) if callable(target) else target
                loss = loss_fn(logits.float(), y, None if reference is None else reference.float())
            (grad,) = torch.autograd.grad(loss, [x_adv])
            x_adv = pgd_step(x_adv.detach(), grad, x, eps, step_size)
    return x_adv.detach()


# Inner losses: functions of (student logits, labels, reference logits), summed over the batch.

def ce_sum(logits, y, reference=None):
    return F.cross_entropy(logits, y, reduction="sum")


def kl_sum(logits, y, reference):
    """sum_i KL(softmax(reference_i) || softmax(logits_i)); the reference is the target."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.softmax(reference, dim=1), reduction="sum")


def cw_hinge(logits, y, confidence: float):
    """Per example max(z_y - max_{c != y} z_c + confidence, 0): how far the true class still leads,
    plus the margin; 0 once another class leads z_y by `confidence`. Ties among the other classes
    send the gradient to one of them (`max`, as the reference CW code does), not split it (`amax`)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).max(1).values
    return (true - other + confidence).clamp(min=0)


def cw_margin_sum(logits, y, reference=None, confidence: float = 50.0):
    """sum_i -cw_hinge: the CW-inf loss that the ARD/IAD/RSLAD evaluations maximise. It stops pushing
    an example once another class leads z_y by `confidence`; it never stops on an example the model
    gets right, however confidently (the reading "margin clamped at -confidence from below" would,
    which is not what that code does)."""
    return -cw_hinge(logits, y, confidence).sum()
