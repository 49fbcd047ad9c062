"""A preset expanded into jobs: train the teacher (when the preset trains one) and every student, evaluate
each student's reported checkpoint, write the report. Every command is checked, when the plan is made,
by its own script's parser and rules (main.py's resolve, main_eval.py's check_settings), so that a bad
preset value is one line before any job starts. Each job knows whether it is done from the files it
leaves (config.json and results.csv of a run, the evaluation report), so a second call skips finished
work and resumes interrupted work."""
import argparse
import contextlib
import importlib
import io
import math
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from evaluation.cli import build_parser as evaluation_parser, check_settings
from evaluation.report import IDENTITY, REPORT_FORMAT, check_report, radius_key
from methods import get_method
from reporting.runs import BEST_PGD, read_history, read_json, reported_checkpoint
from runtime.checkpoints import sha256_of
from runtime.errors import UserError
from teachers import zoo
from training.config import Config, build_parser as training_parser, resolve as resolve_training
from training.run_dir import identity_differences

from .presets import Evaluation, Preset

STAGES = ("teacher", "train", "evaluate", "report")
# The images main_eval.py evaluates when --n_ex is 0 or larger: the test split (Tiny ImageNet's: its
# labelled val set). data.load_split reads them; tests/test_pipeline_guards.py checks these counts on the data.
TEST_IMAGES = {"CIFAR10": 10000, "CIFAR100": 10000, "Tiny_Image": 10000}


@dataclass
class Job:
    name: str  # unique: 'train DGAD seed 0'
    stage: str
    commands: List[List[str]]  # argv lists, script first, run in the repository root one after another
    folder: str
    needs: List[str] = field(default_factory=list)
    state: Any = None  # a function () -> (done: bool, what: str)
    checkpoint: Optional[str] = None  # what an evaluation job evaluates
    gpus: int = 1  # a training run on several runs under torchrun, one process per GPU
    # () -> why the job would be refused as planned (its folder holds another run), or None.
    conflict: Optional[Callable[[], Optional[str]]] = None
    # () -> the commands as they must run now (an evaluation replaces a report it cannot extend).
    current: Optional[Callable[[], List[List[str]]]] = None

    def status(self):
        return self.state()

    def commands_now(self) -> List[List[str]]:
        return self.current() if self.current else self.commands

    def refused(self) -> Optional[str]:
        return self.conflict() if self.conflict else None


def flag_args(flags: Dict[str, Any]) -> List[str]:
    """A preset's flags as arguments: a switch (true) as --name, any other value as --name value (the
    preset check refuses false, and booleans for flags that take a value)."""
    args = []
    for name, value in flags.items():
        args += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return args


def script_parser(script: str) -> argparse.ArgumentParser:
    """The parser `script` runs, built as the script builds it, whose errors raise UserError instead of
    printing its usage and exiting."""
    module = importlib.import_module(script[:-len(".py")])  # main.py, main_eval.py, ...: their DEFAULTS
    if script.startswith("main_eval"):
        parser = evaluation_parser(module.DEFAULTS, module.DESCRIPTION)
    else:
        parser = training_parser(module.DEFAULTS, "")

    def refuse(message: str):
        raise UserError(message)
    parser.error = refuse
    return parser


def training_switches(script: str = "main.py") -> Dict[str, bool]:
    """Each flag of the training script, and whether it is a switch (store_true): what a preset may set."""
    return {action.dest: isinstance(action, argparse._StoreTrueAction)
            for action in script_parser(script)._actions if action.option_strings}


def checked_training(command: List[str], where: str, warnings: List[str]) -> Config:
    """main.py's (or main_tiny.py's) parse and resolve of `command`, which touch no file; its warnings
    go to `warnings` (the run prints them again when it starts)."""
    try:
        args = script_parser(command[0]).parse_args(command[1:])
        with contextlib.redirect_stderr(io.StringIO()) as said:
            config = resolve_training(args)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    warnings += [f"{where}: {line[len('warning: '):]}" for line in said.getvalue().splitlines()
                 if line.startswith("warning: ")]
    return config


def checked_evaluation(command: List[str], where: str) -> argparse.Namespace:
    """main_eval.py's parse of `command` and its checks that touch no file."""
    try:
        return check_settings(script_parser(command[0]).parse_args(command[1:]))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def completed_epochs(folder: str) -> int:
    rows = read_history(os.path.join(folder, "results.csv"))
    epoch = rows[-1].get("epoch", math.nan) if rows else 0
    return int(epoch) if math.isfinite(epoch) else 0


def run_differences(config: Dict[str, Any], expected: Dict[str, Any]) -> List[str]:
    """'--epochs 3 (now 4)' for each setting of `expected` (a resolved main.py record) that defines the run
    and differs from config.json's: main.py's own rule for refusing a resume (training.run_dir)."""
    return identity_differences({k: v for k, v in config.items() if k in expected}, expected)


def training_conflict(folder: str, expected: Dict[str, Any]) -> Callable[[], Optional[str]]:
    """Why the run in `folder` is not the preset's: what main.py would refuse its resume for, with what to do."""
    def conflict():
        config = read_json(os.path.join(folder, "config.json"))
        other = run_differences(config, expected) if config is not None else []
        if not other:
            return None
        said = "; ".join(difference.replace("(now ", "(the preset: ") for difference in other)
        return (f"{folder} holds a run made with other settings: {said}; set the preset back, or move that folder "
                f"away (or choose another --root) to train it anew")
    return conflict


def training_state(folder: str, expected: Dict[str, Any]):
    """(done, what) of a training run folder; `expected` are settings its config.json must hold (a
    folder trained with other settings is never taken for this run, done or not)."""
    conflict = training_conflict(folder, expected)

    def state():
        config = read_json(os.path.join(folder, "config.json"))
        if config is None:
            return False, "not started"
        refused = conflict()
        if refused:
            return False, refused
        done, total = completed_epochs(folder), config.get("epochs")
        if isinstance(total, int) and done >= total:
            return True, f"done ({done} epochs)"
        return False, f"resumes after epoch {done} of {total}"
    return state


def report_path(checkpoint: str, protocol: str) -> str:
    return f"{checkpoint}.eval.{protocol}.json"  # main_eval.py's default --out


def evaluated_images(dataset: str, n_ex: int) -> int:
    """The images main_eval.py --n_ex evaluates: the first n_ex, or the whole test split (0, or more than it holds)."""
    total = TEST_IMAGES[dataset]
    return total if n_ex == 0 or n_ex > total else n_ex


@dataclass(frozen=True)
class Wanted:
    """What one evaluation of a checkpoint asks of its report: the report's identity (evaluation.report.IDENTITY),
    the settings one report holds one of, and the cells."""
    identity: Dict[str, Any]
    seed: int
    batch_size: int
    evaluation: Evaluation


def report_mismatch(checkpoint: str, wanted: Wanted) -> Optional[str]:
    """Why the report at the checkpoint's default --out cannot be extended by `wanted` (None: there is none,
    or it can): main_eval.py refuses to extend it, and replaces it with --overwrite. A file there that is not
    a report at all is left to main_eval.py, which never replaces it."""
    report = read_json(report_path(checkpoint, wanted.evaluation.protocol))
    if report is None or report.get("format") is None:
        return None
    if report.get("format") != REPORT_FORMAT:
        return f"its report is of the older format {report.get('format')}"
    recorded = report.get("checkpoint") if isinstance(report.get("checkpoint"), dict) else {}
    if recorded.get("sha256") != (sha256_of(checkpoint) if os.path.isfile(checkpoint) else None):
        return "the checkpoint changed since its evaluation"
    try:
        check_report(report)
    except ValueError as exc:
        return f"its report is damaged ({exc})"
    other = [f"{key} {report.get(key)!r} (the preset: {wanted.identity[key]!r})" for key in IDENTITY
             if key in wanted.identity and report.get(key) != wanted.identity[key]]
    other += [f"{key} {report.get(key)!r} (the preset: {value!r})"
              for key, value in (("seed", wanted.seed), ("batch_size", wanted.batch_size)) if report.get(key) != value]
    return f"evaluated with other settings ({', '.join(other)})" if other else None


def evaluation_missing(checkpoint: str, wanted: Wanted) -> Optional[str]:
    """None when the report of `checkpoint` holds every cell `wanted` asks for, else what is missing."""
    if not os.path.isfile(checkpoint):
        return "waits for its checkpoint"
    if not os.path.isfile(report_path(checkpoint, wanted.evaluation.protocol)):
        return "not evaluated"
    mismatch = report_mismatch(checkpoint, wanted)
    if mismatch:
        return f"{mismatch}: evaluated again"
    report = read_json(report_path(checkpoint, wanted.evaluation.protocol))
    if report is None or report.get("format") != REPORT_FORMAT:
        return "not evaluated"
    radii = report.get("radii", {})
    missing = [f"{name}@{eps:g}" for eps in wanted.evaluation.eps for name in wanted.evaluation.attacks
               if name not in radii.get(radius_key(eps), {}).get("results", {})]
    return f"missing {', '.join(missing)}" if missing else None


def evaluation_state(checkpoint: str, wanted: Sequence[Wanted]):
    def state():
        for one in wanted:
            missing = evaluation_missing(checkpoint, one)
            if missing:
                return False, missing
        return True, "done"
    return state


def evaluation_commands(checkpoint: str, commands: List[List[str]], wanted: Sequence[Wanted]):
    """The commands as they must run now: the first of each protocol with --overwrite when the report there
    cannot be extended (other settings, another checkpoint, damaged), so that an edited preset evaluates
    again instead of failing on main_eval.py's refusal; reports that match are extended, never replaced."""
    def current():
        first = {}
        for i, one in enumerate(wanted):
            first.setdefault(one.evaluation.protocol, i)
        replace = {i for protocol, i in first.items() if report_mismatch(checkpoint, wanted[i])}
        return [command + ["--overwrite"] if i in replace else command for i, command in enumerate(commands)]
    return current


def report_state(folder: str, inputs: Sequence[str]):
    """Done when the report's table is newer than every results.csv and evaluation report it reads."""
    def state():
        table = os.path.join(folder, "tables.md")
        if not os.path.isfile(table):
            return False, "not written"
        newest = max((os.path.getmtime(p) for p in inputs if os.path.exists(p)), default=0.0)
        return (True, "done") if os.path.getmtime(table) >= newest else (False, "older than its runs")
    return state


# A training run on several GPUs of one node: one process per GPU (docs/distributed.md).
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


class Plan:
    def __init__(self, preset: Preset, root: str, data_dir: str, gpus_per_run: int = 1):
        """Raises UserError naming the job and the flag when a command of the plan is one its script refuses."""
        self.preset, self.root, self.data_dir, self.gpus_per_run = preset, root, data_dir, gpus_per_run
        tiny = preset.dataset == "Tiny_Image"
        self.train_script = "main_tiny.py" if tiny else "main.py"
        self.eval_script = "main_eval_tinyimagenet.py" if tiny else "main_eval.py"
        self.jobs: List[Job] = []
        self.warnings: List[str] = []  # what the scripts' checks warn of, once per job
        self.configs: Dict[str, Config] = {}  # each training job's settings, as its script resolves them
        self.teacher_path = preset.teacher.path if preset.teacher else None
        teacher = self.add_teacher() if preset.teacher is not None and preset.teacher.path is None else None
        runs = [self.add_student(method, seed) for method in preset.methods for seed in preset.seeds]
        self.warn_uncached_teacher()
        if teacher is not None and preset.teacher.evaluate:  # its own numbers, in the report beside the students'
            runs.insert(0, teacher)
        evaluations = [self.add_evaluation(job) for job in runs]
        inputs = [os.path.join(job.folder, "results.csv") for job in runs]
        inputs += [report_path(job.checkpoint, e.protocol) for job in evaluations for e in preset.evaluations]
        folder = os.path.join(root, "report")
        command = ["main_report.py", *[job.folder for job in runs], "--out", folder, "--title", preset.name]
        self.jobs.append(Job("report", "report", [command], folder, [job.name for job in evaluations],
                             report_state(folder, inputs)))

    def where(self, job_name: str) -> str:
        return f"preset {self.preset.name} {job_name}"

    def add_training(self, name: str, stage: str, folder: str, model: str, method: str, seed: int,
                     flags: Dict[str, Any], teacher: bool, needs: List[str]) -> Job:
        command = [self.train_script, "--dataset", self.preset.dataset, "--model", model, "--method", method,
                   "--seed", str(seed), "--data_dir", self.data_dir, "--save_dir", folder]
        if teacher:
            command += ["--teacher_model", self.preset.teacher.model, "--teacher_path", self.teacher_path]
        # --resume starts a new run in an empty folder and continues an interrupted one.
        command += flag_args(flags) + ["--resume"]
        config = checked_training(command, self.where(name), self.warnings)
        self.configs[name] = config
        if self.gpus_per_run > 1:
            command = TORCHRUN + [str(self.gpus_per_run)] + command
        expected = config.record()
        job = Job(name, stage, [command], folder, needs, training_state(folder, expected), gpus=self.gpus_per_run,
                  conflict=training_conflict(folder, expected))
        self.jobs.append(job)
        return job

    def warn_uncached_teacher(self) -> None:
        """A zoo teacher that is neither in the cache nor asked to be fetched ("download": true) fails every run
        that distils from it: said once when the plan is made (the check reads the cache, fetches nothing)."""
        for config in self.configs.values():
            if config.teacher_source and config.teacher_source.startswith(zoo.ZOO_PREFIX) \
                    and not config.download and not os.path.isfile(config.teacher_path):
                self.warnings.append(f"preset {self.preset.name} teacher: {config.teacher_source} is not in the cache "
                                     f"({config.teacher_path}): add \"download\": true to the preset's \"train\" "
                                     f"flags, or place the file there (docs/teachers.md)")
                return

    def add_teacher(self) -> Job:
        teacher = self.preset.teacher
        folder = os.path.join(self.root, "teacher")
        job = self.add_training("train teacher", "teacher", folder, teacher.model, teacher.method, teacher.seed,
                                dict(self.preset.train, **teacher.flags), False, [])
        self.teacher_path = os.path.join(folder, BEST_PGD)  # a robust teacher: its best-PGD-10 epoch
        return job

    def add_student(self, method: str, seed: int) -> Job:
        needs_teacher = get_method(method).needs_teacher
        needs = ["train teacher"] if needs_teacher and self.teacher_path != self.preset.teacher.path else []
        return self.add_training(f"train {method} seed {seed}", "train", os.path.join(self.root, method, f"seed{seed}"),
                                 self.preset.student, method, seed,
                                 dict(self.preset.train, **self.preset.method_flags.get(method, {})), needs_teacher,
                                 needs)

    def add_evaluation(self, run: Job) -> Job:
        config = self.configs[run.name]
        checkpoint = os.path.join(run.folder, reported_checkpoint(config.method, config.swa_start))
        name = f"evaluate {run.name[len('train '):]}"
        commands, wanted = [], []
        for e in self.preset.evaluations:
            command = [self.eval_script, "--dataset", self.preset.dataset, "--model", config.model,
                       "--model_path", checkpoint, "--data_dir", self.data_dir, "--protocol", e.protocol,
                       "--attacks", ",".join(e.attacks), "--eps", ",".join(f"{v:g}" for v in e.eps),
                       "--n_ex", str(e.n_ex), "--method", config.method]
            if get_method(config.method).needs_teacher:
                command += ["--teacher_model", self.preset.teacher.model]
            settings = checked_evaluation(command, self.where(name))
            identity = {"dataset": settings.dataset, "model": settings.model, "protocol": settings.protocol,
                        "n_examples": evaluated_images(settings.dataset, settings.n_ex)}
            commands.append(command)
            wanted.append(Wanted(identity, settings.seed, settings.bs, e))
        job = Job(name, "evaluate", commands, run.folder, [run.name], evaluation_state(checkpoint, wanted), checkpoint,
                  current=evaluation_commands(checkpoint, commands, wanted))
        self.jobs.append(job)
        return job

    def describe(self) -> str:
        """The plan as --dry_run prints it: each job's commands, its folder and whether it is done."""
        lines = []
        for stage in STAGES:
            for job in (j for j in self.jobs if j.stage == stage):
                done, what = job.status()
                lines.append(f"[{'done' if done else 'todo'}] {job.name}: {what}  ({job.folder})")
                for command in job.commands_now():
                    lines.append(f"    python {shlex.join(command)}")
        return "\n".join(lines)
