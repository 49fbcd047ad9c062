"""Presets: a paper table as data (presets/<name>.json): the dataset, student, teacher (a checkpoint,
or how to train one), methods, seeds, training flags and evaluations. Read and checked here, so
that a typo is one line before any job starts."""
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from evaluation.protocols import PROTOCOLS, parse_attacks
from methods import get_method, method_names
from models import is_known_model
from runtime.errors import UserError
from teachers import zoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET_DIR = os.path.join(REPO, "presets")
DATASETS = ("CIFAR10", "CIFAR100", "Tiny_Image")
# Flags a preset may not set: the pipeline owns where runs go, which run it is and how it resumes.
RESERVED_FLAGS = {"save_dir", "resume", "overwrite", "seed", "method", "model", "dataset", "teacher_model",
                  "teacher_path", "data_dir", "stop_after"}


@dataclass(frozen=True)
class Evaluation:
    protocol: str
    attacks: Tuple[str, ...]  # in the protocol's order
    eps: Tuple[float, ...]  # 1/255 units
    n_ex: int  # 0 = the whole test split


@dataclass(frozen=True)
class Teacher:
    model: str  # from the registry for a zoo:NAME path
    path: Optional[str]  # a checkpoint (or zoo:NAME) given by the preset; None when the pipeline trains the teacher
    method: Optional[str] = None
    seed: int = 0
    flags: Dict[str, Any] = field(default_factory=dict)
    evaluate: bool = False  # a teacher trained here: evaluated as the students are, and reported beside them


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    dataset: str
    student: str
    teacher: Optional[Teacher]  # None when no method distils
    methods: Tuple[str, ...]
    seeds: Tuple[int, ...]
    train: Dict[str, Any]  # main.py flags shared by every student (and the trained teacher)
    method_flags: Dict[str, Dict[str, Any]]
    evaluations: Tuple[Evaluation, ...]


def preset_names() -> List[str]:
    return sorted(name[:-5] for name in os.listdir(PRESET_DIR) if name.endswith(".json"))


def preset_path(name_or_path: str) -> str:
    """A preset's file: presets/<name>.json, or a path to a JSON file of the same shape. Its name (the
    file's, less .json) names the default root and the report: '', '.' or '..' would name a folder
    above the runs (checkpoints/reproduce/.. is checkpoints/)."""
    name = os.path.basename(name_or_path)
    name = name[:-5] if name.endswith(".json") else name
    if not name.strip("."):
        raise UserError(f"--preset {name_or_path!r} has no name (its file name is "
                        f"{os.path.basename(name_or_path)!r}): name the file <name>.json, e.g. my-table.json")
    if name_or_path.endswith(".json") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise UserError(f"--preset {name_or_path}: no such file")
        return name_or_path
    path = os.path.join(PRESET_DIR, f"{name_or_path}.json")
    if not os.path.isfile(path):
        raise UserError(f"unknown --preset {name_or_path!r}; choose from {', '.join(preset_names())}, or pass a "
                        f"preset file's path")
    return path


def expect(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise UserError(f"preset {where}: {message}")


def checked_flags(flags: Any, where: str, switches: Dict[str, bool]) -> Dict[str, Any]:
    """Training flags as {flag: value}: each a main.py flag (without --), not one the pipeline sets
    itself; a switch (store_true) is `true`, any other flag a number or a string. The values are
    checked by main.py's own parser and rules when the plan is made (pipeline.plan)."""
    expect(isinstance(flags, dict), where, "must be an object of main.py flags, e.g. {\"epochs\": 6}")
    for name, value in flags.items():
        expect(name in switches, where, f"{name!r} is not a main.py flag (see python main.py --help)")
        expect(name not in RESERVED_FLAGS, where, f"{name!r} is set by reproduce.py for each run")
        if switches[name]:
            expect(value is True, where, f"{name!r} is a switch: write true to turn it on, or leave it out "
                                         f"(got {json.dumps(value)})")
        else:
            expect(isinstance(value, (str, int, float)) and not isinstance(value, bool), where,
                   f"{name!r} takes a value (a number or a string), not {json.dumps(value)}")
    return dict(flags)


def finite_number(text: str) -> float:
    """JSON numbers as a preset may hold them: 1e400 reads as infinity, which no setting takes."""
    value = float(text)
    if not math.isfinite(value):
        raise UserError(f"{text} is not a finite number")
    return value


def is_float(value: Any) -> bool:
    """A JSON number that is a float too (a 400-digit integer is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def no_constant(name: str):
    raise UserError(f"{name} is not a number JSON allows, nor a value any setting takes")


def load_preset(name_or_path: str, switches: Dict[str, bool]) -> Preset:
    """The preset, checked; `switches` maps each of main.py's flags to whether it is a switch."""
    path = preset_path(name_or_path)
    name = os.path.basename(path)[:-5] if path.endswith(".json") else os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_float=finite_number, parse_constant=no_constant)
    except UserError as exc:
        raise UserError(f"--preset {path}: {exc}") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"--preset {path} is not readable JSON ({exc})") from None
    expect(isinstance(data, dict), name, "the file must hold one JSON object")
    allowed = {"description", "dataset", "student", "teacher", "methods", "seeds", "train", "method_flags",
               "evaluate"}
    unknown = sorted(set(data) - allowed)
    expect(not unknown, name, f"unknown keys {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    for key in ("dataset", "student", "methods", "seeds", "evaluate"):
        expect(key in data, name, f"{key!r} is missing")
    dataset = data["dataset"]
    expect(isinstance(data.get("description", ""), str), f"{name} description", "must be a string")
    expect(dataset in DATASETS, f"{name} dataset", f"{dataset!r} is not one of {', '.join(DATASETS)}")
    expect(isinstance(data["student"], str) and is_known_model(data["student"]), f"{name} student",
           f"{data['student']!r} is not a model of models/")

    methods = data["methods"]
    expect(isinstance(methods, list) and methods, f"{name} methods", "must be a non-empty list")
    for method in methods:
        expect(isinstance(method, str) and method in method_names(), f"{name} methods",
               f"{method!r} is not one of {', '.join(method_names())}")
    expect(len(set(methods)) == len(methods), f"{name} methods", "lists a method twice")
    seeds = data["seeds"]
    expect(isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds) and len(set(seeds)) == len(seeds),
           f"{name} seeds", "must be a non-empty list of distinct integers")

    train = checked_flags(data.get("train", {}), f"{name} train", switches)
    method_flags = data.get("method_flags", {})
    expect(isinstance(method_flags, dict), f"{name} method_flags", "must map method names to flags")
    method_flags = {m: checked_flags(f, f"{name} method_flags.{m}", switches) for m, f in method_flags.items()}
    for method in method_flags:
        expect(method in methods, f"{name} method_flags", f"{method!r} is not among the preset's methods")

    t = data.get("teacher")
    distilled = [m for m in methods if get_method(m).needs_teacher]
    expect(t is not None or not distilled, f"{name} teacher", f"is missing, and {', '.join(distilled)} distil "
                                                                f"from one")
    if t is None:
        return Preset(name, data.get("description", ""), dataset, data["student"], None, tuple(methods),
                      tuple(seeds), train, method_flags, evaluations(data, name))
    expect(isinstance(t, dict), f"{name} teacher", "must be an object: {\"model\", \"path\"} or {\"model\", "
                                                   "\"train\"}")
    expect(("path" in t) != ("train" in t), f"{name} teacher", "give either 'path' (a checkpoint, or zoo:NAME) or "
                                                                 "'train' (how to train it here)")
    unknown = sorted(set(t) - {"model", "path", "train", "evaluate"})
    expect(not unknown, f"{name} teacher", f"unknown keys {', '.join(unknown)} (allowed: model, path or train, "
                                           f"evaluate)")
    expect(isinstance(t.get("evaluate", False), bool), f"{name} teacher",
           f"'evaluate' is true or false, not {json.dumps(t.get('evaluate'))}")
    expect(not (t.get("evaluate") and "path" in t), f"{name} teacher",
           "'evaluate' applies to a teacher trained here ('train'); evaluate a given checkpoint with main_eval.py")
    model = t.get("model")
    if "path" in t:
        expect(isinstance(t["path"], str) and t["path"], f"{name} teacher", "'path' must be a checkpoint's path")
        try:  # a zoo:NAME (robustbench:NAME) teacher brings its architecture: 'model' may be left out
            named = zoo.resolve_source(t["path"], dataset, "'path'")
        except UserError as exc:
            raise UserError(f"preset {name} teacher: {exc}") from None
        if named is not None:
            expect(model is None or model == named[0], f"{name} teacher",
                   f"'model' {model!r} conflicts with 'path' {t['path']}, which is a {named[0]}: leave 'model' out")
            model = named[0]
    expect(isinstance(model, str) and (is_known_model(model) or model.startswith(zoo.ROBUSTBENCH_PREFIX)),
           f"{name} teacher", "must name a 'model' of models/ (a 'path' of zoo:NAME brings its own)")
    if "path" in t:
        teacher = Teacher(model, t["path"])
    else:
        expect(isinstance(t["train"], dict), f"{name} teacher.train", "must be an object of main.py flags")
        how = dict(t["train"])
        method = how.pop("method", "PGDAT")
        seed = how.pop("seed", 0)
        expect(isinstance(method, str) and method in method_names() and not get_method(method).needs_teacher,
               f"{name} teacher.train", f"method {method!r} must be one that trains without a teacher (PGDAT, TRADES, "
                                        f"Natural)")
        expect(type(seed) is int, f"{name} teacher.train", "seed must be an integer")
        teacher = Teacher(model, None, method, seed, checked_flags(how, f"{name} teacher.train", switches),
                          t.get("evaluate", False))
    return Preset(name, data.get("description", ""), dataset, data["student"], teacher, tuple(methods),
                  tuple(seeds), train, method_flags, evaluations(data, name))


def evaluations(data: Dict, name: str) -> Tuple[Evaluation, ...]:
    """The preset's evaluations, their JSON types checked here; their values are checked by
    main_eval.py's own rules when the plan is made (pipeline.plan)."""
    evaluations = []
    expect(isinstance(data["evaluate"], list) and data["evaluate"], f"{name} evaluate", "must be a non-empty list")
    for i, e in enumerate(data["evaluate"]):
        where = f"{name} evaluate[{i}]"
        expect(isinstance(e, dict) and isinstance(e.get("protocol"), str) and e["protocol"] in PROTOCOLS, where,
               f"needs a 'protocol' of {', '.join(sorted(PROTOCOLS))}")
        bad = sorted(set(e) - {"protocol", "attacks", "eps", "n_ex"})
        expect(not bad, where, f"unknown keys {', '.join(bad)} (allowed: protocol, attacks, eps, n_ex)")
        protocol = PROTOCOLS[e["protocol"]]
        attacks = e.get("attacks")
        expect(attacks is None or (isinstance(attacks, list) and attacks and all(isinstance(a, str) for a in attacks)),
               where, f"attacks must be a non-empty list of attack names, e.g. {json.dumps(list(protocol.attacks))}")
        try:
            attacks = parse_attacks(attacks, protocol)
        except UserError as exc:
            raise UserError(f"preset {where}: {exc}") from None
        eps = e.get("eps", [8])
        expect(isinstance(eps, list) and eps and all(is_float(v) for v in eps), where,
               "eps must be a list of radii in 1/255 units, e.g. [2, 4, 8]")
        # The command and the report's keys write a radius with 6 significant digits: more would be lost.
        expect(all(float(f"{v:g}") == v for v in eps), where,
               f"eps {', '.join(str(v) for v in eps if float(f'{v:g}') != v)}: a radius has at most 6 significant "
               f"digits (the report keys radii by them)")
        n_ex = e.get("n_ex", 0)
        expect(type(n_ex) is int, where, "n_ex must be an integer >= 0 (0 = the whole test set)")
        evaluations.append(Evaluation(protocol.name, attacks, tuple(sorted(set(float(v) for v in eps))), n_ex))
    for a in evaluations:  # one report per protocol: its evaluations must see the same images
        for b in evaluations:
            expect(a.protocol != b.protocol or a.n_ex == b.n_ex, f"{name} evaluate",
                   f"the {a.protocol} evaluations write one report and must share n_ex ({a.n_ex} vs {b.n_ex})")
    return tuple(evaluations)
