"""A preset expanded into jobs: train the teacher (when the preset trains one) and every student, evaluate
each student's reported checkpoint, write the report. Each job knows whether it is done from the
files it leaves (config.json and results.csv of a run, the evaluation report), so a second call
skips finished work and resumes interrupted work."""
import math
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from evaluation.report import REPORT_FORMAT, radius_key
from methods import get_method
from reporting.runs import BEST_PGD, read_history, read_json, reported_checkpoint
from runtime.checkpoints import sha256_of

from .presets import Evaluation, Preset

STAGES = ("teacher", "train", "evaluate", "report")


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

    def status(self):
        return self.state()


def flag_args(flags: Dict[str, Any]) -> List[str]:
    args = []
    for name, value in flags.items():
        if value is True:
            args.append(f"--{name}")
        elif value is not False:
            args += [f"--{name}", str(value)]
    return args


def completed_epochs(folder: str) -> int:
    rows = read_history(os.path.join(folder, "results.csv"))
    epoch = rows[-1].get("epoch", math.nan) if rows else 0
    return int(epoch) if math.isfinite(epoch) else 0


def same_setting(given: Any, recorded: Any) -> bool:
    """A preset's flag value against config.json's: '4,5' is [4, 5], 8 is 8.0."""
    if isinstance(recorded, list):
        given = [part for part in str(given).split(",") if part.strip()] if isinstance(given, str) else given
        return isinstance(given, list) and len(given) == len(recorded) and all(
            same_setting(a, b) for a, b in zip(given, recorded))
    if isinstance(recorded, bool) or isinstance(given, bool):
        return given is recorded
    if isinstance(recorded, (int, float)):
        try:
            return float(given) == float(recorded)
        except (TypeError, ValueError):
            return False
    return given == recorded


def training_state(folder: str, expected: Dict[str, Any]):
    """(done, what) of a training run folder; `expected` are settings its config.json must hold (a
    folder trained with other settings is never taken for this run, done or not)."""
    def state():
        config = read_json(os.path.join(folder, "config.json"))
        if config is None:
            return False, "not started"
        other = [f"{k} {config.get(k)!r} (the preset: {v!r})" for k, v in expected.items()
                 if not same_setting(v, config.get(k))]
        if other:
            return False, (f"holds another run ({', '.join(other)}): its job will be refused; choose another "
                           f"--root, or move that folder away")
        done, total = completed_epochs(folder), config.get("epochs")
        if isinstance(total, int) and done >= total:
            return True, f"done ({done} epochs)"
        return False, f"resumes after epoch {done} of {total}"
    return state


def report_path(checkpoint: str, protocol: str) -> str:
    return f"{checkpoint}.eval.{protocol}.json"  # main_eval.py's default --out


def evaluation_missing(checkpoint: str, evaluation: Evaluation) -> Optional[str]:
    """None when the report of `checkpoint` holds every cell `evaluation` asks for, else what is missing."""
    if not os.path.isfile(checkpoint):
        return "waits for its checkpoint"
    report = read_json(report_path(checkpoint, evaluation.protocol))
    if report is None or report.get("format") != REPORT_FORMAT:
        return "not evaluated"
    if (report.get("checkpoint") or {}).get("sha256") != sha256_of(checkpoint):
        return "the checkpoint changed since its evaluation"
    if evaluation.n_ex and report.get("n_examples") != evaluation.n_ex:
        return f"evaluated on {report.get('n_examples')} images, not {evaluation.n_ex}"
    radii = report.get("radii", {})
    missing = [f"{name}@{eps:g}" for eps in evaluation.eps for name in evaluation.attacks
               if name not in radii.get(radius_key(eps), {}).get("results", {})]
    return f"missing {', '.join(missing)}" if missing else None


def evaluation_state(checkpoint: str, evaluations: Sequence[Evaluation]):
    def state():
        for evaluation in evaluations:
            missing = evaluation_missing(checkpoint, evaluation)
            if missing:
                return False, missing
        return True, "done"
    return state


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
        self.preset, self.root, self.data_dir, self.gpus_per_run = preset, root, data_dir, gpus_per_run
        tiny = preset.dataset == "Tiny_Image"
        self.train_script = "main_tiny.py" if tiny else "main.py"
        self.eval_script = "main_eval_tinyimagenet.py" if tiny else "main_eval.py"
        self.jobs: List[Job] = []
        self.teacher_path = preset.teacher.path if preset.teacher else None
        if preset.teacher is not None and preset.teacher.path is None:
            self.add_teacher()
        runs = [self.add_student(method, seed) for method in preset.methods for seed in preset.seeds]
        evaluations = [self.add_evaluation(job) for job in runs]
        inputs = [os.path.join(job.folder, "results.csv") for job in runs]
        inputs += [report_path(job.checkpoint, e.protocol) for job in evaluations for e in preset.evaluations]
        folder = os.path.join(root, "report")
        command = ["main_report.py", *[job.folder for job in runs], "--out", folder, "--title", preset.name]
        self.jobs.append(Job("report", "report", [command], folder, [job.name for job in evaluations],
                             report_state(folder, inputs)))

    def training_command(self, folder: str, model: str, method: str, seed: int, flags: Dict[str, Any],
                         teacher: bool) -> List[str]:
        command = [self.train_script, "--dataset", self.preset.dataset, "--model", model, "--method", method,
                   "--seed", str(seed), "--data_dir", self.data_dir, "--save_dir", folder]
        if teacher:
            command += ["--teacher_model", self.preset.teacher.model, "--teacher_path", self.teacher_path]
        # --resume starts a new run in an empty folder and continues an interrupted one.
        command += flag_args(flags) + ["--resume"]
        return TORCHRUN + [str(self.gpus_per_run)] + command if self.gpus_per_run > 1 else command

    def add_teacher(self) -> None:
        teacher = self.preset.teacher
        folder = os.path.join(self.root, "teacher")
        flags = dict(self.preset.train, **teacher.flags)
        command = self.training_command(folder, teacher.model, teacher.method, teacher.seed, flags, False)
        expected = dict(flags, method=teacher.method, model=teacher.model, seed=teacher.seed,
                        dataset=self.preset.dataset)
        self.jobs.append(Job("train teacher", "teacher", [command], folder, [], training_state(folder, expected),
                             gpus=self.gpus_per_run))
        self.teacher_path = os.path.join(folder, BEST_PGD)  # a robust teacher: its best-PGD-10 epoch

    def add_student(self, method: str, seed: int) -> Job:
        folder = os.path.join(self.root, method, f"seed{seed}")
        needs_teacher = get_method(method).needs_teacher
        flags = dict(self.preset.train, **self.preset.method_flags.get(method, {}))
        command = self.training_command(folder, self.preset.student, method, seed, flags, needs_teacher)
        needs = ["train teacher"] if needs_teacher and self.teacher_path != self.preset.teacher.path else []
        expected = dict(flags, method=method, model=self.preset.student, seed=seed, dataset=self.preset.dataset)
        job = Job(f"train {method} seed {seed}", "train", [command], folder, needs, training_state(folder, expected),
                  gpus=self.gpus_per_run)
        self.jobs.append(job)
        return job

    def add_evaluation(self, run: Job) -> Job:
        method = run.commands[0][run.commands[0].index("--method") + 1]
        swa_start = {**self.preset.train, **self.preset.method_flags.get(method, {})}.get("swa_start")
        checkpoint = os.path.join(run.folder, reported_checkpoint(method, swa_start))
        commands = []
        for e in self.preset.evaluations:
            command = [self.eval_script, "--dataset", self.preset.dataset, "--model", self.preset.student,
                       "--model_path", checkpoint, "--data_dir", self.data_dir, "--protocol", e.protocol,
                       "--attacks", ",".join(e.attacks), "--eps", ",".join(f"{v:g}" for v in e.eps),
                       "--n_ex", str(e.n_ex), "--method", method]
            if get_method(method).needs_teacher:
                command += ["--teacher_model", self.preset.teacher.model]
            commands.append(command)
        job = Job(f"evaluate {run.name[len('train '):]}", "evaluate", commands, run.folder, [run.name],
                  evaluation_state(checkpoint, self.preset.evaluations), checkpoint)
        self.jobs.append(job)
        return job

    def describe(self) -> str:
        """The plan as --dry_run prints it: each job's commands, its folder and whether it is done."""
        lines = []
        for stage in STAGES:
            for job in (j for j in self.jobs if j.stage == stage):
                done, what = job.status()
                lines.append(f"[{'done' if done else 'todo'}] {job.name}: {what}  ({job.folder})")
                for command in job.commands:
                    lines.append(f"    python {shlex.join(command)}")
        return "\n".join(lines)
