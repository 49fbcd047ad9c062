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

from evaluation.report import REPORT_FORMAT
from runtime.errors import UserError, warn
from training.config import ADDED_DEFAULTS
from training.run_dir import OPERATIONAL

BEST_PGD, BEST_CLEAN = "best_PGD10_acc_model.pth", "best_clean_acc_model.pth"
# Entries of config.json that do not separate two groups: the seed (aggregated over), where and how
# fast a run ran (training.run_dir.OPERATIONAL), and what follows from the method.
NOT_DEFINING = OPERATIONAL | {"seed", "loss_parts", "teacher_sha256", "teacher_st_sha256"}


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

    @property
    def method(self) -> str:
        return str(self.config.get("method", "unknown"))

    @property
    def seed(self):
        return self.config.get("seed")

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


def read_json(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_history(path: str) -> List[Dict[str, float]]:
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    parsed[key] = math.nan
            rows.append(parsed)
    return rows


def is_report(data: Optional[Dict]) -> bool:
    return data is not None and data.get("format") == REPORT_FORMAT


def read_run(folder: str, checkpoint: Optional[str]) -> Optional[Run]:
    config = read_json(os.path.join(folder, "config.json"))
    if config is None:
        return None
    run = Run(folder, config, read_history(os.path.join(folder, "results.csv")))
    checkpoint = checkpoint or reported_checkpoint(run.method, config.get("swa_start", 0))
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), f"{checkpoint}.eval.*.json"))):
        report = read_json(path)
        if is_report(report):
            run.reports[report["protocol"]] = report
    return run


def run_of_report(path: str, report: Dict) -> Run:
    """A report evaluated outside a run folder (a published checkpoint, say): its settings are what
    the report says of the checkpoint."""
    labels, checkpoint = report.get("labels") or {}, report.get("checkpoint") or {}
    config = {"dataset": report.get("dataset"), "model": report.get("model"),
              "method": labels.get("method") or checkpoint.get("method") or os.path.basename(path),
              "teacher_model": labels.get("teacher_model"), "checkpoint_sha256": checkpoint.get("sha256")}
    return Run(os.path.dirname(path), config, [], {report["protocol"]: report})


def find_runs(inputs: Sequence[str], checkpoint: Optional[str] = None) -> List[Run]:
    """Runs from run folders, folders above them, glob patterns, or evaluation reports' paths; a run
    folder contributes the reports of `checkpoint` (default: reported_checkpoint of its method)."""
    runs, seen = [], set()
    for given in inputs:
        matches = sorted(glob.glob(given)) if glob.has_magic(given) else [given]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise UserError(f"{given}: no such run folder, evaluation report or pattern")
        for path in matches:
            found = []
            if os.path.isfile(path):
                report = read_json(path)
                if not is_report(report):
                    raise UserError(f"{path} is not an evaluation report of main_eval.py (format {REPORT_FORMAT})")
                found.append(run_of_report(path, report))
            else:
                for folder, names, files in os.walk(path):
                    names.sort()
                    if "config.json" in files:
                        run = read_run(folder, checkpoint)
                        if run is not None:
                            found.append(run)
            for run in found:
                marker = (os.path.abspath(run.folder), tuple(sorted(run.reports)))
                if marker not in seen:
                    seen.add(marker)
                    runs.append(run)
    if not runs:
        raise UserError(f"no run folder (with config.json) or evaluation report under {', '.join(inputs)}")
    return runs


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
            label += " (" + ", ".join(f"{k} {members[0].config.get(k)}" for k in differing) + ")"
        result.append(Group(label, members))
    result.sort(key=lambda g: (g.config.get("dataset") or "", g.config.get("model") or "",
                               rank.get(g.method, len(rank)), g.label))
    return result
