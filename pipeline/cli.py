"""reproduce.py: a preset expanded into its runs, evaluations and report, launched on this machine or
on SLURM. Idempotent: what is done is skipped, what was interrupted resumes."""
import argparse
import math
import os
import sys
from typing import Optional, Sequence

from data import DEFAULT_DATA_DIR
from runtime.errors import OneLineParser, UserError, exit_on_user_error
from runtime.help import HelpFormatter

from .launch import Launcher, execute, still_running, summary
from .plan import Plan, training_switches
from .presets import REPO, load_preset, preset_names


def local_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers(gpus: int) -> int:
    return gpus if gpus else max(1, min(4, os.cpu_count() or 1))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--preset", required=True,
                   help=f"a preset of presets/ ({', '.join(preset_names())}) or a preset file's path")
    p.add_argument("--root", default=None,
                   help="where the runs, their evaluations and the report go (default checkpoints/reproduce/<preset>)")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="the datasets' folder, as main.py's --data_dir")
    p.add_argument("--dry_run", action="store_true", help="print each job's commands, folder and state; run nothing")
    p.add_argument("--launcher", default="local", choices=("local", "slurm"),
                   help="local: submitit's local executor, jobs as processes on this machine; slurm: one SLURM "
                        "job array per stage through submitit, requeued on pre-emption")
    p.add_argument("--workers", type=int, default=0,
                   help="local: jobs at once, each with OMP_NUM_THREADS = CPU cores / workers and, on a GPU machine, "
                        "the least busy GPU (CUDA_VISIBLE_DEVICES); 0 = one per GPU, or on a machine without one, "
                        "one per CPU core up to 4")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks of the jobs' states")
    g = p.add_argument_group("SLURM (with --launcher slurm)")
    g.add_argument("--partition", default=None, help="sbatch --partition")
    g.add_argument("--account", default=None, help="sbatch --account")
    g.add_argument("--qos", default=None, help="sbatch --qos")
    g.add_argument("--constraint", default=None, help="sbatch --constraint (e.g. a GPU type)")
    p.add_argument("--gpus", type=int, default=1,
                   help="GPUs per training run (both launchers): more than 1 runs it under torchrun, one process "
                        "per GPU on one node (docs/distributed.md); evaluations take one")
    g.add_argument("--cpus", type=int, default=8, help="CPU cores per job")
    g.add_argument("--time", type=int, default=24 * 60,
                   help="time limit per job, in minutes; a run that reaches it saves last.pth and is requeued")
    g.add_argument("--array_parallelism", type=int, default=64, help="jobs of one array running at once")
    return p


def check_numbers(args: argparse.Namespace) -> None:
    """The launcher's numbers: each in its range, whichever launcher runs (a typo is one line, not a hang)."""
    if not (math.isfinite(args.poll) and args.poll > 0):
        raise UserError(f"--poll must be a positive number of seconds, got {args.poll:g}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 1 (or 0 for the default), got {args.workers}")
    for flag in ("gpus", "cpus", "time", "array_parallelism"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(args, flag)}")


def checked_root(root: str) -> str:
    """--root as an absolute folder: a folder, or a path whose nearest existing part is a writable folder."""
    if not root.strip():
        raise UserError("--root is empty; give the folder the runs go to, or leave it out for the default")
    root = os.path.abspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"--root {root} is a file, not a folder: choose another --root")
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--root {root} cannot be made: {existing} is not a writable folder; choose another --root")
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    with exit_on_user_error():
        try:
            args = build_parser().parse_args(argv)
            check_numbers(args)
            preset = load_preset(args.preset, training_switches())
            gpus = local_gpus() if args.launcher == "local" and not args.dry_run else 0
            if gpus and args.gpus > gpus:
                raise UserError(f"--gpus {args.gpus} per training run, but this machine has {gpus} GPUs")
            args.workers = args.workers or default_workers(gpus // args.gpus if gpus else 0)
            root = checked_root(args.root if args.root is not None else os.path.join("checkpoints", "reproduce",
                                                                                    preset.name))
            # The jobs run in the repository's folder: a relative --data_dir means the caller's folder.
            plan = Plan(preset, root, os.path.abspath(args.data_dir), args.gpus)
            print(f"preset {preset.name}: {preset.description}", flush=True)
            for warning in dict.fromkeys(plan.warnings):
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            teacher = preset.teacher.path if preset.teacher else None
            missing = teacher is not None and not os.path.isfile(os.path.join(REPO, teacher))
            jobs_folder = os.path.join(plan.root, "jobs")
            if args.dry_run:
                print(plan.describe())
                if missing:
                    print(f"note: the teacher checkpoint {teacher} is not there yet (see checkpoints/README.md)")
                left = still_running(jobs_folder)
                if left:
                    print(f"note: {left}")
                return 0
            if missing:
                raise UserError(f"the preset's teacher checkpoint {teacher} is missing: put a robust "
                                f"{preset.teacher.model} there (published teachers: checkpoints/README.md)")
            if not os.path.isdir(args.data_dir):
                raise UserError(f"--data_dir {args.data_dir} is not a folder; see docs/training.md, Data")
            left = still_running(jobs_folder)
            if left:
                raise UserError(left)
            slurm = {k: getattr(args, k) for k in ("partition", "account", "qos", "constraint", "cpus", "time",
                                                   "array_parallelism")}
            launcher = Launcher(args.launcher, jobs_folder, REPO, args.workers, slurm, args.poll, gpus)
            states = execute(plan, launcher)
            print(summary(plan, states, launcher.reasons), flush=True)
            if any(state in ("failed", "blocked") for state in states.values()):
                print("some jobs did not finish: fix what their lines above say, then run the same command again "
                      "(what is done is skipped)", file=sys.stderr)
                return 1
        except KeyboardInterrupt as stop:
            print(f"interrupted: {stop.args[0] if stop.args else 'nothing was running'}; run the same command "
                  f"again to continue", file=sys.stderr)
            return 130
    return 0
