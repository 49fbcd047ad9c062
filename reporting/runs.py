"""Run folders and evaluation reports, read from disk (JSON and CSV only: nothing here unpickles), and
grouped: runs that differ only in their seed (and in flags that do not change what is computed) are
one group, a row of a table."""
import csv
import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from evaluation.protocols import PROTOCOLS
from evaluation.report import OLDER_FORMATS, REPORT_FORMAT, check_report, load_json, same_file, shown
from runtime.checkpoints import sha256_of
from runtime.errors import UserError, warn
from training.config import ADDED_DEFAULTS
from training.run_dir import OPERATIONAL
from training.selection import selection_text

BEST_PGD, BEST_CLEAN = "best_PGD10_acc_model.pth", "best_clean_acc_model.pth"
# Entries of config.json that do not separate two groups: the seed (aggregated over), where and how
# fast a run ran (training.run_dir.OPERATIONAL), and what follows from the method. The teachers'
# files (teacher_sha256, teacher_st_sha256) do separate them, as they separate runs on resume.
# val_sha256 (which images --val_images held out) follows from --val_images, the seed and the data, as the seed
# differs between a group's runs; --val_images itself separates groups (and tables: `selection`).
NOT_DEFINING = OPERATIONAL | {"seed", "loss_parts", "val_sha256"}
# How a label names a setting's file hash: by the file's name where that tells the groups apart.
TEACHERS = {"teacher_sha256": ("teacher", "teacher_path"), "teacher_st_sha256": ("natural teacher", "teacher_st_path")}


# Methods whose released code reports the student's weight average (--swa_start): SAAD its last one,
# PeerAiD its best-PGD-10 one.
AVERAGE_REPORTED = {"SAAD": "swa_model.pth", "PeerAiD": "best_PGD10_acc_swa_model.pth"}


def reported_checkpoint(method: str, swa_start: Optional[int] = None) -> str:
    """The checkpoint a table reports for a run: the best-PGD-10 one, as the papers do; for Natural
    training, which never sees an adversarial example, the best clean one (its PGD-10 curve stays
    near zero, so its best-PGD-10 epoch is an accident); the weight average for the methods whose
    released code reports it, unless the run had none (`swa_start` 0; None: the method's default)."""
    if method == "Natural":
        return BEST_CLEAN
    return BEST_PGD if swa_start == 0 else AVERAGE_REPORTED.get(method, BEST_PGD)


@dataclass
class Run:
    """One trained model: its settings, per-epoch history, and evaluation reports by protocol."""
    folder: str
    config: Dict
    history: List[Dict[str, float]] = field(default_factory=list)
    reports: Dict[str, Dict] = field(default_factory=dict)
    report_paths: Dict[str, str] = field(default_factory=dict)  # by protocol, as reports

    @property
    def method(self) -> str:
        return str(self.config.get("method", "unknown"))

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def val_images(self) -> int:
        """How many held-out training images chose the run's checkpoints (--val_images); 0: the test set did, the
        papers' way, which is also what a report of a checkpoint trained elsewhere is taken to be."""
        return self.config.get("val_images") or 0

    @property
    def selection(self) -> str:
        return selection_text(self.val_images)

    def key(self) -> Tuple:
        """What the run computes, but for its seed: runs with equal keys are seeds of one group."""
        defining = {k: v for k, v in {**ADDED_DEFAULTS, **self.config}.items() if k not in NOT_DEFINING}
        return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in defining.items()))


@dataclass
class Group:
    label: str
    runs: List[Run]

    @property
    def config(self) -> Dict:
        return self.runs[0].config

    @property
    def method(self) -> str:
        return self.runs[0].method

    @property
    def val_images(self) -> int:
        return self.runs[0].val_images  # --val_images defines a group: every run of it chose alike

    @property
    def selection(self) -> str:
        return self.runs[0].selection


@dataclass
class LeftOut:
    """An input main_report.py could not use, and why: named on stderr and counted under the tables."""
    path: str
    reason: str
    consequence: str = "left out"  # what of the runs goes with it

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}; {self.consequence}"


@dataclass
class Found:
    runs: List[Run]
    left_out: List[LeftOut]


def unreadable(exc: Exception) -> str:
    """Why a file could not be used, in a few words."""
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror or exc})"
    return str(exc)


def read_json(path: str) -> Optional[Dict]:
    """The JSON object in `path`, or None when there is none to read (pipeline/plan.py: not started yet)."""
    try:
        value = load_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def load_history(path: str) -> List[Dict[str, float]]:
    """results.csv's rows as numbers (an empty cell: NaN); [] when there is none. ValueError when it is not
    UTF-8 CSV with a numeric "epoch" in every row."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            lines = list(reader)
            columns = reader.fieldnames
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except csv.Error as exc:
        raise ValueError(f"not CSV ({exc})") from None
    if columns is None:
        raise ValueError("empty: not even the header of the columns")
    if "epoch" not in columns:
        raise ValueError('no "epoch" column')
    rows = []
    for number, line in enumerate(lines, start=2):
        parsed = {}
        for key, value in line.items():
            if not isinstance(key, str):  # cells beyond the header's columns
                continue
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError):
                parsed[key] = math.nan
        if not math.isfinite(parsed["epoch"]):
            raise ValueError(f"line {number}: epoch {line['epoch']!r} is not a number")
        rows.append(parsed)
    return rows


def read_history(path: str) -> List[Dict[str, float]]:
    """load_history, or [] when the file cannot be used (pipeline/plan.py: no epoch to resume after)."""
    try:
        return load_history(path)
    except (OSError, ValueError):
        return []


# What the tables and figures read from config.json, and what each must be (None: absent or null allowed).
CONFIG_TYPES = {"method": (str,), "dataset": (str,), "model": (str,), "seed": (int, None), "swa_start": (int, None),
                "val_images": (int, None),
                "teacher_model": (str, None), "teacher_sha256": (str, None), "teacher_st_sha256": (str, None),
                "teacher_path": (str, None), "teacher_st_path": (str, None)}


def check_config(config) -> Dict:
    """`config` if it is a run's record with each entry main_report.py reads of its type, else ValueError."""
    if not isinstance(config, dict):
        raise ValueError(f"its value is {shown(config)}, not a JSON object")
    for key, types in CONFIG_TYPES.items():
        value = config.get(key)
        if value is None and None in types:
            continue
        if not isinstance(value, tuple(t for t in types if t is not None)) or isinstance(value, bool):
            what = "a name" if str in types else "an integer"
            raise ValueError(f'"{key}" is {shown(value)}, not {what}' + (" or null" if None in types else ""))
    return config


def of_checkpoint(report: Dict, checkpoint: str, sha256: str) -> None:
    """ValueError unless `report` evaluated the file `checkpoint` as it is now (sha256; its path may have
    moved with the run folder)."""
    recorded, path = report["checkpoint"]["sha256"], report["checkpoint"]["path"]
    if recorded == sha256:
        return
    if same_file(path, checkpoint):
        raise ValueError(f"evaluates an earlier version of {checkpoint} (sha256 {recorded[:12]}; the file is now "
                         f"{sha256[:12]}): evaluate it again")
    raise ValueError(f"is the report of another checkpoint, {path} (sha256 {recorded[:12]}), not of this run's "
                     f"{checkpoint} (sha256 {sha256[:12]})")


def read_run(folder: str, checkpoint: Optional[str], left_out: List[LeftOut]) -> Optional[Run]:
    """The run in `folder` with the reports of its `checkpoint` that are of that file as it is now; what
    cannot be used goes to `left_out` (config.json: the whole run)."""
    config_path = os.path.join(folder, "config.json")
    try:
        config = check_config(load_json(config_path))
    except (OSError, ValueError) as exc:
        left_out.append(LeftOut(config_path, unreadable(exc), "the run folder is left out"))
        return None
    history_path = os.path.join(folder, "results.csv")
    try:
        history = load_history(history_path)
    except (OSError, ValueError) as exc:
        left_out.append(LeftOut(history_path, unreadable(exc), "the run's training curves are left out"))
        history = []
    run = Run(folder, config, history)
    name = checkpoint or reported_checkpoint(run.method, config.get("swa_start", 0))
    checkpoint_path = os.path.join(folder, name)
    defaults = {f"{checkpoint_path}.eval.{protocol}.json" for protocol in PROTOCOLS}  # main_eval.py's --out
    paths = sorted(glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(name)}.eval.*.json")),
                   key=lambda p: (p not in defaults, p))
    sha256 = None
    for path in paths:
        try:
            report = check_report(load_json(path))
            if sha256 is None:
                if not os.path.isfile(checkpoint_path):
                    raise ValueError(f"cannot be checked against its checkpoint: {checkpoint_path} is missing")
                sha256 = sha256_of(checkpoint_path)
            of_checkpoint(report, checkpoint_path, sha256)
        except (OSError, ValueError) as exc:
            left_out.append(LeftOut(path, unreadable(exc)))
            continue
        protocol = report["protocol"]
        if protocol in run.reports:
            left_out.append(LeftOut(path, f"a second report of the {protocol} protocol of {name}; the table takes "
                                          f"{run.report_paths[protocol]}"))
            continue
        run.reports[protocol], run.report_paths[protocol] = report, path
    return run


def run_of_report(path: str, report: Dict) -> Run:
    """A report evaluated outside a run folder (a published checkpoint, say): its settings are what
    the report says of the checkpoint."""
    labels, checkpoint = report.get("labels") or {}, report["checkpoint"]
    method = labels.get("method") or checkpoint.get("method")
    config = {"dataset": report["dataset"], "model": report["model"],
              "method": method if isinstance(method, str) else os.path.basename(path),
              "teacher_model": labels.get("teacher_model"), "checkpoint_sha256": checkpoint["sha256"]}
    return Run(os.path.dirname(path), config, [], {report["protocol"]: report}, {report["protocol"]: path})


def find_runs(inputs: Sequence[str], checkpoint: Optional[str] = None) -> Found:
    """Runs from run folders, folders above them, glob patterns, or evaluation reports' paths; a run
    folder contributes the reports of `checkpoint` (default: reported_checkpoint of its method) that
    evaluated that file. Every input that cannot be used is in .left_out, with the reason."""
    found = Found([], [])
    seen = set()
    for given in inputs:
        matches = sorted(glob.glob(given)) if glob.has_magic(given) else [given]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise UserError(f"{given}: no such run folder, evaluation report or pattern")
        for path in matches:
            runs = []
            if os.path.isfile(path):
                try:
                    report = load_json(path)
                except (OSError, ValueError) as exc:
                    raise UserError(f"{path} is not an evaluation report of main_eval.py ({unreadable(exc)})") from None
                if not isinstance(report, dict) or report.get("format") not in (REPORT_FORMAT, *OLDER_FORMATS):
                    raise UserError(f"{path} is not an evaluation report of main_eval.py (format {REPORT_FORMAT})")
                try:
                    runs.append(run_of_report(path, check_report(report)))
                except ValueError as exc:
                    found.left_out.append(LeftOut(path, str(exc)))
            else:
                def named(exc: OSError) -> None:
                    found.left_out.append(LeftOut(exc.filename, unreadable(exc), "the folders in it are left out"))
                for folder, names, files in os.walk(path, onerror=named):
                    names.sort()
                    if "config.json" in files:
                        run = read_run(folder, checkpoint, found.left_out)
                        if run is not None:
                            runs.append(run)
            for run in runs:
                marker = (os.path.abspath(run.folder), tuple(sorted(run.reports)))
                if marker not in seen:
                    seen.add(marker)
                    found.runs.append(run)
    if not found.runs and not found.left_out:
        raise UserError(f"no run folder (with config.json) or evaluation report under {', '.join(inputs)}")
    return found


def setting_text(key: str, config: Dict, siblings: Sequence[Dict]) -> str:
    """How a group's label names the setting `key` that tells it from its `siblings` ('alpha 0.5'); a
    teacher by its file's name where no sibling with another file has that name, else by 8 hex of its
    sha256; other hashes by their 8 first hex."""
    value = config.get(key, ADDED_DEFAULTS.get(key))  # a run recorded before the setting existed had its default
    if key == "val_images":
        return selection_text(value)
    if key in TEACHERS:
        title, path_key = TEACHERS[key]
        if value is None:
            return f"{title} none"
        name = os.path.basename(str(config.get(path_key) or ""))
        clash = any(os.path.basename(str(other.get(path_key) or "")) == name for other in siblings
                    if other.get(key) != value)
        return f"{title} {name if name and not clash else str(value)[:8]}"
    if key.endswith("sha256") and isinstance(value, str):
        return f"{key} {value[:8]}"
    return f"{key} {value}"


def group_runs(runs: Sequence[Run], method_order: Sequence[str]) -> List[Group]:
    """Runs grouped by everything but the seed, in `method_order`; a method with several groups gets
    the settings that tell them apart in its label ('DGAD (alpha 0.5)')."""
    by_key: Dict[Tuple, List[Run]] = {}
    for run in runs:
        by_key.setdefault(run.key(), []).append(run)
    groups = [sorted(members, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))
              for members in by_key.values()]
    for members in groups:
        seeds = [r.seed for r in members if r.seed is not None]
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            folders = ", ".join(r.folder for r in members if r.seed in twice)
            warn(f"{members[0].method}: seed {', '.join(map(str, twice))} appears more than once ({folders}): the "
                 f"same run counted twice? Pass each run folder once")
    rank = {name: i for i, name in enumerate(method_order)}
    result = []
    for members in groups:
        method = members[0].method
        siblings = [g for g in groups if g[0].method == method]
        label = method
        if len(siblings) > 1:
            keys = [dict(s[0].key()) for s in siblings]
            mine = dict(members[0].key())
            differing = sorted(k for k in set().union(*keys) if any(other.get(k) != mine.get(k) for other in keys))
            label += " (" + ", ".join(setting_text(k, members[0].config, [s[0].config for s in siblings])
                                      for k in differing) + ")"
        result.append(Group(label, members))
    result.sort(key=lambda g: (g.config.get("dataset") or "", g.config.get("model") or "",
                               rank.get(g.method, len(rank)), g.label))
    return result
