"""The networks a run trains and distils from, the optimiser, and the run's own random streams:
everything a checkpoint saves and a resume restores (`Trainee`)."""
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from methods import Method
from models import build_model
from runtime.checkpoints import build_checked, load_weights, sha256_of
from runtime.device import capture_rng_state, make_generator, restore_rng_state
from runtime.errors import UserError
from runtime.precision import prepare_model
from teachers import download, zoo

from .schedule import build_optimizer
from .swa import StudentAverage

# Each stream has its own seed, derived from --seed: changing how often one is drawn from (say, a
# longer evaluation) leaves the others as they were. The data stream keeps --seed itself.
STREAM_SEED_OFFSETS = {"data": 0, "attack": 1_000_003, "eval": 2_000_006}
SWA_SEED_OFFSET = 3_000_009  # the BatchNorm pass of the weight average (--swa_start), when there is one
# The PGD-10 starts of the EMA's per-epoch evaluation (--ema): a stream of its own, so that evaluating the EMA
# leaves the student's evaluation (the "eval" stream) as it is without --ema.
EMA_EVAL_SEED_OFFSET = 4_000_012


def teacher_missing_message(teacher_model: str, teacher_path: str, dataset: str, natural: bool = False) -> str:
    flag, kind, method = ("--teacher_st_path", "naturally trained", "Natural") if natural else \
        ("--teacher_path", "robust", "TRADES")
    published = zoo.entries_for(dataset, teacher_model, "natural" if natural else "adversarial")
    fetch = ""
    if published:  # nothing is downloaded unless asked: the message names the flag that does it
        e = published[0]
        numbers = f", {e.clean_acc:g}% clean / {e.autoattack_acc:g}% AutoAttack" \
            if e.clean_acc is not None and e.autoattack_acc is not None else ""
        fetch = (f"; to fetch the published {dataset} {teacher_model} {e.name}{numbers}, add {flag} {e.source} "
                 f"--download (docs/teachers.md lists the zoo)")
    return (f"teacher checkpoint not found: {teacher_path}{fetch}. {'Or p' if fetch else 'P'}ut a {kind} "
            f"{teacher_model} for {dataset} there or pass {flag}; published teachers and where to download them "
            f"are listed in checkpoints/README.md, or train one here: python main.py --dataset {dataset} "
            f"--model {teacher_model} --method {method}, then pass its "
            f"{'best_clean_acc_model.pth' if natural else 'best_PGD10_acc_model.pth'} as {flag}")


def require_teacher_file(config, natural: bool = False) -> None:
    """The teacher's file is there before any data is read: a zoo teacher is taken from the cache or, with
    --download, fetched into it (one process at a time: a torchrun job's others wait, then find it cached);
    a RobustBench model is left to load_teacher; any other path must be a file."""
    path, model, flag, source = \
        (config.teacher_st_path, config.teacher_st_model, "--teacher_st_path", config.teacher_st_source) if natural \
        else (config.teacher_path, config.teacher_model, "--teacher_path", config.teacher_source)
    parsed = zoo.split_source(source)
    if parsed is not None and parsed[0] == "robustbench":
        return
    if parsed is not None:
        fetched = download.ensure(zoo.entry(parsed[1], config.dataset, flag=flag), config.download, flag)
        if os.path.abspath(fetched) != os.path.abspath(path):
            raise UserError(f"{flag} {source}: the cache moved since the run was configured ({path} vs {fetched}); "
                            f"keep ADVKD_CACHE the same for the whole run")
        return
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a directory, not a checkpoint file; pass the teacher's .pth file")
    if not os.path.isfile(path):
        raise UserError(teacher_missing_message(model, path, config.dataset, natural))


def frozen(teacher: nn.Module) -> nn.Module:
    """A teacher is a target only: eval() for good, and no parameter ever asks for a gradient."""
    return teacher.eval().requires_grad_(False)


def load_teacher_and_file(teacher_model: str, teacher_path: str, dataset: str, num_classes: int, device,
                          natural: bool = False, download: bool = False) -> Tuple[nn.Module, str]:
    """The teacher with its checkpoint's weights, on `device`, frozen (`natural`: the second teacher), and
    the file its weights came from (robustbench:NAME: the file robustbench keeps it in, fetched only with
    `download`)."""
    if teacher_model.startswith(zoo.ROBUSTBENCH_PREFIX):
        try:
            from teachers.robustbench import load_robustbench  # imports robustbench (and torchvision): only here
        except ImportError as exc:
            raise UserError(f"{'--teacher_st_path' if natural else '--teacher_path'} {teacher_model} needs "
                            f"teachers/robustbench.py and the robustbench package ({exc})") from None
        teacher, file = load_robustbench(teacher_model[len(zoo.ROBUSTBENCH_PREFIX):], dataset, download=download)
        return frozen(teacher.to(device)), file
    if not os.path.isfile(teacher_path):
        raise UserError(teacher_missing_message(teacher_model, teacher_path, dataset, natural))
    teacher = build_checked(build_model, teacher_model, num_classes,
                            "--teacher_st_model" if natural else "--teacher_model")
    load_weights(teacher, teacher_path, name=f"teacher {teacher_model}", path=teacher_path)
    return frozen(teacher.to(device)), teacher_path


def load_teacher(teacher_model: str, teacher_path: str, dataset: str, num_classes: int, device,
                 natural: bool = False, download: bool = False) -> nn.Module:
    return load_teacher_and_file(teacher_model, teacher_path, dataset, num_classes, device, natural, download)[0]


def run_generators(device: torch.device, seed: int) -> Dict[str, torch.Generator]:
    """data: batch order and augmentation; attack: the training attack's start; eval: the per-epoch PGD's start."""
    return {name: make_generator(device, seed + offset) for name, offset in STREAM_SEED_OFFSETS.items()}


@dataclass
class Trainee:
    """The student (and a method's extra module), its frozen teacher, the optimiser, and the random
    streams. Networks are converted in place for --channels_last and compiled in place for
    --compile (`nn.Module.compile`), so each has one handle and its state dict keeps its names."""
    student: nn.Module
    teacher: Optional[nn.Module]
    extra: Optional[nn.Module]
    optimizer: torch.optim.Optimizer
    generators: Dict[str, torch.Generator]
    # The handles the training forwards go through: the student and the extra module under
    # DistributedDataParallel in a distributed job (`distribute`), the modules themselves otherwise.
    trained_student: Optional[nn.Module] = None
    trained_extra: Optional[nn.Module] = None
    natural_teacher: Optional[nn.Module] = None  # AKD's and MTARD's second teacher, frozen
    method: Optional[Method] = None  # whose own state (MTARD's adaptive weights) a resume restores
    average: Optional[StudentAverage] = None  # the student's weight average (--swa_start)
    ema: Optional[StudentAverage] = None  # its exponential moving average (--ema)
    teacher_file: Optional[str] = None  # the files the teachers' weights came from (robustbench's for its models)
    natural_teacher_file: Optional[str] = None

    def __post_init__(self):
        if self.trained_student is None:
            self.trained_student = self.student
        if self.trained_extra is None:
            self.trained_extra = self.extra

    @property
    def averages(self) -> List[StudentAverage]:
        """The student's weight averages that the run keeps (swa, then ema)."""
        return [average for average in (self.average, self.ema) if average is not None]

    def distribute(self, world, device: torch.device) -> None:
        """Wrap the trained networks for `world` (a collective: every process calls it)."""
        self.trained_student, self.trained_extra = world.wrap(self.student, device), world.wrap(self.extra, device)

    def teacher_record(self) -> Dict[str, Any]:
        """config.json's entries for the teachers' files: each path and its sha256, which defines the run (a
        resume refuses another teacher file); None without a teacher."""
        record = {"teacher_sha256": sha256_of(self.teacher_file) if self.teacher_file else None}
        if self.teacher_file:
            record["teacher_path"] = self.teacher_file
        if self.natural_teacher_file:
            record.update(teacher_st_path=self.natural_teacher_file,
                          teacher_st_sha256=sha256_of(self.natural_teacher_file))
        return record

    def resume_state(self) -> Dict[str, Any]:
        """What last.pth adds to a checkpoint for an exact resume (besides the weights)."""
        state = {"optimizer": self.optimizer.state_dict(), "rng": capture_rng_state(self.generators)}
        if self.method is not None and self.method.state_dict():
            state["method_state"] = self.method.state_dict()
        for average in self.averages:
            state[average.name] = average.state_dict()
        return state

    def load(self, payload: Dict[str, Any], path: str, arch: str) -> None:
        load_weights(self.student, payload, name=arch, path=path)
        if self.extra is not None:
            self.extra.load_state_dict(payload["extra"])
        self.optimizer.load_state_dict(payload["optimizer"])
        restore_rng_state(payload["rng"], self.generators)
        if self.method is not None and "method_state" in payload:
            self.method.load_state_dict(payload["method_state"])
        for average in self.averages:
            average.load_state_dict(payload[average.name])


def build_trainee(config, method: Method, num_classes: int, device: torch.device, sync_bn: bool = False) -> Trainee:
    """sync_bn: BatchNorm over the whole batch of a distributed job (SyncBatchNorm; same state dict)."""
    student = build_checked(build_model, config.model, num_classes, "--model").to(device)
    if sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    teacher = natural_teacher = teacher_file = natural_teacher_file = None
    if method.needs_teacher:
        teacher, teacher_file = load_teacher_and_file(config.teacher_model, config.teacher_path, config.dataset,
                                                      num_classes, device, download=config.download)
    if method.needs_natural_teacher:
        natural_teacher, natural_teacher_file = load_teacher_and_file(
            config.teacher_st_model, config.teacher_st_path, config.dataset, num_classes, device, natural=True,
            download=config.download)
    extra = method.extra_module(student, teacher)
    params = list(student.parameters())
    if extra is not None:
        params += list(extra.to(device).parameters())
    optimizer = build_optimizer(config, params)
    generators = run_generators(device, config.seed)
    average = None
    if config.swa_start:  # a copy of the plain student, before it is converted or compiled in place
        generators["swa"] = make_generator(device, config.seed + SWA_SEED_OFFSET)
        average = StudentAverage(student, config.swa_start, generators["swa"])
    ema = None
    if config.ema:
        generators["ema_eval"] = make_generator(device, config.seed + EMA_EVAL_SEED_OFFSET)
        ema = StudentAverage(student, decay=config.ema)
    for network in (student, teacher, natural_teacher, extra):  # extra: e.g. PeerAiD's peer, a network too
        prepare_model(network, config.channels_last, config.compile)
    if ema is not None:  # the student's layout, so that the update every step stays on foreach's fast path
        prepare_model(ema.model.module, config.channels_last)
    return Trainee(student, teacher, extra, optimizer, generators, natural_teacher=natural_teacher, method=method,
                   average=average, ema=ema, teacher_file=teacher_file, natural_teacher_file=natural_teacher_file)
