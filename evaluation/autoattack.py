"""AutoAttack (docs/methods.md section 6.5) through the reference implementation (`pyautoattack`,
the authors' package), standard version, L-inf: APGD-CE, APGD-T, FAB-T, Square. Nothing here
re-implements any of it: this file runs it batch by batch (so that the evaluation shows progress)
and records what it ran from the package's own log."""
import importlib.metadata
import logging
import re
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from runtime.errors import UserError

LOGGER_NAME = "auto-attack"  # the logger pyautoattack reports on
VERSION = "standard"
NORM = "Linf"
_RUNNING = re.compile(r"^running (\S+)$")
_PERTURBED = re.compile(r"^(\S+) - \d+/\d+ - (\d+) out of (\d+) successfully perturbed$")


def pyautoattack_version() -> Optional[str]:
    try:
        return importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        return None


class _Collect(logging.Handler):
    def __init__(self, on_stage: Optional[Callable[[str], None]] = None):
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self.on_stage = on_stage

    def emit(self, record):
        self.records.append(record)
        running = _RUNNING.match(record.getMessage())
        if running and self.on_stage is not None:
            self.on_stage(running.group(1))


class StandardAutoAttack:
    """`attack(model, x, y)` for `attack_accuracy`: AutoAttack standard L-inf at `eps` on one batch.

    After the run, `attacks_to_run` (the standard version's list), `attacks_run` (in order: a later
    attack is skipped on a batch where no point is left robust), `perturbed` (points each attack
    turned, summed over batches) and `warnings` (pyautoattack's own checks) describe it."""

    def __init__(self, eps: float, seed: int, device):
        try:
            from pyautoattack import AutoAttack
        except ImportError as exc:
            raise UserError(f"AutoAttack needs pyautoattack ({exc}); install the pinned version: "
                            f"pip install -r requirements.txt") from exc
        self._factory = AutoAttack
        self.eps, self.seed, self.device = eps, seed, device
        self.version = pyautoattack_version()
        self.attacks_to_run: List[str] = []
        self.attacks_run: List[str] = []
        self.perturbed: Dict[str, int] = {}
        self.warnings: List[str] = []
        self._instance = None
        self._model = None
        self.on_stage: Optional[Callable[[str], None]] = None  # told each attack's name as it starts

    def _autoattack(self, model: nn.Module):
        if self._model is not model:
            self._instance = self._factory(model, eps=self.eps, norm=NORM, version=VERSION, seed=self.seed,
                                           device=self.device)
            self._model = model
            self.attacks_to_run = list(self._instance.attacks_to_run)
        return self._instance

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        autoattack = self._autoattack(model)
        logger = logging.getLogger(LOGGER_NAME)
        handler, level, propagate = _Collect(self.on_stage), logger.level, logger.propagate
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # its per-batch debug lines are summarised here, not printed
        try:
            x_adv, _ = autoattack.run_standard_evaluation(x, y, batch_size=x.shape[0])
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        self._digest(handler.records)
        return x_adv.detach()

    def _digest(self, records: List[logging.LogRecord]) -> None:
        for record in records:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                if message not in self.warnings:
                    self.warnings.append(message)
                continue
            running = _RUNNING.match(message)
            if running and running.group(1) not in self.attacks_run:
                self.attacks_run.append(running.group(1))
            perturbed = _PERTURBED.match(message)
            if perturbed:
                name = perturbed.group(1)
                self.perturbed[name] = self.perturbed.get(name, 0) + int(perturbed.group(2))

    def describe(self) -> Dict:
        return {"implementation": "pyautoattack", "pyautoattack_version": self.version, "version": VERSION,
                "norm": NORM, "eps": self.eps, "seed": self.seed,
                "attacks_to_run": self.attacks_to_run, "attacks_run": self.attacks_run,
                "points_perturbed_by_attack": self.perturbed, "autoattack_warnings": self.warnings}
