"""The training engine shared by main.py and main_tiny.py: data, student and teacher, SGD and
its schedule, the method's step, per-epoch clean + PGD-10 evaluation, checkpoints and logs."""
import contextlib
import csv
import io
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_weights, safe_load
from .data import TrainBatches, dataset_info, load_split
from .errors import UserError
from .evaluation import FeatureMoments, attack_accuracy, pgd_ce_attack
from .methods import get_method, method_names, training_step
from .models import build_model
from .precision import autocast_factory, prepare_batch, prepared_from_cfg
from .runtime import (capture_rng_state, configure_determinism, device_name, git_commit, make_generator, resolve_device,
                      restore_rng_state, seed_everything)

RESULT_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "test_clean_acc", "test_PGD10_acc",
                 "test_variance_gap", "epoch_seconds", "images_per_second"]
CHECKPOINT_FILES = ("last.pth", "best_PGD10_acc_model.pth", "best_clean_acc_model.pth", "results.csv")
SCHEDULES = ("piecewise", "cosine", "constant")


def learning_rate(schedule: str, lr_max: float, epoch: int, epochs: int) -> float:
    """lr for 0-based `epoch`. piecewise: lr_max, then x0.1 from 50% and x0.01 from 75% of the epochs."""
    if schedule == "piecewise":
        if epoch < epochs * 0.5:
            return lr_max
        return lr_max * (0.1 if epoch < epochs * 0.75 else 0.01)
    if schedule == "cosine":
        return 0.5 * lr_max * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "constant":
        return lr_max
    raise ValueError(f"unknown lr schedule {schedule!r}")


def results_csv(rows: List[Dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def teacher_missing_message(cfg) -> str:
    make_one = (f"or train one here: python main.py --dataset {cfg.dataset} --model {cfg.teacher_model} "
                f"--method TRADES, then pass its best_PGD10_acc_model.pth as --teacher_path"
                if "TRADES" in method_names() else
                "or train one with --method TRADES once the baselines land (a later release)")
    return (f"teacher checkpoint not found: {cfg.teacher_path}. Put a robust {cfg.teacher_model} for "
            f"{cfg.dataset} there or pass --teacher_path; published teachers and where to download them "
            f"are listed in checkpoints/README.md, {make_one}")


def load_teacher(cfg, num_classes: int, device) -> nn.Module:
    if not os.path.isfile(cfg.teacher_path):
        raise UserError(teacher_missing_message(cfg))
    teacher = build_model(cfg.teacher_model, num_classes)
    load_weights(teacher, cfg.teacher_path, name=f"teacher {cfg.teacher_model}", path=cfg.teacher_path)
    return teacher.to(device).eval().requires_grad_(False)


class NonFiniteLoss(UserError):
    pass


class RunInterrupted(Exception):
    """Raised after last.pth is saved in answer to SIGINT/SIGTERM."""

    def __init__(self, signal_name: str, epoch: int, step: Optional[int]):
        where = f"in epoch {epoch} after step {step}" if step is not None else f"after epoch {epoch}"
        super().__init__(f"stopped by {signal_name} {where}; last.pth is saved")
        self.exit_code = 128 + int(getattr(signal, signal_name))


class FiniteCheck:
    """Reads a step's is-finite flag without stalling the GPU: the flag is copied to pinned host
    memory behind the step's work and read one step later, when it is long done."""

    def __init__(self, finite: torch.Tensor, epoch: int, step: int):
        self.epoch, self.step = epoch, step
        if finite.is_cuda:
            self.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.flag.copy_(finite, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.flag, self.event = finite, None

    def check(self):
        if self.event is not None:
            self.event.synchronize()
        if not bool(self.flag):
            raise NonFiniteLoss(f"non-finite loss at epoch {self.epoch} step {self.step}: stopped, and the last "
                                f"good checkpoint is untouched (last.pth holds epoch {self.epoch - 1}); lower "
                                f"--lr_max, check the teacher, or pass --nan_policy skip")


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """SGD with the run's lr_max, momentum and weight decay on every parameter (SPEC section 0)."""
    return torch.optim.SGD(params, lr=cfg.lr_max, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class RunState:
    epoch: int = 0  # completed epochs
    best_pgd: float = -1.0
    best_clean: float = -1.0
    history: Optional[List[Dict]] = None


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.method = get_method(cfg.method)
        self.info = dataset_info(cfg.dataset)
        self.device = resolve_device(cfg.gpu_id)
        self._check_save_dir()
        configure_determinism(cfg.deterministic)
        seed_everything(cfg.seed)
        self.generator = make_generator(self.device, cfg.seed)
        if self.method.needs_teacher and not os.path.isfile(cfg.teacher_path):
            raise UserError(teacher_missing_message(cfg))  # before minutes of data loading
        self.train_split = load_split(cfg.dataset, cfg.data_dir, "train", self.device, cfg.train_subset, cfg.download)
        self.test_split = load_split(cfg.dataset, cfg.data_dir, "test", self.device, cfg.test_subset, cfg.download)
        self.student = build_model(cfg.model, self.info.num_classes).to(self.device)
        self.teacher = load_teacher(cfg, self.info.num_classes, self.device) if self.method.needs_teacher else None
        self.extra = self.method.extra_module(self.student, self.teacher)
        params = list(self.student.parameters())
        if self.extra is not None:
            self.extra.to(self.device)
            params += list(self.extra.parameters())
        self.optimizer = build_optimizer(cfg, params)
        # What the step runs: bf16 autocast or none, and the networks in channels_last / compiled
        # (a compiled wrapper shares the parameters; checkpoints are written from self.student).
        self.autocast = autocast_factory(cfg.precision, self.device)
        self.step_student = prepared_from_cfg(self.student, cfg)
        self.step_teacher = prepared_from_cfg(self.teacher, cfg)
        self.batches = TrainBatches(self.train_split, cfg.bs, self.generator)
        self.state = RunState(history=[])
        self.eval_attack = pgd_ce_attack(cfg.epsilon / 255, cfg.step_size / 255, 10)
        self.eval_bs = cfg.eval_bs
        self.stop_signal: Optional[str] = None
        self.skipped_steps = 0
        self.config = self._config_record()  # constant for the run: computed (and git asked) once

    # -- files -------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.cfg.save_dir, name)

    def _check_save_dir(self):
        """Refuse to clobber a run, and find an unwritable --save_dir before any work is done.
        Nothing is created here: a run that fails to start leaves no trace."""
        cfg = self.cfg
        existing = [f for f in CHECKPOINT_FILES if os.path.exists(self.path(f))]
        if existing and not (cfg.resume or cfg.overwrite):
            raise UserError(f"{cfg.save_dir} already holds a run ({', '.join(existing)}); pass --resume to "
                            f"continue it, --overwrite to replace it, or choose another --save_dir")
        folder = os.path.abspath(cfg.save_dir)
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"--save_dir {cfg.save_dir} is not writable ({folder} is not a writable folder); "
                            f"choose another --save_dir")

    def _create_save_dir(self, fresh: bool):
        try:
            os.makedirs(self.cfg.save_dir, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create --save_dir {self.cfg.save_dir}: {exc.strerror}") from exc
        if fresh:  # --overwrite: no file of the old run may outlive the start of the new one
            for name in CHECKPOINT_FILES:
                if os.path.exists(self.path(name)):
                    os.unlink(self.path(name))

    def _config_record(self) -> Dict:
        record = dict(vars(self.cfg))
        record.update(self.method.describe())
        record.update({"git_commit": git_commit(), "torch_version": str(torch.__version__),
                       "device": device_name(self.device), "num_classes": self.info.num_classes,
                       "train_images": len(self.train_split), "test_images": len(self.test_split)})
        return record

    def save_best(self, name: str, row: Dict):
        payload = {"net": self.student.state_dict(), "clean_acc": row["test_clean_acc"], "PGD10_acc": row["test_PGD10_acc"],
                   "epoch": row["epoch"], "arch": self.cfg.model, "num_classes": self.info.num_classes,
                   "config": self.config}
        if self.extra is not None:
            payload["extra"] = self.extra.state_dict()
        atomic_save(payload, self.path(name))

    def save_last(self, in_progress: Optional[Dict] = None):
        """last.pth: all a resume needs. `in_progress` marks a save in the middle of an epoch."""
        payload = {"in_progress": in_progress, "net": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "epoch": self.state.epoch, "best_PGD10_acc": self.state.best_pgd,
                   "best_clean_acc": self.state.best_clean, "history": self.state.history,
                   "rng": capture_rng_state(self.generator), "config": self.config,
                   "arch": self.cfg.model}
        if self.extra is not None:
            payload["extra"] = self.extra.state_dict()
        atomic_save(payload, self.path("last.pth"))

    def resume(self) -> bool:
        last = self.path("last.pth")
        if not os.path.exists(last):
            print(f"--resume: no last.pth in {self.cfg.save_dir}; starting a new run", flush=True)
            return None
        payload = safe_load(last, map_location=self.device)
        saved = payload.get("config", {})
        for key in ("method", "model", "teacher_model", "dataset", "bs", "epochs"):
            if key in saved and saved[key] != getattr(self.cfg, key):
                raise UserError(f"--resume: {last} was made with --{key} {saved[key]}, not {getattr(self.cfg, key)}; "
                                f"use the original arguments or another --save_dir")
        load_weights(self.student, payload, name=self.cfg.model, path=last)
        if self.extra is not None:
            self.extra.load_state_dict(payload["extra"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = RunState(payload["epoch"], payload["best_PGD10_acc"], payload["best_clean_acc"],
                              list(payload["history"]))
        restore_rng_state(payload["rng"], self.generator)
        # Rows of an epoch that finished after last.pth was written are dropped: it will run again.
        atomic_write_text(self.path("results.csv"), results_csv(self.state.history))
        in_progress = payload.get("in_progress")
        where = (f"in epoch {in_progress['epoch']} after step {in_progress['step']}" if in_progress
                 else f"after epoch {self.state.epoch}")
        print(f"resumed {self.cfg.save_dir} {where}", flush=True)
        return in_progress

    # -- loop --------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, lr: float, progress: Optional[Dict] = None):
        """One pass over the training set. `progress` (from an interrupted run's last.pth) skips the
        steps already taken and restores the accumulators, so the epoch ends exactly as unbroken."""
        from tqdm import tqdm
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if progress is None:
            progress = {"step": 0, "seen": 0, "loss_sum": torch.zeros((), device=self.device),
                        "correct": torch.zeros((), dtype=torch.long, device=self.device), "seconds": 0.0,
                        "generator": self.generator.get_state()}
        else:
            self.generator.set_state(progress["generator"])
        start = time.perf_counter() - progress["seconds"]
        bar = tqdm(total=len(self.train_split), initial=progress["seen"], desc=f"epoch {epoch}/{self.cfg.epochs}",
                   unit="img", leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)
        pending_check = None
        for step, (x, y) in enumerate(self.batches):
            if step < progress["step"]:
                continue  # replayed only to advance the generator exactly as the interrupted run did
            x = prepare_batch(x, self.cfg.channels_last)
            loss, out = training_step(self.method, self.step_student, self.step_teacher, x, y, self.cfg, epoch,
                                      generator=None, autocast=self.autocast, extra=self.extra)
            finite = torch.isfinite(loss.detach())
            if self.cfg.nan_policy == "skip":
                if not finite.item():  # the host must decide before the update: one sync per step
                    self.skipped_steps += 1
                    continue
            elif pending_check is not None:
                pending_check.check()  # the previous step's flag: no wait on the step just queued
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.cfg.nan_policy == "stop":
                pending_check = FiniteCheck(finite, epoch, step + 1)
            n = y.shape[0]
            progress["step"], progress["seen"] = step + 1, progress["seen"] + n
            progress["loss_sum"] += loss.detach() * n
            progress["correct"] += (self.method.accuracy_logits(out).detach().argmax(1) == y).sum()
            bar.update(n)
            if not bar.disable and step % 20 == 0:  # one host sync per 20 steps, for the display only
                bar.set_postfix(loss=f"{(progress['loss_sum'] / progress['seen']).item():.4f}")
            if self.stop_signal is not None:
                if pending_check is not None:
                    pending_check.check()
                progress["seconds"] = time.perf_counter() - start
                self.save_last(in_progress={"epoch": epoch, **progress})
                raise RunInterrupted(self.stop_signal, epoch, step + 1)
        if pending_check is not None:
            pending_check.check()
        bar.close()
        seen = max(progress["seen"], 1)
        return (progress["loss_sum"] / seen).item(), 100.0 * progress["correct"].item() / seen, progress["seen"], \
            time.perf_counter() - start

    def evaluate(self):
        """Clean and PGD-10 accuracy, and the student's variance gap tr Cov(f(x')) - tr Cov(f(x))
        (SPEC section 3) from the features of the same forward passes."""
        while True:
            clean_moments, adv_moments = FeatureMoments(), FeatureMoments()
            try:
                clean = attack_accuracy(self.student, self.test_split, self.eval_bs, moments=clean_moments)
                robust = attack_accuracy(self.student, self.test_split, self.eval_bs, attack=self.eval_attack,
                                         moments=adv_moments)
                return clean, robust, adv_moments.trace_cov() - clean_moments.trace_cov()
            except torch.cuda.OutOfMemoryError:
                # As large a batch as fits: halve until it does, and keep that size for the run.
                if self.eval_bs == 1:
                    raise
                self.eval_bs //= 2
                torch.cuda.empty_cache()
                print(f"evaluation ran out of GPU memory: --eval_bs lowered to {self.eval_bs}", file=sys.stderr)

    @contextlib.contextmanager
    def stop_on_signals(self):
        """SIGINT/SIGTERM (what schedulers send) ask the loop to finish its step, save, and stop.
        A second SIGINT stops at once."""
        def request_stop(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(signum).name
            print(f"\n{self.stop_signal} received: finishing the current step, then saving last.pth",
                  file=sys.stderr, flush=True)
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self):
        cfg = self.cfg
        in_progress = self.resume() if cfg.resume else None
        self._create_save_dir(fresh=self.state.epoch == 0 and in_progress is None)
        atomic_write_json(self.path("config.json"), self.config)
        if self.state.epoch >= cfg.epochs:
            print(f"{cfg.save_dir} has already completed {self.state.epoch} epochs", flush=True)
            return self.state
        with self.stop_on_signals():
            first_epoch = self.state.epoch + 1
            for epoch in range(first_epoch, cfg.epochs + 1):
                progress = in_progress if in_progress and in_progress.pop("epoch") == epoch else None
                in_progress = None
                lr = learning_rate(cfg.lr_schedule, cfg.lr_max, epoch - 1, cfg.epochs)
                train_loss, train_acc, seen, train_seconds = self.train_epoch(epoch, lr, progress)
                eval_start = time.perf_counter()
                clean, robust, variance_gap = self.evaluate()
                row = {"epoch": epoch, "lr": float(f"{lr:.10g}"), "train_loss": round(train_loss, 6),
                       "train_acc": round(train_acc, 4), "test_clean_acc": round(clean, 4),
                       "test_PGD10_acc": round(robust, 4), "test_variance_gap": round(variance_gap, 6),
                       "epoch_seconds": round(train_seconds + time.perf_counter() - eval_start, 3),
                       "images_per_second": round(seen / max(train_seconds, 1e-9), 2)}
                self.state.history.append(row)
                self.state.epoch = epoch
                if robust > self.state.best_pgd:
                    self.state.best_pgd = robust
                    self.save_best("best_PGD10_acc_model.pth", row)
                if clean > self.state.best_clean:
                    self.state.best_clean = clean
                    self.save_best("best_clean_acc_model.pth", row)
                atomic_write_text(self.path("results.csv"), results_csv(self.state.history))
                self.save_last()
                skipped = f", {self.skipped_steps} non-finite steps skipped" if self.skipped_steps else ""
                print(f"epoch {epoch}/{cfg.epochs} lr {lr:.4g} loss {train_loss:.4f} train_acc {train_acc:.2f} "
                      f"clean {clean:.2f} PGD10 {robust:.2f} ({row['epoch_seconds']:.1f}s, "
                      f"{row['images_per_second']:.1f} img/s{skipped})", flush=True)
                if self.stop_signal is not None and epoch < cfg.epochs:
                    raise RunInterrupted(self.stop_signal, epoch, None)
                if cfg.stop_after and epoch - first_epoch + 1 >= cfg.stop_after and epoch < cfg.epochs:
                    print(f"stopped after {cfg.stop_after} epochs (--stop_after); continue with --resume", flush=True)
                    break
        return self.state


def train(cfg) -> RunState:
    return Trainer(cfg).run()
