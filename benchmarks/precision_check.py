"""bf16 against fp32 on a GPU (issue 21, step 4): PGD-AT ResNet-18 trained on the whole CIFAR-10 training set for
the same few epochs in fp32 and in bf16 (same seed, same recipe: the cifar10-gpu preset's teacher), then each last
epoch's weights evaluated with PGD-20 at 8/255 and clean on the first 2,000 test images.

  python3 benchmarks/precision_check.py DATA_DIR OUT_DIR [--epochs N] [--tiny] [--budget SECONDS] [--stages ...]

Sized to follow benchmarks/gpu_check.py in the same lease (about 4 minutes by default): --epochs from its
preset_sizing (docs/performance.md). DATA_DIR as gpu_check's (a packed copy is unpacked first). OUT_DIR receives
summary.json (both runs' figures and the comparison: PGD-20 of bf16 minus fp32, with its standard error, and
whether it is within 1 point), precision_check.log (this script's lines and the machine), train.log and eval.log.
The exit status is 0 when no stage failed. --tiny: small models and a few steps on the CPU (tests run it).
"""
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a file, not with -m
    sys.path.insert(0, REPO)

from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu_check import Stage  # noqa: E402
from evaluation.report import check_report, load_json  # noqa: E402

PRECISIONS = ("fp32", "bf16")
TOLERANCE = 1.0  # points of PGD-20 accuracy within which bf16 counts as safe (issue 21)
EPS_255 = 8


@dataclass(frozen=True)
class Scale:
    model: str
    train_flags: tuple  # besides the method, the model, the precision and the epochs
    n_ex: int  # test images of the comparison (and of the per-epoch check, which selects nothing here)
    epochs: int
    budget: float
    cpu_only: bool


# cifar10-gpu's teacher: PGD-AT ResNet-18 under the dgad-paper recipe (its milestones scale to --epochs), seed 0.
FULL = Scale("resnet18", ("--recipe", "dgad-paper", "--seed", "0", "--test_subset", "2000"), 2000, 3, 230, False)
TINY = Scale("wideresnet10_1", ("--recipe", "dgad-paper", "--seed", "0", "--bs", "16", "--num_steps", "2",
                                "--train_subset", "64", "--test_subset", "32"), 32, 1, 600, True)


class PrecisionCheck(gpu_check.Check):
    NAME = "precision_check"
    FORMAT = "advkd-precision-check/1"
    LOG_FILES = ("precision_check.log", "train.log", "eval.log")

    def figures(self) -> Dict:
        return {"epochs": self.cfg.epochs, "model": self.scale.model, "runs": {}, "comparison": None}

    @classmethod
    def stages_of(cls, scale) -> List[Stage]:
        own = cls.LOG_FILES[0]
        stages = [Stage("environment", 5, 60, log_name=own), Stage("data", 0, 180, log_name=own)]
        stages += [Stage(f"train_{p}", 30, 600, needs="data", log_name="train.log") for p in PRECISIONS]
        stages += [Stage(f"eval_{p}", 10, 120, needs=f"train_{p}", log_name="eval.log") for p in PRECISIONS]
        return stages

    def perform(self, stage: Stage) -> None:
        kind, _, precision = stage.name.partition("_")
        if kind == "train":
            self.train(stage, precision)
        elif kind == "eval":
            self.evaluate(stage, precision)
        else:  # environment, data: gpu_check's
            getattr(self, stage.name)(stage)

    def run_folder(self, precision: str) -> str:
        return os.path.join(self.work, f"pgdat_{precision}")

    def train(self, stage: Stage, precision: str) -> None:
        command = [sys.executable, "main.py", "--method", "PGDAT", "--model", self.scale.model, "--data_dir",
                   self.data_dir, "--epochs", str(self.cfg.epochs), "--precision", precision, *self.scale.train_flags,
                   "--save_dir", self.run_folder(precision), "--overwrite"]
        if self.run(stage, command):
            figures = gpu_check.epoch_figures(self.run_folder(precision))
            self.summary["runs"].setdefault(precision, {}).update(
                {key: figures[key] for key in ("device", "train_images", "precision")},
                seconds_per_epoch=[float(row["epoch_seconds"]) for row in figures["results"]],
                last_epoch=figures["results"][-1])

    def evaluate(self, stage: Stage, precision: str) -> None:
        out = os.path.join(self.work, f"pgdat_{precision}.eval.json")
        command = [sys.executable, "main_eval.py", "--model", self.scale.model, "--model_path",
                   os.path.join(self.run_folder(precision), "last.pth"), "--protocol", "standard", "--attacks",
                   "natural", "pgd20", "--eps", str(EPS_255), "--n_ex", str(self.scale.n_ex), "--data_dir",
                   self.data_dir, "--out", out, "--overwrite"]
        if self.run(stage, command):
            report = check_report(load_json(out))
            results = report["radii"][str(EPS_255)]["results"]
            self.summary["runs"].setdefault(precision, {}).update(
                checkpoint=report["checkpoint"], n_examples=report["n_examples"],
                clean=results["natural"]["accuracy"], pgd20=results["pgd20"]["accuracy"])
            self.summary["comparison"] = compare(self.summary["runs"])

    def report(self) -> str:
        return format_summary(self.summary)

    def tables(self) -> Dict[str, str]:
        return {}


def standard_error(accuracy: float, n: int) -> float:
    """Of an accuracy in percent measured on n images (binomial)."""
    p = accuracy / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def compare(runs: Dict) -> Optional[Dict]:
    """bf16 minus fp32, once both are evaluated; the standard error of the difference of two independent runs'
    accuracies on the same n images is at most sqrt(se_fp32^2 + se_bf16^2) (the same images make it smaller)."""
    if not all("pgd20" in runs.get(p, {}) for p in PRECISIONS):
        return None
    fp32, bf16 = runs["fp32"], runs["bf16"]
    n = fp32["n_examples"]
    difference = round(bf16["pgd20"] - fp32["pgd20"], 2)
    error = round(math.hypot(standard_error(fp32["pgd20"], n), standard_error(bf16["pgd20"], n)), 2)
    within = abs(difference) <= TOLERANCE
    verdict = (f"bf16 keeps PGD-20 within {TOLERANCE:g} point of fp32 ({difference:+.2f})" if within else
               f"bf16's PGD-20 is {difference:+.2f} points from fp32's, beyond {TOLERANCE:g}")
    # One seed each: a gap under two standard errors is not told apart from the runs' own noise.
    resolved = abs(difference) > 2 * error
    return {"pgd20_difference": difference, "clean_difference": round(bf16["clean"] - fp32["clean"], 2),
            "standard_error": error, "n_examples": n, "tolerance": TOLERANCE, "within_tolerance": within,
            "beyond_two_standard_errors": resolved, "verdict": verdict}


def format_summary(summary: Dict) -> str:
    lines = ["", f"{'stage':<20} {'status':<10} seconds"]
    lines += [f"{s['name']:<20} {s['status']:<10} {s.get('seconds', '')}" for s in summary["stages"]]
    for precision, run in summary["runs"].items():
        if "pgd20" in run:
            epochs = run.get("seconds_per_epoch", [])
            lines.append(f"{summary['model']} PGD-AT {precision}, epochs {len(epochs)} "
                         f"({', '.join(f'{s:.1f}' for s in epochs)} s each): clean {run['clean']:.2f}, "
                         f"PGD-20 {run['pgd20']:.2f} on {run['n_examples']} test images")
    comparison = summary.get("comparison")
    if comparison:
        lines.append(f"{comparison['verdict']}; standard error of the difference at most "
                     f"{comparison['standard_error']:.2f} ("
                     + ("beyond" if comparison["beyond_two_standard_errors"] else "within") + " two of them)")
    return "\n".join(lines)


def parse_args(argv=None):
    p = gpu_check.parser(__doc__, FULL.budget, TINY.budget)
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs of each run (default {FULL.epochs}; --tiny {TINY.epochs}): from gpu_check's "
                        f"preset_sizing, what fits the lease")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    return args


def main(argv=None) -> int:
    cfg = parse_args(argv)
    scale = TINY if cfg.tiny else FULL
    cfg.epochs = cfg.epochs or scale.epochs
    return gpu_check.start(PrecisionCheck, cfg, scale, "benchmarks/precision_check.py", argv)


if __name__ == "__main__":
    sys.exit(main())
