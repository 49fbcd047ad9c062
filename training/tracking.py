"""Live tracking of a run (--tensorboard, --wandb): one interface, `Trackers`, that the loop calls at every step
and at every epoch's end, whatever is behind it (nothing, TensorBoard, Weights & Biases, or both). Only
process 0 of a distributed job tracks.

Each epoch logs every results.csv column of its row; every LOSS_EVERY optimizer steps, the step's training
loss. Both are logged against the global step (batches since the run began, replayed ones included), so a
resumed run continues the same axis. The loss is read without a host sync: copied to pinned memory at its
step and read LOSS_EVERY steps later, when the device is long past it (training.finite.HostCopy)."""
import contextlib
import importlib.util
import json
import os
import secrets
from typing import Dict, List, Optional, Sequence

import torch

from runtime.errors import UserError

from .finite import HostCopy

LOSS_EVERY = 50
LOSS_TAG = "train_loss_step"  # the step's loss, beside results.csv's columns (its train_loss is the epoch's mean)
WANDB_ID_FILE = "wandb_run_id"  # the run's W&B id, so that a resume continues the same W&B run
EVENT_FILE_PREFIX = "events.out.tfevents."  # TensorBoard's event files, written into the run folder
INSTALL = "pip install -r requirements-tracking.txt"
PACKAGES = {"tensorboard": ("--tensorboard", "tensorboard==2.21.0"), "wandb": ("--wandb", "wandb==0.31.0")}


def require_trackers(tensorboard: bool, wandb_project: Optional[str]) -> None:
    """The packages the asked trackers need are installed; else one line with the command that installs them.
    Only looked up here (importing wandb takes seconds): the run imports them when it opens them."""
    for package, asked in (("tensorboard", tensorboard), ("wandb", wandb_project is not None)):
        if asked and importlib.util.find_spec(package) is None:
            flag, pinned = PACKAGES[package]
            raise UserError(f"{flag} needs the {package} package, which is not installed: {INSTALL} (or pip install "
                            f"{pinned}), or leave {flag} out")


class Tracker:
    """What every tracker does; this one nothing."""

    def log(self, values: Dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, folder: str, purge_step: Optional[int]):
        """purge_step: a resumed run's first step; TensorBoard hides what the stopped run logged from there on."""
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)

    def log(self, values: Dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # live: the event file is current after every epoch and every loss

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, folder: str, project: str, record: Dict, fresh: bool):
        """A fresh run takes a new W&B id and keeps it in the run folder; a resumed one continues that W&B run.
        W&B keeps the first value it received for a step: an epoch that a resume runs again (after kill -9) is
        not logged twice."""
        import wandb
        id_file = os.path.join(folder, WANDB_ID_FILE)
        if fresh or not os.path.isfile(id_file):
            from runtime.checkpoints import atomic_write_text
            atomic_write_text(id_file, secrets.token_hex(8) + "\n")
        with open(id_file, encoding="utf-8") as f:
            run_id = f.read().strip()
        try:
            self.run = wandb.init(project=project, id=run_id, resume="allow", dir=folder,
                                  name=os.path.basename(os.path.abspath(folder)),
                                  config=json.loads(json.dumps(record, default=str)),
                                  settings=wandb.Settings(console="off", quiet=True, silent=True))
        except Exception as exc:  # wandb's own errors (no login, no network) are many classes
            raise UserError(f"--wandb {project}: W&B did not start ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); log in with wandb login, "
                            f"or set WANDB_MODE=offline to log into the run folder, or leave --wandb out") from None

    def log(self, values: Dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The run's trackers behind one interface. `step` takes every optimizer step's loss; `epoch` every
    epoch's row."""

    def __init__(self, trackers: Sequence[Tracker] = (), fields: Sequence[str] = ()):
        self.trackers: List[Tracker] = list(trackers)
        self.fields = list(fields)  # results.csv's columns
        self.pending: List = []  # (step, HostCopy of its loss) not logged yet

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, values: Dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step)

    def step(self, global_step: int, loss: torch.Tensor) -> None:
        """After optimizer step `global_step` (1-based): every LOSS_EVERY steps, queue the loss's copy to the
        host, and log the one queued before it (read by now without waiting)."""
        if not self.trackers or global_step % LOSS_EVERY:
            return
        self.flush()
        self.pending.append((global_step, HostCopy(loss)))

    def flush(self) -> None:
        """Log the queued losses (at the end of an epoch, and before a stop)."""
        for step, value in self.pending:
            self.log({LOSS_TAG: value.ready().item()}, step)
        self.pending = []

    def epoch(self, row: Dict, global_step: int) -> None:
        """The epoch's results.csv row, every column it has a number in, at the epoch's last step."""
        if not self.trackers:
            return
        self.flush()
        self.log({name: float(row[name]) for name in self.fields if isinstance(row.get(name), (int, float))},
                 global_step)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # what the run saved matters more than the last log line
            self.flush()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def open_trackers(config, folder: str, record: Dict, fields: Sequence[str], fresh: bool, resume_step: int,
                  writer: bool = True) -> Trackers:
    """The trackers the flags ask for (none in the processes of a distributed job but process 0). resume_step:
    the global steps already taken (0 for a fresh run)."""
    if not writer or not (config.tensorboard or config.wandb):
        return Trackers()
    trackers: List[Tracker] = []
    try:
        if config.tensorboard:
            trackers.append(TensorBoardTracker(folder, None if fresh else resume_step + 1))
        if config.wandb:
            trackers.append(WandbTracker(folder, config.wandb, record, fresh))
    except (ImportError, UserError) as exc:
        for tracker in trackers:  # the ones opened before: closed, not left half-written
            tracker.close()
        if isinstance(exc, UserError):
            raise
        raise UserError(f"cannot import the tracking package ({exc}): {INSTALL}") from None
    return Trackers(trackers, fields)


def tracking_files(folder: str) -> List[str]:
    """The tracking files in a run folder, which a fresh run (--overwrite) removes with the run it replaces."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.startswith(EVENT_FILE_PREFIX) or name == WANDB_ID_FILE]
