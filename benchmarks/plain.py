"""The reference ("plain") training step that bench.py times beside ours: the step as the
released training loops run it. Nothing trains with it.

What those loops do, and this step does too (docs/methods.md section 3 names each method's code):
- fp32, NCHW, no compilation; the teacher's parameters still ask for gradients (only the
  ARD/IAD code turns them off), but its forwards outside the attack run without grad;
- the attack takes input gradients only, with `torch.autograd.grad`, as all six loops do; a
  method whose attack reads a fixed target recomputes it at every step, as the released TRADES
  (S(x) in eval mode) and RSLAD (T(x)) attacks do, and T(x) is computed again for the loss;
- the forward passes after the attack are the method's released sequence, the same as ours;
- one host sync per step at least: the progress bars read the batch's correct count; DGAD also
  reads n_ST with `.item()` before it weights its terms;
- augmentation on the host, per image, in a DataLoader (random crop with 4 px of zero padding and
  a horizontal flip, as torchvision's transforms do), each batch then copied to the device.
It computes the same adversarial examples and loss as `methods.training_step` in fp32
(tests/test_fast_path.py), so a ratio of the two measures speed alone.
"""
import contextlib
import copy
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks import init_delta, module_mode, pgd_step
from data import Split, to_float
from methods import Method, StepOutputs, forward
from methods.base import taylor_target

PADDING = 4


def plain_models(student: nn.Module, teacher: Optional[nn.Module]) -> Tuple[nn.Module, Optional[nn.Module]]:
    """fp32 NCHW copies of the networks with every parameter requiring grad, teacher in eval()."""
    def plain_copy(model):
        clone = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)
        return clone.requires_grad_(True)
    return plain_copy(student), (plain_copy(teacher).eval() if teacher is not None else None)


class HostAugmented(torch.utils.data.Dataset):
    """One training image at a time on the host: zero-padded random crop, random flip, to [0,1]."""

    def __init__(self, split: Split):
        self.images, self.labels = split.images.cpu(), split.labels.cpu()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = F.pad(self.images[i], (PADDING,) * 4)
        size = self.images.shape[-1]
        top, left = torch.randint(0, 2 * PADDING + 1, (2,)).tolist()
        image = image[:, top:top + size, left:left + size]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return to_float(image), self.labels[i]


def host_batches(split: Split, batch_size: int, device, workers: int = 2, seed: int = 0) -> Iterator:
    """Shuffled batches from a host DataLoader with `workers` processes, copied to `device`."""
    loader = torch.utils.data.DataLoader(
        HostAugmented(split), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=torch.device(device).type == "cuda", generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0)
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def plain_target(spec, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor, x_adv: torch.Tensor,
                 reference=None):
    """The attack's reference at this step, recomputed as the released attacks do."""
    if spec.target == "labels":
        return None
    if spec.target in ("peer_clean", "teacher_taylor"):  # computed once before the attack, as released
        return reference(x_adv)
    if spec.target == "teacher":
        return teacher(x_adv)
    if spec.target == "teacher_clean":
        return teacher(x)
    with module_mode(student, False):  # student_clean: TRADES's attack runs the model on x every step
        return student(x)


def plain_attack(method: Method, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor,
                 y: torch.Tensor, generator: Optional[torch.Generator] = None, reference=None) -> torch.Tensor:
    spec, budget = method.attack, method.budget
    x = x.detach()
    x_adv = init_delta(x, budget.eps, spec.init, generator).detach()
    teacher_mode = module_mode(teacher, False) if teacher is not None else contextlib.nullcontext()
    with module_mode(student, spec.train_mode), teacher_mode:
        for _ in range(budget.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = spec.inner_loss(student(x_adv), y, plain_target(spec, student, teacher, x, x_adv, reference))
            (grad,) = torch.autograd.grad(loss, [x_adv])
            x_adv = pgd_step(x_adv.detach(), grad, x, budget.eps, budget.step_size)
    return x_adv.detach()


def plain_step(method: Method, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor,
               y: torch.Tensor, epoch: int, generator: Optional[torch.Generator] = None,
               extra: Optional[nn.Module] = None, natural_teacher: Optional[nn.Module] = None):
    """(loss terms, StepOutputs) as `training_step` returns them, computed the released loops' way."""
    reference = None  # PeerAiD's and SAAD's targets, computed before their attacks (as `x' -> logits`)
    if method.attack is not None and method.attack.target == "peer_clean":
        with module_mode(extra, False), torch.no_grad():
            peer_clean = extra(x)
        reference = lambda _: peer_clean  # noqa: E731
    if method.attack is not None and method.attack.target == "teacher_taylor":
        reference = taylor_target(teacher, x, y, method.attack.taylor)
    x_adv = plain_attack(method, student, teacher, x, y, generator, reference) if method.attack is not None else x
    out = StepOutputs(y=y, epoch=epoch, extra=extra)
    x_minus = x - (x_adv - x)
    inputs = {"s_clean": (student, x), "s_adv": (student, x_adv), "t_clean": (teacher, x), "t_adv": (teacher, x_adv),
              "n_clean": (natural_teacher, x), "n_adv": (natural_teacher, x_adv), "s_minus": (student, x_minus),
              "t_minus": (teacher, x_minus), "p_adv": (extra, x_adv)}
    with module_mode(student, True):
        for key in method.passes(epoch):
            model, batch = inputs[key]
            if model is student:
                setattr(out, key, forward(student, batch, key, out, method.with_features))
            elif key.startswith("p_"):
                with module_mode(model, True):
                    setattr(out, key, forward(model, batch, key, out, method.with_features))
            else:
                with torch.no_grad():
                    setattr(out, key, forward(model, batch, key, out, method.with_features))
    terms = method.terms(out)
    if "st_fraction" in terms:
        float(terms["st_fraction"])  # DGAD's n_ST read on the host before the loss is formed
    int((out.trained_logits.argmax(1) == y).sum())  # the progress bar's correct count
    return terms, out
