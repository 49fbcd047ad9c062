"""What a training method is, and the one generic training step that runs any of them.

A method class declares its attack (`AttackSpec`), the forward passes its loss reads, its own
command-line options and the names of its loss parts. `Method(config)` binds one run's values
once; per batch, `loss(outputs)` reads only those bound values and returns the total under
'loss' beside the named parts, which the run logs per epoch (docs/methods.md section 8.1)."""
import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks import Target, module_mode, pgd
from runtime.distributed import World

from .recipes import Recipe

TARGETS = ("labels", "teacher_clean", "student_clean", "teacher", "peer_clean", "teacher_taylor")
# s: the student, t: the (adversarially trained) teacher, n: the naturally trained second teacher of
# AKD and MTARD; each on clean (x) and adversarial (x' = x + d) inputs, and on x - d (IGDM's term);
# p: the peer network trained online beside the student (PeerAiD), in train() mode with gradient.
FORWARDS = ("s_clean", "s_adv", "t_clean", "t_adv", "n_clean", "n_adv", "s_minus", "t_minus", "p_adv")


@dataclass(frozen=True)
class AttackSpec:
    """The inner maximisation of a method (docs/methods.md section 6.1).

    inner_loss(student_logits, y, reference) is summed over the batch. target names the reference:
    'labels' (none), 'teacher_clean' (T(x), fixed), 'student_clean' (S(x) in eval mode, fixed) or
    'teacher' (T(x') at every step, the gradient flowing through it) or 'peer_clean' (the run's online
    peer network, its extra module, on x in eval mode, fixed: PeerAiD) or 'teacher_taylor' (T(x) with
    its true-class logit moved by `taylor` times the first-order change <grad_x T_y(x), x' - x>, the
    gradient flowing through that change: SAAD). train_mode: the student's BatchNorm mode during the
    attack (True = train(), updating running statistics)."""
    inner_loss: Callable
    init: str
    train_mode: bool = False
    target: str = "labels"
    taylor: float = 1.0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}")


@dataclass(frozen=True)
class Budget:
    """The training attack's L-inf PGD: radius and step in pixel units, and the number of steps."""
    eps: float
    step_size: float
    steps: int


@dataclass(frozen=True)
class Option:
    """A method-specific command-line option (`--<name>`)."""
    default: Any  # a value, or a function of the parsed args
    help: str = ""
    type: Optional[Callable] = None
    choices: Optional[Tuple] = None
    flag: bool = False  # a store_true switch
    low: Optional[float] = None  # the valid range of a number: [low, high], or (low, high] with low_open
    high: Optional[float] = None
    low_open: bool = False

    def resolve_default(self, args):
        return self.default(args) if callable(self.default) else self.default

    def range_error(self, value) -> Optional[str]:
        """Why `value` is out of this option's range, or None."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None


@dataclass
class StepOutputs:
    """Everything a method's loss may read for one batch. Logits it did not ask for are None."""
    y: torch.Tensor
    epoch: int  # 1-based
    s_clean: Optional[torch.Tensor] = None
    s_adv: Optional[torch.Tensor] = None
    t_clean: Optional[torch.Tensor] = None
    t_adv: Optional[torch.Tensor] = None
    n_clean: Optional[torch.Tensor] = None
    n_adv: Optional[torch.Tensor] = None
    s_minus: Optional[torch.Tensor] = None
    t_minus: Optional[torch.Tensor] = None
    p_adv: Optional[torch.Tensor] = None
    features: Dict[str, torch.Tensor] = field(default_factory=dict)  # same keys, with_features only
    extra: Optional[nn.Module] = None  # the run's extra_module (e.g. VarGap's projector), if any

    @property
    def trained_logits(self) -> torch.Tensor:
        """The logits behind the logged train accuracy: adversarial when the method attacks."""
        return self.s_adv if self.s_adv is not None else self.s_clean


class Method:
    """A training method. Subclasses set the class attributes, bind their options in __init__ and
    implement `loss`."""
    name: str = ""
    summary: str = ""
    paper: str = ""
    needs_teacher: bool = False
    needs_natural_teacher: bool = False  # a second, naturally trained teacher (--teacher_st_model/_path)
    attack: Optional[AttackSpec] = None
    # The forward passes after the attack, in the order the released code runs them (each train()
    # pass of the student moves its BatchNorm statistics, so the order and the repeats are part of
    # the method). A key given twice runs twice; the loss reads the last.
    forwards: Tuple[str, ...] = ("s_adv",)
    with_features: bool = False
    # Method-specific command-line options this method reads. Options of other methods are
    # rejected when given; one name shared by several methods must mean the same thing.
    options: Dict[str, Option] = {}
    parts: Tuple[str, ...] = ()  # the loss's named parts besides 'loss'
    recipe: Optional[Recipe] = None  # what the released code trains with (--recipe released)
    # Plug-in terms this method composes with when their options turn them on (e.g. IGDM's); each
    # adds its passes after the method's and its term to the method's loss.
    plugins: Tuple[type, ...] = ()

    def __init__(self, config):
        self.budget = Budget(config.epsilon / 255, config.step_size / 255, config.num_steps)
        self.active_plugins = tuple(plugin(config) for plugin in self.plugins if plugin.enabled(config))

    def logged_parts(self) -> Tuple[str, ...]:
        """The parts results.csv logs: the method's, then its active plug-ins'."""
        return tuple(self.parts) + tuple(part for plugin in self.active_plugins for part in plugin.parts)

    def passes(self, epoch: int) -> Tuple[str, ...]:
        """This epoch's forward passes: the method's sequence, then what its plug-ins add."""
        sequence = tuple(self.forward_sequence(epoch))
        for plugin in self.active_plugins:
            sequence += tuple(key for key in plugin.passes if key not in sequence)
        return sequence

    def terms(self, out: "StepOutputs") -> Dict[str, torch.Tensor]:
        """The method's loss and parts, with its plug-ins' terms added."""
        terms = self.loss(out)
        for plugin in self.active_plugins:
            terms = plugin.add(terms, out)
        return terms

    @classmethod
    def swa_start(cls, args) -> int:
        """--swa_start when not given: 0 (no weight averaging) unless the released code averages."""
        return 0

    @classmethod
    def options_problem(cls, options: Dict[str, Any]) -> Optional[str]:
        """Why this run's option values cannot go together (each is within its own range already), as
        the one-line error; None when they can."""
        return None

    @classmethod
    def natural_teacher_model(cls, args) -> Optional[str]:
        """The second teacher's architecture when --teacher_st_model is not given."""
        return None

    def begin_step(self, epoch: int) -> None:
        """Called at the start of every training step, before the attack: a method whose state changes between
        epochs (ABSLD's temperatures, the Fair methods' class weights) brings it to `epoch` here."""

    def state_dict(self) -> Dict[str, Any]:
        """What the method itself learns during a run (MTARD's adaptive weights): saved in last.pth."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def forward_sequence(self, epoch: int) -> Tuple[str, ...]:
        """The forward passes of this epoch's steps (IAD adds one after its warm-up)."""
        return self.forwards

    @classmethod
    def options_for(cls, args) -> Dict[str, Option]:
        """The options a run with these arguments reads (VarGap adds those of its --vg_base)."""
        return cls.options

    @classmethod
    def released_recipe(cls, args) -> Recipe:
        """The recipe of the released code this run reproduces (VarGap: its --vg_base's)."""
        return cls.recipe

    def loss(self, out: StepOutputs) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_module(self, student: nn.Module, teacher: Optional[nn.Module]) -> Optional[nn.Module]:
        """Trainable parameters beyond the student's (e.g. a projector), saved with the student."""
        return None

    @classmethod
    def describe(cls) -> Dict[str, Any]:
        return {"method": cls.name, "paper": cls.paper, "summary": cls.summary}


def forward(model: nn.Module, x: torch.Tensor, key: str, out: StepOutputs, with_features: bool) -> torch.Tensor:
    """model(x) as fp32 logits; with features, they are kept in out.features[key]."""
    if with_features:
        logits, out.features[key] = model(x, return_features=True)
        return logits.float()
    return model(x).float()


def taylor_target(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, taylor: float,
                  autocast: Callable = contextlib.nullcontext) -> Callable[[torch.Tensor], torch.Tensor]:
    """x' -> T(x) + taylor * <grad_x T_y(x), x' - x> on the true class (one teacher pass with an input
    gradient, then linear in x'): the teacher at x' to first order, without running it."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), autocast():
        logits = teacher(x).float()
    (slope,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), [x])
    base, true_class = logits.detach(), F.one_hot(y, logits.shape[1]).to(logits.dtype)

    def target(x_adv: torch.Tensor) -> torch.Tensor:
        change = (slope * (x_adv - x.detach())).flatten(1).sum(1)
        return base + taylor * change[:, None] * true_class
    target.clean_logits = base  # T(x) itself: the step's T(x) pass, computed once
    return target


def attack_target(spec: AttackSpec, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor,
                  t_clean: Optional[torch.Tensor], autocast: Callable = contextlib.nullcontext,
                  peer: Optional[nn.Module] = None, y: Optional[torch.Tensor] = None) -> Target:
    """The one place that turns `spec.target` into what `pgd` takes: None, fixed logits or a network."""
    if spec.target == "labels":
        return None
    if spec.target == "teacher_taylor":
        return taylor_target(teacher, x, y, spec.taylor, autocast)
    if spec.target == "peer_clean":
        with module_mode(peer, False), torch.no_grad(), autocast():
            return peer(x).float()
    if spec.target == "teacher":
        return teacher
    if spec.target == "teacher_clean":
        if t_clean is not None:
            return t_clean
        with torch.no_grad(), autocast():
            return teacher(x).float()
    with module_mode(student, False), torch.no_grad(), autocast():  # student_clean
        return student(x).float()


def whole_batch(out: StepOutputs, world: World, rows: Tuple[int, int, int]) -> StepOutputs:
    """The outputs of the whole batch, on every process of a distributed job, from each process's
    rows (gradients flow to this process's rows only; see `World.gather_rows`): the loss a method
    computes from them is the single-process loss of the batch, whatever its form."""
    whole = StepOutputs(y=world.gather_rows(out.y, rows), epoch=out.epoch, extra=out.extra)
    for key in FORWARDS:
        if getattr(out, key) is not None:
            setattr(whole, key, world.gather_rows(getattr(out, key), rows))
    whole.features = {key: world.gather_rows(value, rows) for key, value in out.features.items()}
    return whole


def training_step(method: Method, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor,
                  y: torch.Tensor, epoch: int, generator: Optional[torch.Generator] = None,
                  autocast: Optional[Callable] = None, extra: Optional[nn.Module] = None,
                  world: World = World(), rows: Optional[Tuple[int, int, int]] = None,
                  trained_student: Optional[nn.Module] = None, natural_teacher: Optional[nn.Module] = None
                  ) -> Tuple[Dict[str, torch.Tensor], StepOutputs]:
    """Attack (if the method has one), then the forward passes the loss needs, then the loss.

    The student's forward passes run in train() mode, in the method's order (docs/methods.md
    section 1.5); the teacher is frozen and runs without grad outside the attack. T(x) is computed
    at most once. `generator` draws the attack's random start.

    In a distributed job (docs/distributed.md) x and y are this process's `rows` of the batch: the
    attack runs on them (with the whole batch's random start), the passes after it through
    `trained_student` (the student under DistributedDataParallel), and the loss on the outputs of
    the whole batch gathered from every process."""
    autocast = autocast or contextlib.nullcontext
    trained_student = student if trained_student is None else trained_student
    out = StepOutputs(y=y, epoch=epoch, extra=extra)
    method.begin_step(epoch)
    sequence, features = method.passes(epoch), method.with_features
    x_adv = x
    if method.attack is not None:
        spec = method.attack
        needs_t_clean = "t_clean" in sequence or spec.target == "teacher_clean"
        if needs_t_clean and spec.target != "teacher_taylor":
            with torch.no_grad(), autocast():
                out.t_clean = forward(teacher, x, "t_clean", out, features)
        target = attack_target(spec, student, teacher, x, out.t_clean, autocast,
                               peer=getattr(extra, "module", extra), y=y)  # the peer itself, not its DDP
        if needs_t_clean and spec.target == "teacher_taylor":
            out.t_clean = target.clean_logits  # the target's input-gradient pass on x is the step's T(x)
        budget = method.budget
        x_adv = pgd(student, x, y, eps=budget.eps, step_size=budget.step_size, steps=budget.steps,
                    loss_fn=spec.inner_loss, init=spec.init, train_mode=spec.train_mode, generator=generator,
                    target=target, autocast=autocast, batch_rows=rows if world.distributed else None)
    x_minus = x - (x_adv - x) if "s_minus" in sequence or "t_minus" in sequence else None  # not clamped
    inputs = {"s_clean": (trained_student, x), "s_adv": (trained_student, x_adv), "t_clean": (teacher, x),
              "t_adv": (teacher, x_adv), "n_clean": (natural_teacher, x), "n_adv": (natural_teacher, x_adv),
              "s_minus": (trained_student, x_minus), "t_minus": (teacher, x_minus), "p_adv": (extra, x_adv)}
    with module_mode(student, True), autocast():
        for key in sequence:
            model, batch = inputs[key]
            if model is trained_student:
                setattr(out, key, forward(trained_student, batch, key, out, features))
            elif key.startswith("p_"):  # the online peer: trained, so train() with gradient
                with module_mode(model, True):
                    setattr(out, key, forward(model, batch, key, out, features))
            elif getattr(out, key) is None:
                with torch.no_grad():
                    setattr(out, key, forward(model, batch, key, out, features))
    if world.distributed:
        out = whole_batch(out, world, rows)
    return method.terms(out), out
