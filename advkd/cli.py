"""Command-line arguments of the training entry scripts, and their resolution into a config."""
import argparse
import os
import sys
from typing import Dict, Optional, Sequence

from .data import DATASETS
from .engine import SCHEDULES, RunInterrupted, train
from .errors import UserError, exit_on_user_error, warn
from .methods import all_options, get_method, method_names
from .models import is_known_model, model_names
from .precision import PRECISIONS

DEFAULT_LR = {"mobilenetV2": 0.05}  # everything else: 0.1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """'(default: X)' after each help, except where the parsed default is None: those defaults are
    resolved later (from other flags, or per method) and the help says what they are."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def readers_and_defaults(name: str, users) -> str:
    """'[ARD: 30.0, IAD: 1.0]': the methods that read option `name`, each with its own default."""
    parts = []
    for user in users:
        option = get_method(user).options[name]
        parts.append(user if option.flag or callable(option.default) else f"{user}: {option.default}")
    return f"[{', '.join(parts)}]"


def build_parser(prog_defaults: Dict, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--dataset", default=prog_defaults["dataset"], choices=prog_defaults["datasets"])
    g.add_argument("--model", default="resnet18", help=f"student: {', '.join(model_names())}")
    g.add_argument("--method", default="DGAD",
                   help=f"one of: {', '.join(method_names())} (VarGap is an approximate re-implementation "
                        f"from its paper's abstract; see README)")
    g.add_argument("--teacher_model", default=prog_defaults["teacher_model"], help="teacher architecture")
    g.add_argument("--teacher_path", default=None,
                   help="teacher checkpoint (default checkpoints/teachers/<dataset>/<teacher_model>.pth)")
    g.add_argument("--data_dir", default="./data", help="folder holding the dataset's standard layout")
    g.add_argument("--download", action="store_true", help="download CIFAR when missing (needs internet)")
    g.add_argument("--save_dir", default=None,
                   help="where the run's files go (default checkpoints/<dataset>/<method>/<name from the flags>)")
    g.add_argument("--resume", action="store_true", help="continue from last.pth in --save_dir")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --save_dir")
    g.add_argument("--stop_after", type=int, default=0,
                   help="stop cleanly after this many epochs of this invocation (fits a scheduler's time slot; "
                        "continue with --resume); 0 = run to --epochs")
    g.add_argument("--train_subset", type=int, default=0, help="use the first N training images (0 = all)")
    g.add_argument("--test_subset", type=int, default=0, help="use the first N test images (0 = all)")
    g.add_argument("--seed", type=int, default=42, help="applied before models are built")
    g.add_argument("--gpu_id", type=int, default=0, help="use cuda:<id>; the CPU when CUDA is unavailable")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms: a resumed run matches an unbroken one bitwise (slower on CUDA)")
    g.add_argument("--nan_policy", default="stop", choices=("stop", "skip"),
                   help="on a non-finite loss: stop the run, or skip that batch's update (one host sync per step)")

    g = p.add_argument_group("attack (epsilon and step size in 1/255 pixel units)")
    g.add_argument("--epsilon", type=float, default=8)
    g.add_argument("--num_steps", type=int, default=10)
    g.add_argument("--step_size", type=float, default=2)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--bs", type=int, default=128, help="batch size B")
    g.add_argument("--lr_max", type=float, default=None, help="default 0.1; 0.05 for mobilenetV2")
    g.add_argument("--lr_schedule", default="piecewise", choices=SCHEDULES)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--eval_bs", type=int, default=1024,
                   help="batch size of the per-epoch test evaluation; halved on a CUDA out-of-memory error")

    g = p.add_argument_group("speed (see bench.py)")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16: the networks run under bf16 autocast in the attack and the update (images, "
                        "perturbations and losses stay fp32); fp32 stays the default until bf16 is shown to "
                        "keep robustness")
    g.add_argument("--channels_last", action="store_true", help="NHWC weights and batches (faster convolutions on GPUs)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (minutes of compilation first; opt-in)")

    g = p.add_argument_group("method options (each is rejected for a method that does not read it)")
    for name, (option, users) in sorted(all_options().items()):
        help_text = f"{option.help} {readers_and_defaults(name, users)}"
        if option.flag:
            g.add_argument(f"--{name}", action="store_true", default=None, help=help_text)
        else:
            g.add_argument(f"--{name}", type=option.type, choices=option.choices, default=None, help=help_text)
    return p


def default_save_dir(cfg, method) -> str:
    parts = [cfg.model]
    if method.needs_teacher:
        parts.append(f"T-{cfg.teacher_model}")
    parts += [f"eps{cfg.epsilon:g}", f"k{cfg.num_steps}", f"a{cfg.step_size:g}", f"bs{cfg.bs}",
              f"lr{cfg.lr_max:g}", cfg.lr_schedule, f"e{cfg.epochs}"]
    for name, option in method.options.items():
        value = getattr(cfg, name)
        if value != option.resolve_default(cfg):
            parts.append(name if value is True else f"{name}{value}")
    if cfg.train_subset:
        parts.append(f"sub{cfg.train_subset}")
    if cfg.precision != "fp32":
        parts.append(cfg.precision)
    parts.append(f"seed{cfg.seed}")
    return os.path.join("checkpoints", cfg.dataset, cfg.method, "_".join(parts))


def resolve(cfg: argparse.Namespace) -> argparse.Namespace:
    """Validate the arguments and fill the defaults that depend on other arguments."""
    try:
        method = get_method(cfg.method)
    except KeyError:
        raise UserError(f"unknown --method {cfg.method!r}; choose from {', '.join(method_names())}") from None
    for flag in ("model", "teacher_model"):
        if not is_known_model(getattr(cfg, flag)):
            raise UserError(f"unknown --{flag} {getattr(cfg, flag)!r}; choose from {', '.join(model_names())}")
    method = method.for_config(cfg)  # VarGap also reads the options of its --vg_base
    for name, (option, users) in all_options().items():
        if name in method.options:  # defaults are per method: ARD and IAD share --temp, not its default
            if getattr(cfg, name) is None:
                setattr(cfg, name, method.options[name].resolve_default(cfg))
        elif getattr(cfg, name) is not None:
            raise UserError(f"--{name} is not used by --method {cfg.method} (it is an option of "
                            f"{', '.join(users)}); remove it")
    if cfg.epsilon < 0 or cfg.step_size < 0:
        raise UserError(f"--epsilon and --step_size must be >= 0 (got {cfg.epsilon:g}, {cfg.step_size:g})")
    if method.attack is not None and cfg.num_steps < 1:
        raise UserError(f"--num_steps must be >= 1 for --method {cfg.method}, which trains on an attack")
    if cfg.step_size > cfg.epsilon:
        warn(f"--step_size {cfg.step_size:g} is larger than --epsilon {cfg.epsilon:g}")
    for flag in ("bs", "epochs", "eval_bs"):
        if getattr(cfg, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(cfg, flag)}")
    for flag in ("train_subset", "test_subset", "stop_after"):
        if getattr(cfg, flag) < 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(cfg, flag)}")
    if cfg.lr_max is None:
        cfg.lr_max = DEFAULT_LR.get(cfg.model, 0.1)
    if method.needs_teacher and cfg.teacher_path is None:
        cfg.teacher_path = os.path.join("checkpoints", "teachers", cfg.dataset, f"{cfg.teacher_model}.pth")
    if not method.needs_teacher:
        cfg.teacher_model = cfg.teacher_path = None
    if cfg.save_dir is None:
        cfg.save_dir = default_save_dir(cfg, method)
    return cfg


def run(prog_defaults: Dict, description: str, argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(prog_defaults, description)
    cfg = parser.parse_args(argv)
    with exit_on_user_error():
        try:
            train(resolve(cfg))
        except RunInterrupted as stop:
            resume = " ".join([os.path.basename(sys.argv[0]) or "main.py"] +
                              [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"])
            print(f"{stop}. Resume with: python {resume} --resume", file=sys.stderr, flush=True)
            return stop.exit_code
        except KeyboardInterrupt:
            print("interrupted before last.pth was saved; resume continues from the last completed epoch",
                  file=sys.stderr, flush=True)
            return 130
    return 0
