"""One command for a short lease of a GPU machine (docs/performance.md, "On a GPU machine"): the `gpu` test tier,
bench.py for DGAD ResNet-18 <- WRN-34-10 and MobileNetV2 <- WRN-34-10 at batch 128 (plain fp32, ours fp32, ours
bf16 with channels_last, and --compile while the budget allows), and one real bf16 epoch of DGAD ResNet-18 <-
WRN-34-10 on the whole CIFAR-10 training set with a randomly initialised teacher, timed with and without the
per-epoch evaluation. Then the two costliest jobs of presets/cifar10-gpu.json (its PGD-AT teacher, its DGAD student)
at the preset's precision, from which summary.json's "preset_sizing" gives the preset's epochs (issue 24 sizes it
from measured throughput).

  python3 benchmarks/gpu_check.py DATA_DIR OUT_DIR [--tiny] [--budget SECONDS] [--stages NAME,...]

DATA_DIR holds cifar-10-batches-py/, or the packed cifar10-jpeg.tar.gz with its prepare.py (../shared/data's),
which is unpacked into a scratch folder first. Nothing is installed: pyautoattack (the tier's AutoAttack test)
comes from PYTHONPATH, e.g. wheels installed there with pip --no-index. Every stage runs in its own process group
with a timeout cut to what is left of --budget; a stage that fails or times out is recorded and the next one
runs; one that cannot fit is skipped and recorded. OUT_DIR receives at most six files, each under 16 MiB:
summary.json (every figure, rewritten after each stage), table.md (docs/performance.md's GPU table made from
it, with each figure's command), gpu_check.log (this script's own lines, the machine, the data), gpu_tier.log,
bench.log, epoch.log. The exit status is 0 when no stage failed.

--tiny runs the same stages on the CPU with small models and a few steps (tests/test_gpu_check.py runs it), so
that this script cannot rot between the leases of a GPU.
"""
import csv
import datetime
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a file, not with -m
    sys.path.insert(0, REPO)

from runtime.checkpoints import atomic_write_json, atomic_write_text  # noqa: E402
from runtime.errors import OneLineParser, UserError, exit_on_user_error  # noqa: E402

SUMMARY_FORMAT = "advkd-gpu-check/1"
LOG_LIMIT = 15 * 2 ** 20  # each file in OUT_DIR stays under the 16 MiB a lease brings back
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_IMAGES = 50_000


@dataclass(frozen=True)
class PresetJobs:
    """The costliest jobs of presets/cifar10-gpu.json, as bench.py runs them (tests check these against the preset):
    its teacher's training and its costliest student's (DGAD and AdaAD run the teacher at every attack step; DGAD
    is the dearer by a little)."""
    teacher: tuple  # (method, model)
    student: tuple  # (method, student, teacher model)
    precision: str


@dataclass(frozen=True)
class Scale:
    """What the stages run with: the H200's figures, or --tiny's on the CPU."""
    pairs: tuple        # (student, teacher) of the benchmarks; the first is also the epoch's
    bench_flags: tuple  # batch, steps, warm-up, attack steps
    epoch_flags: tuple
    budget: float       # seconds for the whole command
    cpu_only: bool
    preset: PresetJobs


FULL = Scale(pairs=(("resnet18", "wideresnet34_10"), ("mobilenetV2", "wideresnet34_10")),
             bench_flags=("--bs", "128", "--steps", "10", "--warmup", "3"),
             epoch_flags=("--bs", "128", "--epochs", "1"), budget=470, cpu_only=False,
             preset=PresetJobs(("PGDAT", "resnet18"), ("DGAD", "wideresnet16_2", "resnet18"), "fp32"))
TINY = Scale(pairs=(("wideresnet10_1", "wideresnet10_1"), ("wideresnet16_1", "wideresnet10_1")),
             bench_flags=("--bs", "4", "--steps", "2", "--warmup", "1", "--num_steps", "2", "--plain_workers", "0"),
             epoch_flags=("--bs", "16", "--epochs", "1", "--num_steps", "2", "--train_subset", "64",
                          "--test_subset", "32"),
             budget=600, cpu_only=True,
             preset=PresetJobs(("PGDAT", "wideresnet10_1"), ("DGAD", "wideresnet10_1", "wideresnet10_1"), "fp32"))
# bench.py's three configurations, and --compile last (minutes of compilation first).
BENCH_VARIANTS = {"fp32": (), "bf16_channels_last": ("--precision", "bf16", "--channels_last", "--no_plain"),
                  "bf16_channels_last_compile": ("--precision", "bf16", "--channels_last", "--no_plain", "--compile")}
PRESET_STAGES = ("bench_preset_teacher", "bench_preset_student")
# What the preset's sizing aims at (issue 24): about 4 minutes for the teacher, about 1 for each student.
PRESET_TARGET_SECONDS = {"teacher": 240, "student": 60}
# The per-epoch evaluation (PGD-10 on the 10,000 test images) as a share of a training epoch (50,000 images). The
# teacher's PGD-AT step costs per image about what the check does (11 forward-backward passes against 10 and 2
# forwards), on a fifth as many images: 0.2. A DGAD student's check runs the student alone (bench.py's FLOP
# counts: WRN-16-2 PGD-AT 4.9 GFLOP per image against DGAD's 29.7 with its ResNet-18 teacher): 0.2 x 4.9/29.7 =
# 0.033, rounded up to 0.05.
PRESET_EVAL_SHARE = {"teacher": 0.2, "student": 0.05}
LOGS = {"environment": "gpu_check.log", "data": "gpu_check.log", "gpu_tier": "gpu_tier.log", "epoch": "epoch.log"}


@dataclass
class Stage:
    name: str
    min_seconds: float  # skipped when less than this is left
    max_seconds: float
    needs: str = ""  # a stage that must have passed first
    log_name: str = ""  # default: LOGS's
    command: List[str] = field(default_factory=list)
    result: Dict = field(default_factory=dict)

    @property
    def log(self) -> str:
        return self.log_name or LOGS.get(self.name, "bench.log")


def parser(doc: str, full_budget: float, tiny_budget: float) -> OneLineParser:
    """The arguments every check of a lease takes (this one, benchmarks/precision_check.py)."""
    p = OneLineParser(description=doc.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("data_dir", help="holds cifar-10-batches-py/, or cifar10-jpeg.tar.gz with prepare.py")
    p.add_argument("out_dir", help="where summary.json and the logs go (created if missing)")
    p.add_argument("--tiny", action="store_true", help="small models and a few steps, on the CPU")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for everything (default {full_budget:g}; --tiny {tiny_budget:g})")
    p.add_argument("--stages", default=None, help="run only these stages, comma-separated (default: all, in order)")
    p.add_argument("--work_dir", default=None, help="scratch folder (default: a new one under the system's temp)")
    return p


def parse_args(argv=None):
    return parser(__doc__, FULL.budget, TINY.budget).parse_args(argv)


def stages_for(scale: Scale) -> List[Stage]:
    """In the order they run: the figures the issue asks for first (each fails fast if something is broken), then
    the test tier (whose long tests would otherwise starve them), the second pair, the preset's jobs, --compile
    last."""
    first, second = scale.pairs
    stages = [Stage("environment", 5, 60), Stage("data", 0, 180)]
    stages += [Stage(bench_name(first, variant), 20, 120) for variant in ("fp32", "bf16_channels_last")]
    stages += [Stage("epoch", 60, 240, needs="data"), Stage("gpu_tier", 60, 240)]
    stages += [Stage(bench_name(second, variant), 20, 120) for variant in ("fp32", "bf16_channels_last")]
    stages += [Stage(name, 20, 120) for name in PRESET_STAGES]
    stages.append(Stage(bench_name(first, "bf16_channels_last_compile"), 100, 240))
    return stages


def bench_name(pair, variant: str) -> str:
    return f"bench_{pair[0]}_{variant}"


class Check:
    """Runs its stages in order within the budget (a subclass is another check: its stages, summary and logs)."""
    NAME = "gpu_check"
    FORMAT = SUMMARY_FORMAT
    LOG_FILES = ("gpu_check.log", "gpu_tier.log", "bench.log", "epoch.log")  # the first: the check's own lines

    def __init__(self, cfg, scale, command: str):
        self.cfg, self.scale = cfg, scale
        self.out, self.work = os.path.abspath(cfg.out_dir), os.path.abspath(cfg.work_dir)
        self.budget = cfg.budget if cfg.budget is not None else scale.budget
        self.start = time.monotonic()
        self.data_dir: Optional[str] = None
        self.summary: Dict = {
            "format": self.FORMAT, "command": command,
            "tiny": cfg.tiny, "budget_seconds": self.budget, "started": now(), "environment": None, "stages": [],
            **self.figures()}
        for name in self.LOG_FILES:
            open(os.path.join(self.out, name), "w").close()

    def figures(self) -> Dict:
        """The summary's keys for what the stages measure, empty until they do."""
        return {"gpu_tier": None, "bench": {}, "epoch": None, "preset_sizing": None}

    @classmethod
    def stages_of(cls, scale) -> List[Stage]:
        return stages_for(scale)

    def perform(self, stage: Stage) -> None:
        pairs = {bench_name(pair, variant): (pair, variant) for pair in self.scale.pairs for variant in BENCH_VARIANTS}
        if stage.name in pairs:
            self.bench(stage, *pairs[stage.name])
        else:
            getattr(self, stage.name)(stage)

    def report(self) -> str:
        return format_summary(self.summary)

    # -- running ---------------------------------------------------------------------------------------------------

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def say(self, line: str) -> None:
        print(line, flush=True)
        with open(os.path.join(self.out, self.LOG_FILES[0]), "a") as f:
            f.write(line + "\n")

    def env(self) -> Dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.scale.cpu_only:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if self.data_dir is not None:
            env["ADVKD_CIFAR10_DIR"] = self.data_dir  # tests/conftest.py's cifar10_data_dir
        return env

    def run(self, stage: Stage, command: List[str]) -> bool:
        """`command` in its own process group, its output appended to the stage's log; killed, with its children,
        at the stage's timeout. Returns whether it exited with 0; the stage's result records how it ended."""
        timeout = min(stage.max_seconds, self.left())
        stage.command = command
        log_path = os.path.join(self.out, stage.log)
        started = time.monotonic()
        with open(log_path, "a") as log:
            log.write(f"\n===== {stage.name}: {shlex.join(command)} (timeout {timeout:.0f} s)\n")
            log.flush()
            process = subprocess.Popen(command, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own group: torchrun's and DataLoaders' children too
                process.wait()
                code = None
        keep_under_limit(log_path)
        seconds = round(time.monotonic() - started, 1)
        status = "passed" if code == 0 else ("timed out" if code is None else "failed")
        stage.result.update(status=status, seconds=seconds, returncode=code, command=shlex.join(command),
                            log=stage.log)
        if status != "passed":
            stage.result["tail"] = tail(log_path)
        return code == 0

    def record(self, stage: Stage, status: str, **details) -> None:
        stage.result.update(status=status, **details)

    def save(self) -> None:
        self.summary["elapsed_seconds"] = round(time.monotonic() - self.start, 1)
        atomic_write_json(os.path.join(self.out, "summary.json"), self.summary)
        for name, text in self.tables().items():
            atomic_write_text(os.path.join(self.out, name), text)

    def tables(self) -> Dict[str, str]:
        """Files made from the summary, rewritten with it (what goes into the docs as it is)."""
        return {"table.md": markdown_table(self.summary)}

    # -- the stages ------------------------------------------------------------------------------------------------

    def environment(self, stage: Stage) -> None:
        path = os.path.join(self.work, "environment.json")
        probe = "import sys; from benchmarks.gpu_check import probe_environment; probe_environment(sys.argv[1])"
        if self.run(stage, [sys.executable, "-c", probe, path]):
            with open(path) as f:
                self.summary["environment"] = json.load(f)
        if not self.scale.cpu_only:
            self.run_quiet(stage, ["nvidia-smi"])

    def run_quiet(self, stage: Stage, command: List[str]) -> None:
        """A command whose output only goes to the log (its failure is no stage's)."""
        with open(os.path.join(self.out, stage.log), "a") as log:
            try:
                subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=30)
            except (OSError, subprocess.SubprocessError) as exc:
                log.write(f"{shlex.join(command)}: {exc}\n")

    def data(self, stage: Stage) -> None:
        given = os.path.abspath(self.cfg.data_dir)
        if os.path.isfile(os.path.join(given, CIFAR10_FOLDER, "batches.meta")):
            self.data_dir = given
            self.record(stage, "passed", data_dir=given, unpacked=False)
            return
        prepare = os.path.join(given, "prepare.py")
        target = os.path.join(self.work, "data")
        if self.run(stage, [sys.executable, prepare, target, "--only", "cifar10"]):
            self.data_dir = target
            stage.result.update(data_dir=target, unpacked=True)

    def gpu_tier(self, stage: Stage) -> None:
        junit = os.path.join(self.work, "gpu_tier.xml")
        self.run(stage, [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
                         "--durations=15", f"--junitxml={junit}"])
        self.summary["gpu_tier"] = junit_outcomes(junit) if os.path.isfile(junit) else None

    def bench(self, stage: Stage, pair, variant: str) -> None:
        path = os.path.join(self.work, f"{stage.name}.json")
        command = [sys.executable, "bench.py", "--method", "DGAD", "--model", pair[0], "--teacher_model", pair[1],
                   *self.scale.bench_flags, *BENCH_VARIANTS[variant], "--json", path]
        if self.run(stage, command):
            with open(path) as f:
                self.summary["bench"][stage.name] = json.load(f)

    def bench_preset_teacher(self, stage: Stage) -> None:
        method, model = self.scale.preset.teacher
        self.bench_preset(stage, ["--method", method, "--model", model])

    def bench_preset_student(self, stage: Stage) -> None:
        method, student, teacher = self.scale.preset.student
        self.bench_preset(stage, ["--method", method, "--model", student, "--teacher_model", teacher])

    def bench_preset(self, stage: Stage, job: List[str]) -> None:
        path = os.path.join(self.work, f"{stage.name}.json")
        command = [sys.executable, "bench.py", *job, *self.scale.bench_flags, "--precision",
                   self.scale.preset.precision, "--no_plain", "--json", path]
        if self.run(stage, command):
            with open(path) as f:
                self.summary["bench"][stage.name] = json.load(f)
            self.summary["preset_sizing"] = preset_sizing(self.summary["bench"], self.scale.preset)

    def epoch(self, stage: Stage) -> None:
        student, teacher_model = self.scale.pairs[0]
        teacher = os.path.join(self.work, f"{teacher_model}_random.pth")
        if not os.path.isfile(teacher):
            save_random_teacher(teacher_model, teacher)
        save_dir = os.path.join(self.work, "epoch_run")
        command = [sys.executable, "main.py", "--method", "DGAD", "--model", student, "--teacher_model",
                   teacher_model, "--teacher_path", teacher, "--data_dir", self.data_dir, *self.scale.epoch_flags,
                   "--precision", "bf16", "--channels_last", "--save_dir", save_dir, "--overwrite"]
        if self.run(stage, command):
            self.summary["epoch"] = epoch_figures(save_dir)

    def skip(self, stage: Stage, why: str) -> None:
        self.record(stage, "skipped", reason=why)

    def run_all(self, only: Optional[List[str]]) -> bool:
        stages = self.stages_of(self.scale)
        self.say(f"{self.NAME}: {len(stages)} stages, budget {self.budget:.0f} s, out {self.out}, work {self.work}")
        done = {}
        for stage in stages:
            stage.result = {"name": stage.name}
            self.summary["stages"].append(stage.result)
            if only is not None and stage.name not in only and stage.name != "data":
                self.skip(stage, "not in --stages")
            elif stage.needs and done.get(stage.needs) != "passed":
                self.skip(stage, "no CIFAR-10: the data stage failed" if stage.needs == "data" else
                          f"{stage.needs} did not pass")
            elif self.scale.cpu_only and "compile" in stage.name:
                self.skip(stage, "--tiny: compilation takes minutes and a compiler toolchain")
            elif self.left() < stage.min_seconds:
                self.skip(stage, f"{self.left():.0f} s of the budget left, it needs {stage.min_seconds:.0f} s")
            else:
                self.say(f"{stage.name}: running ({self.left():.0f} s of the budget left)")
                try:
                    self.perform(stage)
                except (OSError, ValueError, KeyError, ElementTree.ParseError, UserError) as exc:
                    stage.result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            self.say(f"{stage.name}: {stage.result['status']}" + (f" in {stage.result['seconds']} s"
                                                                  if "seconds" in stage.result else "")
                     + (f" ({stage.result['reason']})" if "reason" in stage.result else ""))
            done[stage.name] = stage.result["status"]
            self.save()
        self.summary["finished"] = now()
        self.save()
        print(self.report(), flush=True)
        return all(s["status"] in ("passed", "skipped") for s in self.summary["stages"])


# -- reading results ---------------------------------------------------------------------------------------------------

def junit_outcomes(path: str) -> Dict:
    """pytest's JUnit XML as counts, each test's outcome, and the first line of each failure."""
    outcomes, failures = {}, {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                if tag != "skipped":
                    failures[test] = (found.get("message") or "").strip().splitlines()[:1]
                break
        outcomes[test] = outcome
    counts = {kind: sum(1 for o in outcomes.values() if o == kind) for kind in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": outcomes, "failures": {k: (v[0] if v else "") for k, v in failures.items()}}


def preset_sizing(bench: Dict, preset: PresetJobs) -> Dict:
    """presets/cifar10-gpu.json's epochs from the measured images/s of its teacher's and its costliest student's
    training step: the most whole epochs, at least 1, whose training and per-epoch evaluation fit the target."""
    sizing = {"preset": "cifar10-gpu", "train_images": TRAIN_IMAGES, "target_seconds": PRESET_TARGET_SECONDS,
              "evaluation_share": PRESET_EVAL_SHARE}
    jobs = {"teacher": (PRESET_STAGES[0], preset.teacher), "student": (PRESET_STAGES[1], preset.student)}
    for role, (stage, job) in jobs.items():
        if stage not in bench:
            continue
        images_per_second = bench[stage]["paths"]["ours"]["images_per_second"]
        training = TRAIN_IMAGES / images_per_second
        with_evaluation = training * (1 + PRESET_EVAL_SHARE[role])
        sizing[role] = {"job": list(job), "precision": preset.precision, "images_per_second": images_per_second,
                        "seconds_per_training_epoch": round(training, 1),
                        "seconds_per_epoch_with_evaluation": round(with_evaluation, 1),
                        "epochs": max(1, math.floor(PRESET_TARGET_SECONDS[role] / with_evaluation))}
    return sizing


def epoch_figures(save_dir: str) -> Dict:
    """Seconds per epoch with the per-epoch evaluation (results.csv's epoch_seconds) and without it (the training
    images over their images/s), from the run's own results.csv."""
    with open(os.path.join(save_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(save_dir, "config.json")) as f:
        config = json.load(f)
    row = rows[-1]
    with_eval, images_per_second = float(row["epoch_seconds"]), float(row["images_per_second"])
    training = config["train_images"] / images_per_second
    return {"device": config.get("device"), "train_images": config["train_images"],
            "test_images": config["test_images"], "precision": config.get("precision"),
            "channels_last": config.get("channels_last"), "seconds_per_epoch_with_evaluation": with_eval,
            "seconds_per_epoch_training_only": round(training, 3), "evaluation_seconds": round(with_eval - training, 3),
            "images_per_second": images_per_second, "results": rows}


def probe_environment(path: str) -> None:
    """The machine as the stages see it, written to `path` and printed (run in a process of its own)."""
    import importlib.metadata
    import platform
    import torch

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None
    cuda = torch.cuda.is_available()
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cuda_available": cuda,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "capability": list(torch.cuda.get_device_capability()) if cuda else None,
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1) if cuda else None,
            "bf16": torch.cuda.is_bf16_supported() if cuda else None,
            "packages": {name: version(name) for name in ("numpy", "pillow", "tqdm", "pyautoattack", "submitit",
                                                          "pytest")}}
    with open(path, "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info), flush=True)


def save_random_teacher(model: str, path: str) -> None:
    """A randomly initialised teacher file, as main.py loads one: its cost does not depend on its weights."""
    import torch
    from models import build_model
    from runtime.checkpoints import atomic_save
    torch.manual_seed(0)
    atomic_save({"net": build_model(model, 10).state_dict()}, path)


def keep_under_limit(path: str) -> None:
    """Keep a log's last LOG_LIMIT bytes (what a lease brings back is capped per file)."""
    size = os.path.getsize(path)
    if size > LOG_LIMIT:
        with open(path, "rb") as f:
            f.seek(size - LOG_LIMIT)
            kept = f.read()
        with open(path, "wb") as f:
            f.write(b"[earlier output cut to stay under 16 MiB]\n" + kept)


def tail(path: str, lines: int = 15) -> List[str]:
    with open(path, errors="replace") as f:
        return [line.rstrip("\n") for line in f.readlines()[-lines:]]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def format_summary(summary: Dict) -> str:
    """The short table the lease's reply ends with: each stage, each benchmark path, the epoch."""
    lines = ["", f"{'stage':<48} {'status':<10} seconds"]
    lines += [f"{s['name']:<48} {s['status']:<10} {s.get('seconds', '')}" for s in summary["stages"]]
    tier = summary.get("gpu_tier")
    if tier:
        lines.append("gpu tier: " + ", ".join(f"{n} {kind}" for kind, n in tier["counts"].items()))
        lines += [f"  {test}: {message}" for test, message in tier["failures"].items()]
    if summary["bench"]:
        lines.append(f"{'benchmark':<48} {'path':<6} {'img/s':>9} {'ms/step':>8} {'%peak':>6} {'peak TFLOP/s':>13}")
    for name, report in summary["bench"].items():
        for path, r in report["paths"].items():
            peak = report["peak_tflops"].get(r["precision"], float("nan"))
            lines.append(f"{name:<48} {path:<6} {r['images_per_second']:>9.1f} {r['ms_per_step']:>8.1f} "
                         f"{100 * r['fraction_of_peak']:>5.1f}% {peak:>13.4g}")
    epoch = summary.get("epoch")
    if epoch:
        lines.append(f"epoch ({epoch['train_images']} images, {epoch['precision']}): "
                     f"{epoch['seconds_per_epoch_with_evaluation']:.1f} s with the evaluation, "
                     f"{epoch['seconds_per_epoch_training_only']:.1f} s training only, "
                     f"{epoch['images_per_second']:.0f} img/s")
    return "\n".join(lines + sizing_lines(summary.get("preset_sizing")))


def sizing_lines(sizing: Optional[Dict]) -> List[str]:
    lines = []
    for role in ("teacher", "student"):
        if sizing and role in sizing:
            r = sizing[role]
            job = f"{r['job'][0]} {r['job'][1]}" + (f" <- {r['job'][2]}" if len(r["job"]) > 2 else "")
            lines.append(f"cifar10-gpu {role} ({job}, {r['precision']}): {r['seconds_per_training_epoch']:.1f} s per "
                         f"training epoch, about {r['seconds_per_epoch_with_evaluation']:.1f} s with the "
                         f"evaluation: epochs {r['epochs']} for a target of {sizing['target_seconds'][role]} s")
    return lines


def shown_command(command: str) -> str:
    """A stage's command as a reader types it: python3, without the scratch files it writes its figures to."""
    words = shlex.split(command)
    words[0] = "python3"
    if "--json" in words:
        del words[words.index("--json"):words.index("--json") + 2]
    return shlex.join(words)


def markdown_table(summary: Dict) -> str:
    """docs/performance.md's GPU table from the summary: each benchmark's paths with the phases, the arithmetic and
    its fraction of the bf16 matrix peak measured on the machine (the issue's MFU, for the fp32 rows too), the
    epoch, the preset's sizing, and the commands that printed them."""
    env = summary.get("environment") or {}
    device = f"{env.get('device', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda_runtime', '-')}"
    peaks = [r["peak_tflops"]["bf16"] for r in summary["bench"].values() if "bf16" in r.get("peak_tflops", {})]
    peak = max(peaks) if peaks else None
    lines = [f"Measured by `{summary['command']}` on {summary.get('started', '?')}: {device}; bf16 matrix peak "
             + (f"{peak:.4g} TFLOP/s" if peak else "not measured") + ".", "",
             "| configuration | path | img/s | ms/step (data / attack / teacher / update) | GFLOP/img | TFLOP/s "
             "| of the bf16 peak | ours/plain fp32 |", "|---|---|---|---|---|---|---|---|"]

    def job(cfg):
        return cfg["method"], cfg["model"], cfg.get("teacher_model"), cfg["bs"], cfg["num_steps"]
    plain = {job(r["config"]): r["paths"]["plain"]["images_per_second"] for r in summary["bench"].values()
             if "plain" in r["paths"]}
    ordered = [s["name"] for s in summary["stages"] if s["name"] in summary["bench"]]  # the JSON's keys are sorted
    for report in (summary["bench"][name] for name in ordered):
        cfg = report["config"]
        configuration = (f"{cfg['method']}, {cfg['model']}" + (f" ← {cfg['teacher_model']}" if cfg.get("teacher_model")
                                                                else "") + f", bs {cfg['bs']}, K = {cfg['num_steps']}"
                         + "".join(f", `--{flag}`" for flag in ("channels_last", "compile") if cfg.get(flag)))
        paths = report["paths"]
        for path, r in paths.items():
            phases = r["ms_per_step_by_phase"]
            ratio = (f"{r['images_per_second'] / plain[job(cfg)]:.2f}×" if path == "ours" and job(cfg) in plain
                     else "")
            fraction = f"{100 * r['achieved_tflops'] / peak:.1f}%" if peak else "–"
            lines.append(f"| {configuration if path == next(iter(paths)) else ''} | {path} {r['precision']} "
                         f"| {r['images_per_second']:.0f} | {r['ms_per_step']:.1f} ("
                         + " / ".join(f"{phases.get(k, 0.0):.1f}" for k in ("data", "attack", "teacher", "update"))
                         + f") | {r['flops_per_image'] / 1e9:.3g} | {r['achieved_tflops']:.3g} | {fraction} | {ratio} |")
    epoch = summary.get("epoch")
    if epoch:
        lines += ["", f"One epoch of DGAD on {epoch['train_images']} training images ({epoch['precision']}"
                      + (", channels_last" if epoch.get("channels_last") else "") + f", {epoch.get('device')}): "
                      f"{epoch['seconds_per_epoch_with_evaluation']:.1f} s with the per-epoch evaluation of "
                      f"{epoch['test_images']} test images, {epoch['seconds_per_epoch_training_only']:.1f} s "
                      f"training only ({epoch['images_per_second']:.0f} img/s)."]
    sizing = sizing_lines(summary.get("preset_sizing"))
    if sizing:
        lines += ["", *sizing]
    commands = [s for s in summary["stages"] if s.get("status") == "passed" and s.get("command")
                and (s["name"].startswith("bench") or s["name"] == "epoch")]
    if commands:
        lines += ["", "Commands (from the repository's root; the epoch's teacher is a random one):", ""]
        lines += [f"- {s['name']}: `{shown_command(s['command'])}`" for s in commands]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    cfg = parse_args(argv)
    return start(Check, cfg, TINY if cfg.tiny else FULL, "benchmarks/gpu_check.py", argv)


def start(check, cfg, scale, script: str, argv) -> int:
    """`check` (Check or a subclass) on `scale`, once the arguments are checked: the exit status."""
    with exit_on_user_error():
        if not os.path.isdir(cfg.data_dir):
            raise UserError(f"DATA_DIR {cfg.data_dir} is not a folder: give the one holding {CIFAR10_FOLDER}/, or "
                            f"cifar10-jpeg.tar.gz with prepare.py")
        given = os.path.abspath(cfg.data_dir)
        if not os.path.isfile(os.path.join(given, CIFAR10_FOLDER, "batches.meta")) and not all(
                os.path.isfile(os.path.join(given, name)) for name in ("prepare.py", "cifar10-jpeg.tar.gz")):
            raise UserError(f"DATA_DIR {cfg.data_dir} holds neither {CIFAR10_FOLDER}/ nor cifar10-jpeg.tar.gz with "
                            f"prepare.py (copy them from ../shared/data)")
        if cfg.budget is not None and cfg.budget <= 0:
            raise UserError(f"--budget must be > 0 seconds, got {cfg.budget:g}")
        only = None if cfg.stages is None else [name.strip() for name in cfg.stages.split(",") if name.strip()]
        known = [stage.name for stage in check.stages_of(scale)]
        unknown = [name for name in only or () if name not in known]
        if unknown:
            raise UserError(f"--stages {','.join(unknown)}: no such stage; choose from {','.join(known)}")
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create OUT_DIR {cfg.out_dir}: {exc.strerror or exc}") from None
        if not os.access(cfg.out_dir, os.W_OK):
            raise UserError(f"OUT_DIR {cfg.out_dir} is not writable")
        cfg.work_dir = cfg.work_dir or tempfile.mkdtemp(prefix=f"{check.NAME}.")
        os.makedirs(cfg.work_dir, exist_ok=True)
        command = shlex.join(["python3", script, *(sys.argv[1:] if argv is None else argv)])
        return 0 if check(cfg, scale, command).run_all(only) else 1


if __name__ == "__main__":
    sys.exit(main())
