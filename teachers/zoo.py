"""The zoo of named teachers: teachers/zoo.json read and checked, and `zoo:NAME` resolved to its
registry entry and the file it is cached as (docs/teachers.md). Nothing here touches the network
or writes a file: teachers/download.py fetches."""
import difflib
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from runtime.errors import UserError

ZOO_PREFIX = "zoo:"
ROBUSTBENCH_PREFIX = "robustbench:"
REGISTRY_ENV = "ADVKD_ZOO"  # another registry file (tests, a mirror of your own): see docs/teachers.md
CACHE_ENV = "ADVKD_CACHE"
DEFAULT_REGISTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo.json")
DEFAULT_CACHE = os.path.join("~", ".cache", "advkd", "teachers")
DATASETS = ("CIFAR10", "CIFAR100", "Tiny_Image")  # as data/ names them
THREATS = ("Linf",)
TRAININGS = ("adversarial", "natural")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
REQUIRED = ("name", "dataset", "threat", "architecture", "training", "clean_acc", "autoattack_acc", "eps",
            "accuracy_source", "paper", "urls", "sha256")
OPTIONAL = ("note",)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    dataset: str
    threat: str
    architecture: str  # a name of models/
    training: str  # adversarial, or natural (a second teacher for AKD and MTARD)
    clean_acc: Optional[float]  # as the source reports it, in %; None where no source was found
    autoattack_acc: Optional[float]
    eps: Optional[str]  # the radius the source states the AutoAttack accuracy at
    accuracy_source: Optional[str]  # where the two numbers come from
    paper: Optional[str]
    urls: Tuple[str, ...]  # tried in order
    sha256: Optional[str]  # None where no source publishes one
    note: str = ""

    @property
    def source(self) -> str:
        return f"{ZOO_PREFIX}{self.name}"

    @property
    def file_name(self) -> str:
        return f"{self.name}.pt"


def registry_path() -> str:
    return os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY


def cache_dir() -> str:
    """Where downloaded teachers go: $ADVKD_CACHE, or ~/.cache/advkd/teachers."""
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def cached_path(entry: ZooEntry) -> str:
    """<cache>/<dataset>/<name>.pt: one name may exist for several datasets (Chen2021LTD_WRN34_10)."""
    return os.path.join(cache_dir(), entry.dataset, entry.file_name)


def _number(value, where: str, key: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise UserError(f"{where}: {key} must be a percentage in [0, 100] or null, got {json.dumps(value)}")
    return float(value)


def check_entry(raw, where: str) -> ZooEntry:
    """One registry entry, every field checked (one line naming the registry, the entry and the field)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: an entry must be a JSON object")
    missing = [key for key in REQUIRED if key not in raw]
    unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise UserError(f"{where}: {'missing ' + ', '.join(missing) if missing else ''}"
                        f"{'; ' if missing and unknown else ''}{'unknown keys ' + ', '.join(unknown) if unknown else ''}")
    for key in ("name", "architecture"):
        if not isinstance(raw[key], str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", raw[key]):
            raise UserError(f"{where}: {key} must be a plain name (letters, digits, _ . -), got {json.dumps(raw[key])}")
    for key, allowed in (("dataset", DATASETS), ("threat", THREATS), ("training", TRAININGS)):
        if raw[key] not in allowed:
            raise UserError(f"{where}: {key} {json.dumps(raw[key])} is not one of {', '.join(allowed)}")
    clean, robust = _number(raw["clean_acc"], where, "clean_acc"), _number(raw["autoattack_acc"], where, "autoattack_acc")
    for key in ("eps", "accuracy_source", "paper", "note"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise UserError(f"{where}: {key} must be a string or null")
    if (clean is not None or robust is not None) and not raw["accuracy_source"]:
        raise UserError(f"{where}: accuracies need an accuracy_source (where the numbers come from)")
    urls = raw["urls"]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and re.match(r"^https?://\S+$", u)
                                                         for u in urls):
        raise UserError(f"{where}: urls must be a non-empty list of http(s) URLs")
    sha256 = raw["sha256"]
    if sha256 is not None and not (isinstance(sha256, str) and SHA256.match(sha256)):
        raise UserError(f"{where}: sha256 must be 64 lowercase hex digits or null, got {json.dumps(sha256)}")
    return ZooEntry(raw["name"], raw["dataset"], raw["threat"], raw["architecture"], raw["training"], clean, robust,
                    raw["eps"], raw["accuracy_source"], raw["paper"], tuple(urls), sha256, raw.get("note") or "")


_LOADED: Dict[Tuple[str, float], Tuple[ZooEntry, ...]] = {}


def load_registry(path: Optional[str] = None) -> Tuple[ZooEntry, ...]:
    """Every entry of the registry (teachers/zoo.json, or $ADVKD_ZOO), checked; read once per file version."""
    path = path or registry_path()
    try:
        key = (os.path.abspath(path), os.path.getmtime(path))
    except OSError as exc:
        raise UserError(f"the teacher zoo registry {path} cannot be read ({exc.strerror}); check ${REGISTRY_ENV}") \
            from None
    if key in _LOADED:
        return _LOADED[key]
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"the teacher zoo registry {path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("teachers"), list):
        raise UserError(f"the teacher zoo registry {path} must be an object with a 'teachers' list")
    entries = tuple(check_entry(raw, f"{path} teachers[{i}]") for i, raw in enumerate(data["teachers"]))
    seen = set()
    for e in entries:
        if (e.name, e.dataset) in seen:
            raise UserError(f"{path}: {e.name} ({e.dataset}) is listed twice")
        seen.add((e.name, e.dataset))
    _LOADED[key] = entries
    return entries


def close_names(name: str, names: List[str]) -> List[str]:
    """Names like `name` (case aside), best first."""
    by_lower = {n.lower(): n for n in names}
    return [by_lower[n] for n in difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.6)]


def entry(name: str, dataset: str, threat: str = "Linf", flag: str = "--teacher_path",
          path: Optional[str] = None) -> ZooEntry:
    """The entry `name` of `dataset`; an unknown name (with the close ones), a teacher of another dataset
    or threat model is one line naming `flag`."""
    entries = load_registry(path)
    if not name:
        raise UserError(f"{flag} {ZOO_PREFIX} names no teacher: write {ZOO_PREFIX}NAME (docs/teachers.md lists them)")
    same_name = [e for e in entries if e.name == name]
    if not same_name:
        close = close_names(name, sorted({e.name for e in entries if e.dataset == dataset})) or \
            close_names(name, sorted({e.name for e in entries}))
        raise UserError(f"{flag} {ZOO_PREFIX}{name}: no such teacher in the zoo"
                        + (f"; did you mean {', '.join(ZOO_PREFIX + n for n in close)}?" if close else "")
                        + f" (docs/teachers.md lists the {dataset} teachers)")
    found = [e for e in same_name if e.dataset == dataset]
    if not found:
        others = " and ".join(sorted({e.dataset for e in same_name}))
        instead = f"a {dataset} teacher (docs/teachers.md lists them)" if any(e.dataset == dataset for e in entries) else \
            f"a {dataset} teacher file (the zoo has none: checkpoints/README.md says how to train one)"
        raise UserError(f"{flag} {ZOO_PREFIX}{name} is a teacher for {others}, not --dataset {dataset}: pass "
                        f"--dataset {same_name[0].dataset}, or {instead}")
    if found[0].threat != threat:
        raise UserError(f"{flag} {ZOO_PREFIX}{name} is robust under {found[0].threat}, and these runs train and "
                        f"evaluate {threat}: choose a {threat} teacher")
    return found[0]


def entries_for(dataset: str, architecture: str, training: str = "adversarial") -> List[ZooEntry]:
    """The zoo's teachers of `dataset` with this architecture, in the registry's order (the papers' first)."""
    try:
        entries = load_registry()
    except UserError:
        return []
    return [e for e in entries if e.dataset == dataset and e.architecture == architecture and e.training == training]


def resolve_source(value: Optional[str], dataset: str, flag: str) -> Optional[Tuple[str, str, str]]:
    """(architecture, path, source) for a teacher named zoo:NAME (its place in the cache) or robustbench:NAME
    (architecture and path are the name: robustbench builds and keeps the model); None for a file path.
    Reads the registry only."""
    parsed = split_source(value)
    if parsed is None:
        return None
    kind, name = parsed
    if kind == "zoo":
        found = entry(name, dataset, flag=flag)
        return found.architecture, cached_path(found), found.source
    if not name:
        raise UserError(f"{flag} {ROBUSTBENCH_PREFIX} names no model: write {ROBUSTBENCH_PREFIX}NAME, a RobustBench "
                        f"Linf model of {dataset}")
    return value, value, value


def split_source(value: Optional[str]) -> Optional[Tuple[str, str]]:
    """('zoo', NAME) or ('robustbench', NAME) for a --teacher_path that names one; None for a file path."""
    if value is None:
        return None
    for prefix in (ZOO_PREFIX, ROBUSTBENCH_PREFIX):
        if value.startswith(prefix):
            return prefix[:-1], value[len(prefix):]
    return None
