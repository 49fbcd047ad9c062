"""The training command line, and its resolution into one frozen `Config` per run."""
import argparse
import dataclasses
import hashlib
import json
import math
import os
import types
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from data import DEFAULT_DATA_DIR, check_holdout_count, dataset_info
from methods import all_options, get_method, method_names
from methods.recipes import COMMON, RECIPE_NAMES, Recipe
from models import is_known_model, model_names
from runtime.errors import OneLineParser, UserError, require_255_units, warn
from runtime.help import HelpFormatter
from runtime.precision import PRECISIONS
from teachers import zoo

from .networks import EMA_EVAL_SEED_OFFSET, STREAM_SEED_OFFSETS, SWA_SEED_OFFSET
from .schedule import SCHEDULES
from .tracking import require_trackers

DEFAULT_LR = {"mobilenetV2": 0.05}  # everything else: 0.1


@dataclass(frozen=True)
class Config:
    """Every resolved setting of one training run. `options` holds the method's own options."""
    dataset: str
    model: str
    method: str
    teacher_model: Optional[str]
    teacher_path: Optional[str]
    teacher_st_model: Optional[str]
    teacher_st_path: Optional[str]
    teacher_source: Optional[str]  # 'zoo:NAME' or 'robustbench:NAME' when --teacher_path named one, else None
    teacher_st_source: Optional[str]
    data_dir: str
    download: bool
    save_dir: str
    resume: bool
    overwrite: bool
    stop_after: Optional[int]  # None: run to --epochs
    train_subset: int
    test_subset: int
    seed: int
    gpu_id: int
    deterministic: bool
    nan_policy: str
    epsilon: float
    num_steps: int
    step_size: float
    epochs: int
    bs: int
    lr_max: float
    lr_schedule: str
    milestones: Tuple[int, ...]
    lr_decay: Tuple[float, ...]  # one factor per milestone
    momentum: float
    nesterov: bool
    weight_decay: float
    eval_bs: int
    eval_epsilon: float
    eval_step_size: float
    precision: str
    channels_last: bool
    compile: bool
    sync_bn: bool
    dist_timeout: float
    swa_start: int
    val_images: int  # 0: every best_* file is chosen on the test set, as the papers
    ema: Optional[float]  # the decay of the student's exponential moving average; None: none
    tensorboard: bool
    wandb: Optional[str]  # the W&B project; None: no W&B
    recipe: str
    recipe_source: str
    recipe_overrides: Tuple[str, ...]  # the recipe values given on the command line
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def record(self) -> Dict[str, Any]:
        """The settings as one flat dict (method options beside the others), for config.json."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        flat.update(self.options)
        return flat


def readers_and_defaults(name: str, users) -> str:
    """'[ARD: 30.0, IAD: 1.0]': the methods that read option `name`, each with its own default."""
    parts = []
    for user in users:
        option = get_method(user).options[name]
        parts.append(user if option.flag or callable(option.default) else f"{user}: {option.default}")
    return f"[{', '.join(parts)}]"


def build_parser(prog_defaults: Dict, description: str) -> argparse.ArgumentParser:
    # No prefix abbreviations: --eps must not silently mean --epsilon.
    p = OneLineParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("run")
    g.add_argument("--dataset", default=prog_defaults["dataset"], choices=prog_defaults["datasets"],
                   help="the dataset to train on (read from --data_dir)")
    g.add_argument("--model", default="resnet18", help=f"student: {', '.join(model_names())}")
    g.add_argument("--method", default="DGAD",
                   help=f"one of: {', '.join(method_names())} (VarGap is an approximate re-implementation "
                        f"from its paper's abstract; see docs/methods.md §4)")
    # None: not given (a zoo: or robustbench: --teacher_path sets it; an explicit conflicting one is refused).
    g.add_argument("--teacher_model", default=None,
                   help=f"teacher architecture (default {prog_defaults['teacher_model']}; a zoo: or robustbench: "
                        f"--teacher_path sets it)")
    p.set_defaults(default_teacher_model=prog_defaults["teacher_model"])
    g.add_argument("--teacher_path", default=None,
                   help="teacher checkpoint (default checkpoints/teachers/<dataset>/<teacher_model>.pth); "
                        "zoo:NAME: a teacher of the zoo by name, fetched into the cache with --download "
                        "(docs/teachers.md); robustbench:NAME: any RobustBench model of --dataset")
    g.add_argument("--teacher_st_model", default=None,
                   help="the naturally trained second teacher of AKD and MTARD (default: each method's)")
    g.add_argument("--teacher_st_path", default=None,
                   help="its checkpoint (default checkpoints/teachers/<dataset>/<teacher_st_model>_natural.pth); "
                        "zoo:NAME and robustbench:NAME as for --teacher_path (zoo:Standard is naturally trained)")
    g.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                   help="folder holding the dataset's standard layout (a folder of its own, not the data/ code "
                        "package)")
    g.add_argument("--download", action="store_true",
                   help="download CIFAR, and a zoo: teacher not in the cache yet, when missing (needs internet)")
    g.add_argument("--save_dir", default=None,
                   help="where the run's files go (default checkpoints/<dataset>/<method>/<name from the flags>)")
    g.add_argument("--resume", action="store_true", help="continue from last.pth in --save_dir")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --save_dir")
    g.add_argument("--stop_after", type=int, default=None,
                   help="stop cleanly after this many epochs (>= 1) of this invocation (fits a scheduler's time "
                        "slot; continue with --resume); default: run to --epochs")
    g.add_argument("--train_subset", type=int, default=0, help="use the first N training images (0 = all)")
    g.add_argument("--test_subset", type=int, default=0, help="use the first N test images (0 = all)")
    g.add_argument("--seed", type=int, default=42,
                   help=f"seeds the models' initialisation and the run's own random streams (data order and "
                        f"augmentation, attack starts, evaluation PGD starts); 0..{SEED_MAX}")
    g.add_argument("--gpu_id", type=int, default=0, help="use cuda:<id>; the CPU when CUDA is unavailable")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms: a resumed run matches an unbroken one bitwise (slower on CUDA)")
    g.add_argument("--nan_policy", default="stop", choices=("stop", "skip"),
                   help="on a non-finite loss: stop the run, or skip that batch's update (one host sync per step)")

    g = p.add_argument_group("recipe (each value below marked 'recipe' comes from it unless given)")
    g.add_argument("--recipe", default="released", choices=RECIPE_NAMES,
                   help="'released': the recipe of the method's released code (docs/methods.md §9); 'dgad-paper': "
                        "the DGAD paper's common setting for every method (200 epochs, x0.1 after 100 and 150, "
                        "weight decay 5e-4, epsilon 8, step 2, bs 128)")

    g = p.add_argument_group("attack (epsilon and step size in 1/255 pixel units)")
    g.add_argument("--epsilon", type=float, default=None,
                   help="L-inf radius of the training attack, in 1/255 units: 8 means 8/255 (recipe)")
    g.add_argument("--num_steps", type=int, default=10, help="PGD steps K of the training attack")
    g.add_argument("--step_size", type=float, default=None,
                   help="step of the training attack, in 1/255 units (recipe)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="number of epochs (recipe)")
    g.add_argument("--bs", type=int, default=None, help="batch size B (recipe)")
    g.add_argument("--lr_max", type=float, default=None, help="default 0.1; 0.05 for mobilenetV2")
    g.add_argument("--lr_schedule", default="piecewise", choices=SCHEDULES,
                   help="piecewise: lr_max, multiplied by --lr_decay after each of --milestones; cosine: "
                        "0.5 lr_max (1 + cos(pi epoch / epochs)), never below 1e-4 (the authors' floor)")
    g.add_argument("--milestones", default=None,
                   help="piecewise: after how many epochs the learning rate decays, comma-separated (recipe; "
                        "when --epochs differs from the recipe's, its milestones scale with it)")
    g.add_argument("--lr_decay", default=None,
                   help="piecewise: the factor at each milestone, one value or one per milestone (default 0.1)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, in [0, 1)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="SGD with Nesterov momentum (recipe: on for the Fair methods, as their scripts; off for the "
                        "others)")
    g.add_argument("--weight_decay", type=float, default=None, help="SGD weight decay on every parameter (recipe)")
    g.add_argument("--eval_bs", type=int, default=1024,
                   help="batch size of the per-epoch test evaluation; halved on a CUDA out-of-memory error")
    g.add_argument("--eval_epsilon", type=float, default=8,
                   help="radius of the per-epoch PGD-10 that picks best_PGD10_acc_model.pth, in 1/255 units "
                        "(8, as the authors' loops, whatever the training --epsilon)")
    g.add_argument("--eval_step_size", type=float, default=2, help="its step, in 1/255 units")

    g = p.add_argument_group("speed (see bench.py)")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16: the networks run under bf16 autocast in the attack and the update (images, "
                        "perturbations and losses stay fp32); fp32 stays the default until bf16 is shown to "
                        "keep robustness")
    g.add_argument("--channels_last", action="store_true",
                   help="NHWC weights and batches (faster convolutions on GPUs)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (minutes of compilation first; opt-in)")

    g.add_argument("--swa_start", type=int, default=None,
                   help="average the student's weights (SWA) at the end of every epoch after the first swa_start, "
                        "evaluated and saved beside it; below --epochs (0 = off; SAAD: 94 of 200 epochs, PeerAiD: "
                        "its first milestone, both scaled with --epochs and kept below it)")

    g = p.add_argument_group("selection, averaging and tracking (docs/training.md)")
    g.add_argument("--val_images", type=int, default=0,
                   help="hold out N training images (balanced over the classes, chosen by --seed) and choose every "
                        "best_* checkpoint on them; the test set is then measured once per checkpoint at the end "
                        "(final.json). 0: choose on the test set, as the papers do")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the student's weights, updated every step with this "
                        "decay in (0, 1) (e.g. 0.995), evaluated and saved beside it (ema_model.pth, "
                        "best_PGD10_acc_ema_model.pth); default: none")
    g.add_argument("--tensorboard", action="store_true",
                   help="log every results.csv column each epoch, and the training loss every 50 steps, to a "
                        "TensorBoard event file in the run folder (needs tensorboard)")
    g.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="log the same to this Weights & Biases project, the run's config.json as its config; a "
                        "resume continues the same W&B run (needs wandb)")

    g = p.add_argument_group("many GPUs: launch with torchrun --nproc_per_node N (docs/distributed.md)")
    g.add_argument("--sync_bn", action="store_true",
                   help="BatchNorm statistics over the whole batch across processes (SyncBatchNorm; GPUs only); "
                        "without it each process normalises its own shard of --bs")
    g.add_argument("--dist_timeout", type=float, default=10.0,
                   help="minutes a process waits for the others in a collective before the job fails (a process "
                        "that died stops the job instead of hanging it)")

    g = p.add_argument_group("method options (each is rejected for a method that does not read it)")
    for name, (option, users) in sorted(all_options().items()):
        help_text = f"{option.help} {readers_and_defaults(name, users)}"
        if option.flag:
            g.add_argument(f"--{name}", action="store_true", default=None, help=help_text)
        else:
            g.add_argument(f"--{name}", type=option.type, choices=option.choices, default=None, help=help_text)
    return p


# Flags that change where a run's files go or how fast it runs, not what it computes: a resume may
# change them, and they are not part of the default folder's name. Every other setting defines the run.
OPERATIONAL_FLAGS = frozenset({
    "save_dir", "resume", "overwrite", "stop_after", "gpu_id", "eval_bs", "nan_policy", "data_dir", "download",
    "deterministic", "channels_last", "compile", "teacher_path", "teacher_st_path", "recipe_overrides",
    "dist_timeout", "teacher_source", "teacher_st_source", "tensorboard", "wandb"})
# teacher_source: where a teacher file came from (zoo:NAME) is provenance; the file's sha256 (recorded as
# teacher_sha256) defines the teacher, so one file named by the zoo or by its path is one run.
# Defining settings added after runs were made with this code: a run without one in its record
# had this value (its resume and its default folder are unchanged).
ADDED_DEFAULTS = {"sync_bn": False, "nesterov": False, "teacher_st_model": None, "swa_start": 0, "val_images": 0, "ema": None,
                  "val_sha256": None}
# torch generators take seeds in 0..2**64-1, and each of the run's streams is seeded with --seed plus
# its own offset; a negative seed would wrap around onto a positive one (two flags, one run).
SEED_MAX = 2**64 - 1 - max(max(STREAM_SEED_OFFSETS.values()), SWA_SEED_OFFSET, EMA_EVAL_SEED_OFFSET)


def default_swa_start(method, args) -> int:
    """--swa_start when not given: the method's (0: no average), kept below --epochs so that the
    average it reports exists (0 for a 1-epoch run, which `resolve` refuses for such a method)."""
    start = method.swa_start(args)
    return min(start, args.epochs - 1) if start else 0


def default_save_dir(args, method_options) -> str:
    parts = [args.model]
    if get_method(args.method).needs_teacher:
        parts.append(f"T-{args.teacher_model}".replace(":", "-"))  # robustbench:NAME: no colon in a folder name
    if get_method(args.method).needs_natural_teacher:
        parts.append(f"TS-{args.teacher_st_model}".replace(":", "-"))
    parts += [f"eps{args.epsilon:g}", f"k{args.num_steps}", f"a{args.step_size:g}", f"bs{args.bs}",
              f"lr{args.lr_max:g}", args.lr_schedule, f"e{args.epochs}"]
    for name, option in method_options.items():
        value = getattr(args, name)
        if value != option.resolve_default(args):
            parts.append(name if value is True else f"{name}{value}")
    if args.recipe != "released":
        parts.append(args.recipe)
    if args.train_subset:
        parts.append(f"sub{args.train_subset}")
    if args.test_subset:
        parts.append(f"test{args.test_subset}")
    if args.precision != "fp32":
        parts.append(args.precision)
    if args.sync_bn:
        parts.append("syncbn")
    if args.swa_start != default_swa_start(get_method(args.method), args):
        parts.append(f"swa{args.swa_start}")
    if args.val_images:
        parts.append(f"val{args.val_images}")
    if args.ema:
        parts.append(f"ema{args.ema}")
    parts.append(f"seed{args.seed}")
    # Every other defining setting, in a short hash: two runs that compute different things never
    # share a default folder.
    defining = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Config)
                if f.name not in OPERATIONAL_FLAGS | {"options", "recipe_source"}
                and not (f.name in ADDED_DEFAULTS and getattr(args, f.name, None) == ADDED_DEFAULTS[f.name])}
    defining.update({name: getattr(args, name) for name in method_options})
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts.append(digest)
    return os.path.join("checkpoints", args.dataset, args.method, "_".join(parts))


RECIPE_FLAGS = ("epochs", "milestones", "lr_decay", "weight_decay", "epsilon", "step_size", "bs", "nesterov")


def number_list(flag: str, text: str, kind):
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--{flag} {text!r} is not a comma-separated list of {kind.__name__}s (e.g. 100,150)") \
            from None
    return values


def apply_recipe(args: argparse.Namespace, method) -> Recipe:
    """Fill every recipe value the command line left out, from --recipe; returns the recipe."""
    recipe = method.released_recipe(args) if args.recipe == "released" else COMMON[args.recipe]
    given = {flag for flag in RECIPE_FLAGS if getattr(args, flag) is not None}
    if args.epochs is None:
        args.epochs = recipe.epochs
    if args.milestones is None:
        # A shorter or longer run keeps the recipe's proportions (rounded up).
        args.milestones = tuple(-(-m * args.epochs // recipe.epochs) for m in recipe.milestones)
    else:
        args.milestones = number_list("milestones", args.milestones, int)
        if any(m < 1 for m in args.milestones) or any(a >= b for a, b in zip(args.milestones, args.milestones[1:])):
            raise UserError(f"--milestones {','.join(map(str, args.milestones))} must be increasing epoch counts "
                            f">= 1 (e.g. 100,150), each given once: a decay applies after that many epochs")
    decay = number_list("lr_decay", args.lr_decay, float) if args.lr_decay is not None else (recipe.lr_decay,)
    if len(decay) == 1:
        decay = decay * len(args.milestones)
    if len(decay) != len(args.milestones):
        raise UserError(f"--lr_decay has {len(decay)} factors for {len(args.milestones)} milestones; give one "
                        f"factor, or one per milestone")
    args.lr_decay = decay
    for flag, value in (("weight_decay", recipe.weight_decay), ("epsilon", recipe.epsilon),
                        ("step_size", recipe.step_size), ("bs", recipe.batch_size(args.dataset)),
                        ("nesterov", recipe.nesterov)):
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    args.recipe_overrides = tuple(sorted(given))
    return recipe


def check_numbers(args: argparse.Namespace, options, method) -> None:
    """Every numeric setting finite and in its range, and the method's options consistent, before any
    work starts."""
    floats = ["epsilon", "step_size", "eval_epsilon", "eval_step_size", "lr_max", "momentum", "weight_decay"]
    floats += [name for name in options if isinstance(getattr(args, name), float)]
    for flag in floats:
        if not math.isfinite(getattr(args, flag)):
            raise UserError(f"--{flag} must be a finite number, got {getattr(args, flag)}")
    if not all(math.isfinite(d) and d > 0 for d in args.lr_decay):
        raise UserError(f"--lr_decay factors must be finite and > 0, got {', '.join(map(str, args.lr_decay))}")
    if args.lr_max <= 0:
        raise UserError(f"--lr_max must be > 0, got {args.lr_max:g}")
    if not 0 <= args.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {args.momentum:g}")
    if args.weight_decay < 0:
        raise UserError(f"--weight_decay must be >= 0, got {args.weight_decay:g}")
    if args.nesterov and args.momentum == 0:
        raise UserError(f"--nesterov needs a momentum: --momentum is 0; give --momentum > 0 or --no-nesterov")
    for name, option in options.items():
        problem = None if option.flag or option.choices else option.range_error(getattr(args, name))
        if problem:
            raise UserError(f"--{name} {problem}, got {getattr(args, name):g}")
    if not 0 <= args.seed <= SEED_MAX:
        raise UserError(f"--seed must be an integer in 0..{SEED_MAX} (the run's random streams seed torch "
                        f"generators with --seed plus an offset, and torch takes 0..2**64-1), got {args.seed}")
    problem = method.options_problem({name: getattr(args, name) for name in options})
    if problem:
        raise UserError(problem)
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --save_dir and --overwrite replaces it: pass one of them")


def resolve_swa_start(args: argparse.Namespace, method) -> None:
    """--swa_start, given or the method's default, leaves at least one epoch to average: a method that
    reports its weight average (SAAD, PeerAiD) must have one to report."""
    if args.swa_start is None:
        args.swa_start = default_swa_start(method, args)
        if method.swa_start(args) and not args.swa_start:
            raise UserError(f"--method {args.method} reports the weight average of the epochs after --swa_start, "
                            f"and a {args.epochs}-epoch run has none: pass --epochs 2 or more, or --swa_start 0 to "
                            f"report the plain student")
    if args.swa_start < 0:
        raise UserError(f"--swa_start must be >= 0 (0 = no weight averaging), got {args.swa_start}")
    if args.swa_start >= args.epochs:
        raise UserError(f"--swa_start {args.swa_start} leaves no epoch to average in a {args.epochs}-epoch run (the "
                        f"average takes the epochs after it): pass --swa_start {args.epochs - 1} or less, or 0 for "
                        f"no weight averaging")


def check_selection_and_averaging(args: argparse.Namespace) -> None:
    """--val_images, --ema, --tensorboard and --wandb, as far as they can be checked before the data are read
    (data.holdout checks the held-out images against the training labels)."""
    check_holdout_count(args.val_images, dataset_info(args.dataset).num_classes)
    if args.train_subset and args.val_images >= args.train_subset:
        raise UserError(f"--val_images {args.val_images} leaves no training image of --train_subset "
                        f"{args.train_subset} (the held-out images come out of the training subset): pass a "
                        f"smaller --val_images or a larger --train_subset")
    if args.ema is not None and not 0 < args.ema < 1:
        raise UserError(f"--ema must be a decay in (0, 1), e.g. 0.995 (the average then spans about 1/(1 - DECAY) "
                        f"= 200 steps), got {args.ema:g}; leave it out for no average")
    if args.wandb is not None and not args.wandb.strip():
        raise UserError("--wandb needs the name of a Weights & Biases project, e.g. --wandb advkd")
    require_trackers(args.tensorboard, args.wandb)


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (the same inode when both exist, else the same absolute path)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def recipe_line(config: Config) -> str:
    """The resolved recipe, as a run prints it at start."""
    schedule = (f"x{'/'.join(f'{d:g}' for d in config.lr_decay)} after epochs "
                f"{', '.join(map(str, config.milestones)) or '(none)'}" if config.lr_schedule == "piecewise"
                else config.lr_schedule)
    return (f"recipe {config.recipe} ({config.recipe_source}): {config.epochs} epochs, lr {config.lr_max:g} "
            f"{schedule}, weight decay {config.weight_decay:g}, momentum {config.momentum:g}"
            f"{' (Nesterov)' if config.nesterov else ''}, epsilon "
            f"{config.epsilon:g}/255, step {config.step_size:g}/255, {config.num_steps} steps, bs {config.bs}"
            + (f" ({', '.join('--' + flag for flag in config.recipe_overrides)} from the command line)"
               if config.recipe_overrides else ""))


TEACHER_FLAGS = (("teacher_path", "teacher_model", "teacher_source"),
                 ("teacher_st_path", "teacher_st_model", "teacher_st_source"))


def resolve_teacher_sources(args: argparse.Namespace, method) -> None:
    """A --teacher_path (--teacher_st_path) of zoo:NAME or robustbench:NAME: the teacher's architecture comes
    with it (a conflicting explicit --teacher_model is refused), the path becomes the zoo file's place in the
    cache, and the name is kept as teacher_source. Reads the registry only: nothing is fetched here."""
    args.teacher_source = args.teacher_st_source = None
    needed = {"teacher_path": method.needs_teacher, "teacher_st_path": method.needs_natural_teacher}
    for path_flag, model_flag, source_attr in TEACHER_FLAGS:
        named = zoo.resolve_source(getattr(args, path_flag), args.dataset, f"--{path_flag}") \
            if needed[path_flag] else None  # a teacher flag of a method without that teacher: see `resolve`
        if named is None:
            continue
        model, path, source = named
        given = getattr(args, model_flag)
        if given is not None and given != model:
            raise UserError(f"--{model_flag} {given} conflicts with --{path_flag} {source}, which is a {model}: leave "
                            f"--{model_flag} out (the teacher's architecture comes with its name)")
        setattr(args, model_flag, model)
        setattr(args, path_flag, path)
        setattr(args, source_attr, source)
    if args.teacher_model is None:
        args.teacher_model = getattr(args, "default_teacher_model", None)


def is_teacher_model(name: str) -> bool:
    """A model of models/, or a RobustBench model named by robustbench:NAME (its own architecture)."""
    return name.startswith(zoo.ROBUSTBENCH_PREFIX) or is_known_model(name)


def resolve(args: argparse.Namespace) -> Config:
    """Validate the parsed arguments, fill the defaults that depend on other arguments, and freeze
    them. `args` itself is filled in too (bench.py reads its own flags beside the config)."""
    try:
        method = get_method(args.method)
    except KeyError:
        raise UserError(f"unknown --method {args.method!r}; choose from {', '.join(method_names())}") from None
    resolve_teacher_sources(args, method)
    if method.needs_natural_teacher and args.teacher_st_model is None:
        args.teacher_st_model = method.natural_teacher_model(args)
    if not is_known_model(args.model):
        raise UserError(f"unknown --model {args.model!r}; choose from {', '.join(model_names())}")
    for flag in ("teacher_model",) + (("teacher_st_model",) if method.needs_natural_teacher else ()):
        if not is_teacher_model(getattr(args, flag)):
            raise UserError(f"unknown --{flag} {getattr(args, flag)!r}; choose from {', '.join(model_names())}")
    own = method.options_for(args)  # VarGap also reads the options of its --vg_base
    for name, (option, users) in all_options().items():
        if name in own:  # defaults are per method: ARD and IAD share --temp, not its default
            if getattr(args, name) is None:
                setattr(args, name, own[name].resolve_default(args))
        elif getattr(args, name) is not None:
            raise UserError(f"--{name} is not used by --method {args.method} (it is an option of "
                            f"{', '.join(users)}); remove it")
    recipe = apply_recipe(args, method)
    if args.lr_max is None:
        args.lr_max = DEFAULT_LR.get(args.model, 0.1)
    check_numbers(args, own, method)
    if args.epsilon < 0 or args.step_size < 0:
        raise UserError(f"--epsilon and --step_size must be >= 0 (got {args.epsilon:g}, {args.step_size:g})")
    for flag in ("epsilon", "step_size", "eval_epsilon", "eval_step_size"):
        if flag in args.recipe_overrides or flag.startswith("eval"):
            require_255_units(f"--{flag}", getattr(args, flag), f"--{flag} {8 if 'epsilon' in flag else 2}")
    if method.attack is not None and args.num_steps < 1:
        raise UserError(f"--num_steps must be >= 1 for --method {args.method}, which trains on an attack")
    if args.step_size > args.epsilon:
        warn(f"--step_size {args.step_size:g} is larger than --epsilon {args.epsilon:g}")
    for flag in ("bs", "epochs", "eval_bs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if "milestones" in args.recipe_overrides and args.lr_schedule == "piecewise" and args.milestones \
            and args.milestones[-1] >= args.epochs:
        warn(f"--milestones {','.join(map(str, args.milestones))} reaches --epochs {args.epochs}: a decay after "
             f"the last epoch never takes effect")
    resolve_swa_start(args, method)
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise UserError(f"--dist_timeout must be a positive number of minutes, got {args.dist_timeout:g}")
    for flag in ("train_subset", "test_subset"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    check_selection_and_averaging(args)
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop_after must be >= 1 epochs, got {args.stop_after}; leave it out to run to --epochs")
    if method.needs_teacher and args.teacher_path is None:
        args.teacher_path = os.path.join("checkpoints", "teachers", args.dataset, f"{args.teacher_model}.pth")
    if not method.needs_teacher:
        args.teacher_model = args.teacher_path = None
    if method.needs_natural_teacher and args.teacher_st_path is None:
        args.teacher_st_path = os.path.join("checkpoints", "teachers", args.dataset,
                                            f"{args.teacher_st_model}_natural.pth")
    if method.needs_natural_teacher and same_file(args.teacher_path, args.teacher_st_path):
        raise UserError(f"--teacher_path and --teacher_st_path are the same file ({args.teacher_path}): --method "
                        f"{args.method} distils from an adversarially and a naturally trained teacher; pass the "
                        f"natural one as --teacher_st_path")
    if not method.needs_natural_teacher:
        for flag in ("teacher_st_model", "teacher_st_path"):
            if getattr(args, flag) is not None:
                raise UserError(f"--{flag} is the second teacher of AKD and MTARD; --method {args.method} has none: "
                                f"remove it")
    if args.save_dir is None:
        args.save_dir = default_save_dir(args, own)
    args.recipe_source = recipe.source
    common = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if f.name != "options"}
    return Config(**common, options=types.MappingProxyType({name: getattr(args, name) for name in own}))
