"""What a training method is: an attack configuration plus a pure loss, and the one generic
training step that runs any method without redundant forward passes."""
import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..attacks import pgd

REFERENCES = (None, "teacher_clean", "student_clean", "teacher_adv")
FORWARDS = ("s_clean", "s_adv", "t_clean", "t_adv")


@dataclass(frozen=True)
class AttackSpec:
    """The inner maximisation of a method.

    inner_loss(student_logits, y, reference) is summed over the batch. reference is one of
    None (labels only), 'teacher_clean' (T(x), fixed), 'student_clean' (S(x) in eval mode,
    fixed) or 'teacher_adv' (T(x') recomputed each step, gradient through the teacher).
    train_mode: the student's BatchNorm mode during the attack (True = train(), updating
    running statistics)."""
    inner_loss: Callable
    init: str
    train_mode: bool = False
    reference: Optional[str] = None

    def __post_init__(self):
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}")


@dataclass(frozen=True)
class Option:
    """A method-specific command-line option (`--<name>`)."""
    default: Any  # a value, or a function of the parsed args
    help: str = ""
    type: Optional[Callable] = None
    choices: Optional[Tuple] = None
    flag: bool = False  # a store_true switch

    def resolve_default(self, args):
        return self.default(args) if callable(self.default) else self.default


@dataclass
class StepOutputs:
    """Everything a method's loss may read for one batch. Logits it did not ask for are None."""
    y: torch.Tensor
    batch_size: int  # the configured B (--bs); y.shape[0] is the actual N
    epoch: int  # 1-based
    s_clean: Optional[torch.Tensor] = None
    s_adv: Optional[torch.Tensor] = None
    t_clean: Optional[torch.Tensor] = None
    t_adv: Optional[torch.Tensor] = None
    features: Dict[str, torch.Tensor] = field(default_factory=dict)  # same keys, with_features only
    extra: Optional[nn.Module] = None  # the run's extra_module (e.g. VarGap's projector), if any


class Method:
    """A training method. Subclasses set the class attributes and implement `loss`."""
    name: str = ""
    summary: str = ""
    paper: str = ""
    needs_teacher: bool = False
    attack: Optional[AttackSpec] = None
    forwards: Tuple[str, ...] = ("s_adv",)
    with_features: bool = False
    # Method-specific command-line options this method reads. Options of other methods are
    # rejected when given; one name shared by several methods must mean the same thing.
    options: Dict[str, Option] = {}

    def loss(self, out: StepOutputs, cfg) -> torch.Tensor:
        raise NotImplementedError

    def for_config(self, cfg) -> "Method":
        """The method as this run configures it. A method whose attack, forwards or options depend on
        the arguments (VarGap's --vg_base) returns a configured instance; the others return self."""
        return self

    def extra_module(self, student: nn.Module, teacher: Optional[nn.Module]) -> Optional[nn.Module]:
        """Trainable parameters beyond the student's (e.g. a projector), saved with the student."""
        return None

    def accuracy_logits(self, out: StepOutputs) -> torch.Tensor:
        """The logits behind the logged train accuracy: adversarial when the method attacks."""
        return out.s_adv if out.s_adv is not None else out.s_clean

    def describe(self) -> Dict[str, Any]:
        return {"method": self.name, "paper": self.paper, "summary": self.summary}


def _forward(model, x, with_features, key, out: StepOutputs):
    if with_features:
        logits, features = model(x, return_features=True)
        out.features[key] = features
        return logits
    return model(x)


def training_step(method: Method, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor,
                  y: torch.Tensor, cfg, epoch: int, generator: Optional[torch.Generator] = None,
                  autocast: Optional[Callable] = None, extra: Optional[nn.Module] = None
                  ) -> Tuple[torch.Tensor, StepOutputs]:
    """Attack (if the method has one), then the forward passes the loss needs, then the loss.

    The student's forward passes on x and x' are separate train() calls; the teacher is
    frozen and runs without grad outside the attack. T(x) is computed at most once."""
    autocast = autocast or contextlib.nullcontext
    method = method.for_config(cfg)
    out = StepOutputs(y=y, batch_size=cfg.bs, epoch=epoch, extra=extra)
    needs = set(method.forwards)
    x_adv = x
    if method.attack is not None:
        spec = method.attack
        reference = None
        if spec.reference == "teacher_clean" or "t_clean" in needs:
            with torch.no_grad(), autocast():
                out.t_clean = _forward(teacher, x, method.with_features, "t_clean", out).float()
            reference = out.t_clean if spec.reference == "teacher_clean" else None
        if spec.reference == "student_clean":
            was_training = student.training
            student.eval()
            with torch.no_grad(), autocast():
                reference = student(x).float()
            student.train(was_training)
        x_adv = pgd(student, x, y, eps=cfg.epsilon / 255, step_size=cfg.step_size / 255, steps=cfg.num_steps,
                    loss_fn=spec.inner_loss, init=spec.init, reference=reference,
                    teacher=teacher if spec.reference == "teacher_adv" else None,
                    train_mode=spec.train_mode, generator=generator, autocast=autocast)
    student.train()
    with autocast():
        if "s_clean" in needs:
            out.s_clean = _forward(student, x, method.with_features, "s_clean", out).float()
        if "s_adv" in needs:
            out.s_adv = _forward(student, x_adv, method.with_features, "s_adv", out).float()
        with torch.no_grad():
            if "t_clean" in needs and out.t_clean is None:
                out.t_clean = _forward(teacher, x, method.with_features, "t_clean", out).float()
            if "t_adv" in needs:
                out.t_adv = _forward(teacher, x_adv, method.with_features, "t_adv", out).float()
    return method.loss(out, cfg), out
