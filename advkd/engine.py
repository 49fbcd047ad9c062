"""The training engine shared by main.py and main_tiny.py: data, student and teacher, SGD and
its schedule, the method's step, per-epoch clean + PGD-10 evaluation, checkpoints and logs."""
import csv
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_weights, safe_load
from .data import TrainBatches, dataset_info, load_split
from .errors import UserError
from .evaluation import attack_accuracy, pgd_ce_attack
from .methods import get_method, method_names, training_step
from .models import build_model
from .runtime import (capture_rng_state, device_name, git_commit, make_generator, resolve_device,
                      restore_rng_state, seed_everything)

RESULT_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "test_clean_acc", "test_PGD10_acc",
                 "epoch_seconds", "images_per_second"]
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
        self._prepare_save_dir()
        seed_everything(cfg.seed)
        self.generator = make_generator(self.device, cfg.seed)
        self.train_split = load_split(cfg.dataset, cfg.data_dir, "train", self.device, cfg.train_subset, cfg.download)
        self.test_split = load_split(cfg.dataset, cfg.data_dir, "test", self.device, cfg.test_subset, cfg.download)
        self.student = build_model(cfg.model, self.info.num_classes).to(self.device)
        self.teacher = load_teacher(cfg, self.info.num_classes, self.device) if self.method.needs_teacher else None
        self.extra = self.method.extra_module(self.student, self.teacher)
        params = list(self.student.parameters())
        if self.extra is not None:
            self.extra.to(self.device)
            params += list(self.extra.parameters())
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr_max, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.batches = TrainBatches(self.train_split, cfg.bs, self.generator)
        self.state = RunState(history=[])
        self.eval_attack = pgd_ce_attack(cfg.epsilon / 255, cfg.step_size / 255, 10)

    # -- files -------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.cfg.save_dir, name)

    def _prepare_save_dir(self):
        cfg = self.cfg
        try:
            os.makedirs(cfg.save_dir, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create --save_dir {cfg.save_dir}: {exc.strerror}") from exc
        if not os.access(cfg.save_dir, os.W_OK):
            raise UserError(f"--save_dir {cfg.save_dir} is not writable; choose another with --save_dir")
        existing = [f for f in CHECKPOINT_FILES if os.path.exists(self.path(f))]
        if existing and not (cfg.resume or cfg.overwrite):
            raise UserError(f"{cfg.save_dir} already holds a run ({', '.join(existing)}); pass --resume to "
                            f"continue it, --overwrite to replace it, or choose another --save_dir")

    def config_record(self) -> Dict:
        record = dict(vars(self.cfg))
        record.update(self.method.describe())
        record.update({"git_commit": git_commit(), "torch_version": torch.__version__,
                       "device": device_name(self.device), "num_classes": self.info.num_classes,
                       "train_images": len(self.train_split), "test_images": len(self.test_split)})
        return record

    def _model_state(self) -> Dict:
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def save_best(self, name: str, row: Dict):
        payload = {"net": self._model_state(), "clean_acc": row["test_clean_acc"], "PGD10_acc": row["test_PGD10_acc"],
                   "epoch": row["epoch"], "arch": self.cfg.model, "num_classes": self.info.num_classes,
                   "config": self.config_record()}
        if self.extra is not None:
            payload["extra"] = self.extra.state_dict()
        atomic_save(payload, self.path(name))

    def save_last(self):
        payload = {"net": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "epoch": self.state.epoch, "best_PGD10_acc": self.state.best_pgd,
                   "best_clean_acc": self.state.best_clean, "history": self.state.history,
                   "rng": capture_rng_state(self.generator), "config": self.config_record(),
                   "arch": self.cfg.model}
        if self.extra is not None:
            payload["extra"] = self.extra.state_dict()
        atomic_save(payload, self.path("last.pth"))

    def resume(self) -> bool:
        last = self.path("last.pth")
        if not os.path.exists(last):
            print(f"--resume: no last.pth in {self.cfg.save_dir}; starting a new run", flush=True)
            return False
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
        print(f"resumed {self.cfg.save_dir} after epoch {self.state.epoch}", flush=True)
        return True

    # -- loop --------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, lr: float):
        from tqdm import tqdm
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        bar = tqdm(total=len(self.train_split), desc=f"epoch {epoch}/{self.cfg.epochs}", unit="img",
                   leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)
        for step, (x, y) in enumerate(self.batches):
            loss, out = training_step(self.method, self.student, self.teacher, x, y, self.cfg, epoch,
                                      generator=None)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = y.shape[0]
            seen += n
            loss_sum += loss.detach() * n
            correct += (self.method.accuracy_logits(out).detach().argmax(1) == y).sum()
            bar.update(n)
            if not bar.disable and step % 20 == 0:  # one host sync per 20 steps, for the display only
                bar.set_postfix(loss=f"{(loss_sum / seen).item():.4f}")
        bar.close()
        return (loss_sum / max(seen, 1)).item(), 100.0 * correct.item() / max(seen, 1), seen

    def evaluate(self):
        bs = self.cfg.eval_bs
        clean = attack_accuracy(self.student, self.test_split, bs)
        robust = attack_accuracy(self.student, self.test_split, bs, attack=self.eval_attack)
        return clean, robust

    def run(self):
        cfg = self.cfg
        if cfg.resume:
            self.resume()
        atomic_write_json(self.path("config.json"), self.config_record())
        if self.state.epoch >= cfg.epochs:
            print(f"{cfg.save_dir} has already completed {self.state.epoch} epochs", flush=True)
            return self.state
        for epoch in range(self.state.epoch + 1, cfg.epochs + 1):
            lr = learning_rate(cfg.lr_schedule, cfg.lr_max, epoch - 1, cfg.epochs)
            start = time.perf_counter()
            train_loss, train_acc, seen = self.train_epoch(epoch, lr)
            train_seconds = time.perf_counter() - start
            clean, robust = self.evaluate()
            row = {"epoch": epoch, "lr": float(f"{lr:.10g}"), "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 4),
                   "test_clean_acc": round(clean, 4), "test_PGD10_acc": round(robust, 4),
                   "epoch_seconds": round(time.perf_counter() - start, 3),
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
            print(f"epoch {epoch}/{cfg.epochs} lr {lr:.4g} loss {train_loss:.4f} train_acc {train_acc:.2f} "
                  f"clean {clean:.2f} PGD10 {robust:.2f} ({row['epoch_seconds']:.1f}s, "
                  f"{row['images_per_second']:.1f} img/s)", flush=True)
        return self.state


def train(cfg) -> RunState:
    return Trainer(cfg).run()
