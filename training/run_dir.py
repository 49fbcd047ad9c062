"""A run's folder: the policy for --save_dir (never clobber a run, never leave a trace of one that
failed to start), config.json, results.csv, the one checkpoint payload, and resume."""
import contextlib
import csv
import datetime
import fcntl
import io
import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from runtime.checkpoints import atomic_save, atomic_write_json, atomic_write_text, safe_load
from runtime.errors import UserError

from .config import ADDED_DEFAULTS, OPERATIONAL_FLAGS
from .networks import Trainee
from .selection import FINAL_FILE, evaluation_split, measured_on, selection_text
from .swa import AVERAGE_FILES, SWA
from .tracking import tracking_files

SWA_LAST, SWA_BEST = AVERAGE_FILES[SWA]  # the weight average's (--swa_start)
CHECKPOINT_FILES = ("last.pth", "best_PGD10_acc_model.pth", "best_clean_acc_model.pth", "results.csv",
                    *(name for files in AVERAGE_FILES.values() for name in files), FINAL_FILE)
LOCK_FILE = ".lock"  # exists while a process holds the run folder; says which one
RESULT_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "test_clean_acc", "test_PGD10_acc",
                 "test_variance_gap", "test_clean_acc_worst_class", "test_PGD10_acc_worst_class", "epoch_seconds",
                 "images_per_second"]
# A resume may change the operational flags and the provenance of the code it runs on. Every other
# entry of the run's record (each flag, the teacher's sha256, the image counts) defines the run, and
# a resume that changes one is refused.
# How many processes trained it, and so what each BatchNorm normalised over, may change too.
OPERATIONAL = OPERATIONAL_FLAGS | {"recipe_source", "git_commit", "torch_version", "device", "paper", "summary",
                                   "world_size", "batch_norm"}


def identity_differences(saved: Dict, record: Dict) -> List[str]:
    """'--epsilon 8 (now 4)' for each defining entry whose value differs between two records."""
    def plain(value):
        return json.loads(json.dumps(value, default=str))  # tuples and lists compare alike
    found = []
    for key in sorted(set(saved) | set(record)):
        before = saved.get(key, ADDED_DEFAULTS.get(key))
        if key in OPERATIONAL or plain(before) == plain(record.get(key)):
            continue
        name = {"teacher_sha256": "teacher file sha256", "teacher_st_sha256": "natural teacher file sha256",
                "val_sha256": "held-out images (sha256 of their indices)"}.get(key, f"--{key}")
        found.append(f"{name} {before!r} (now {record.get(key)!r})")
    return found


def result_fields(parts: Sequence[str], averages: Sequence[str] = (), split: str = "test") -> List[str]:
    """results.csv's columns: the fixed ones, each weight average's accuracies (swa: --swa_start, empty
    before it starts; ema: --ema), then the method's loss parts as train_<part>. The per-epoch evaluation's
    columns are named after the split it measured (test_*, or val_* with --val_images)."""
    averaged = [f"test_{measure}_{name}" for name in averages for measure in ("clean_acc", "PGD10_acc")]
    return [measured_on(name, split) for name in RESULT_FIELDS + averaged] + [f"train_{part}" for part in parts]


@dataclass
class RunState:
    epoch: int = 0  # completed epochs
    best_pgd: float = -1.0
    best_clean: float = -1.0
    best_pgd_swa: float = -1.0
    best_pgd_ema: float = -1.0
    history: List[Dict] = field(default_factory=list)


def checkpoint_payload(trainee: Trainee, row: Optional[Dict], record: Dict, resume: Optional[Dict] = None,
                       average: Optional[str] = None) -> Dict:
    """Every checkpoint's payload. The authors' keys {'net', 'clean_acc', 'PGD10_acc', 'epoch'} (the
    numbers of epoch `row`; None before the first epoch ends) are what the field's tools read;
    'arch', 'num_classes' and 'config' say what the weights are. `resume` adds what last.pth needs.
    average: the student's weight average of that name (swa, ema) and its numbers instead. With --val_images
    the numbers are the held-out images' ('selected_on' says so)."""
    suffix = f"_{average}" if average else ""
    net = {a.name: a for a in trainee.averages}[average].model.module if average else trainee.student
    split = evaluation_split(record.get("val_images"))
    payload = {"net": net.state_dict(),
               "clean_acc": row[f"{split}_clean_acc" + suffix] if row else None,
               "PGD10_acc": row[f"{split}_PGD10_acc" + suffix] if row else None,
               "epoch": row["epoch"] if row else 0,
               "arch": record["model"], "num_classes": record["num_classes"], "config": record}
    if trainee.extra is not None and not average:
        payload["extra"] = trainee.extra.state_dict()
    if record.get("val_images"):
        payload["selected_on"] = selection_text(record["val_images"])
    payload.update(resume or {})
    return payload


class RunDirectory:
    def __init__(self, path: str, fields: Sequence[str], resume: bool, overwrite: bool, writer: bool = True):
        """Refuse to clobber a run, and find an unwritable folder before any work is done.
        Nothing is created here: a run that fails to start leaves no trace.

        writer: False in the processes of a distributed job other than process 0, which make the
        same checks and read what a resume needs but write nothing (docs/distributed.md)."""
        self.root, self.fields, self.record, self.writer = path, list(fields), None, writer
        existing = [f for f in CHECKPOINT_FILES if os.path.exists(self.file(f))]
        if existing and not (resume or overwrite):
            raise UserError(f"{path} already holds a run ({', '.join(existing)}); pass --resume to "
                            f"continue it, --overwrite to replace it, or choose another --save_dir")
        folder = os.path.abspath(path)
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"--save_dir {path} is not writable ({folder} is not a writable folder); "
                            f"choose another --save_dir")

    def file(self, name: str) -> str:
        return os.path.join(self.root, name)

    @contextlib.contextmanager
    def claimed(self):
        """One process per run folder: an exclusive lock on <save_dir>/.lock for as long as the run
        lives. The OS drops the lock when the process dies, so a killed run never blocks its own
        resume; a second process on a busy folder is refused, naming the holder. Process 0 holds it
        for a distributed job."""
        if not self.writer:
            yield
            return
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create --save_dir {self.root}: {exc.strerror}") from exc
        path = self.file(LOCK_FILE)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "a process starting up"
                os.close(fd)
                raise UserError(f"--save_dir {self.root} is in use by another run ({holder}); wait for it to "
                                f"end, or choose another --save_dir") from None
            try:
                same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # its holder removed it while we opened it: take the new one
        for name in os.listdir(self.root):  # what a killed save left: no process writes here but this one
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.file(name))
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {started}: {shlex.join(sys.argv)}"
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode("utf-8"))
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)

    def resume(self, trainee: Trainee, config, record: Dict) -> Tuple[RunState, Optional[Dict]]:
        """Restore `trainee` from last.pth; the run's state and, after a signal, the unfinished
        epoch's cursor. Without last.pth, a new run. A last.pth of another run (any defining
        setting of `record` differs) is refused before anything is touched."""
        last = self.file("last.pth")
        if not os.path.exists(last):
            print(f"--resume: no last.pth in {self.root}; starting a new run", flush=True)
            return RunState(), None
        # On the CPU: generator states must be CPU tensors; weights and optimiser state are copied
        # onto their parameters' device as they load.
        payload = safe_load(last, map_location="cpu")
        differences = identity_differences(payload.get("config", {}), record)
        if differences:
            raise UserError(f"--resume: {last} is another run: {'; '.join(differences)}; resume with the original "
                            f"arguments, or start this run in another --save_dir")
        trainee.load(payload, last, config.model)
        best = payload["best"]
        state = RunState(payload["epoch"], best["PGD10_acc"], best["clean_acc"], best.get("PGD10_acc_swa", -1.0),
                         best.get("PGD10_acc_ema", -1.0), list(payload["history"]))
        # Rows of an epoch that finished after last.pth was written are dropped: it will run again.
        self.write_results(state.history)
        cursor = payload.get("in_progress")
        where = f"in epoch {cursor['epoch']} after step {cursor['step']}" if cursor else f"after epoch {state.epoch}"
        print(f"resumed {self.root} {where}", flush=True)
        return state, cursor

    def open(self, record: Dict, fresh: bool) -> None:
        """Write config.json in the claimed folder; a fresh run (--overwrite) first removes every
        file of the run it replaces."""
        self.record = record
        if not self.writer:
            return
        if fresh:  # the replaced run's tracking files too: its event file would mix into the new run's curves
            for path in [self.file(name) for name in CHECKPOINT_FILES] + tracking_files(self.root):
                if os.path.exists(path):
                    os.unlink(path)
        atomic_write_json(self.file("config.json"), record)

    def final_measured(self) -> bool:
        """Whether final.json is there: the test set measured the checkpoints of a --val_images run."""
        return os.path.isfile(self.file(FINAL_FILE))

    def write_results(self, rows: List[Dict]) -> None:
        if not self.writer:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.file("results.csv"), buffer.getvalue())

    def save_best(self, name: str, trainee: Trainee, row: Dict, average: Optional[str] = None) -> None:
        if not self.writer:
            return
        atomic_save(checkpoint_payload(trainee, row, self.record, average=average), self.file(name))

    def save_last(self, trainee: Trainee, state: RunState, cursor: Optional[Dict] = None) -> None:
        """last.pth: all a resume needs. `cursor` marks a save in the middle of an epoch."""
        if not self.writer:
            return
        resume = dict(trainee.resume_state(), best={"PGD10_acc": state.best_pgd, "clean_acc": state.best_clean,
                                                    "PGD10_acc_swa": state.best_pgd_swa,
                                                    "PGD10_acc_ema": state.best_pgd_ema},
                      history=state.history, in_progress=cursor)
        row = state.history[-1] if state.history else None
        atomic_save(checkpoint_payload(trainee, row, self.record, resume), self.file("last.pth"))
