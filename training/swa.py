"""The student's weight averages: one mechanism, torch.optim.swa_utils.AveragedModel, with two update rules
(docs/methods.md section 8.4, docs/training.md).

- swa (--swa_start; SAAD and PeerAiD use it by default): after every epoch past the start, the student's
  parameters join an equal-weight running mean, and the average's BatchNorm statistics are recomputed over the
  training set (augmented, from their own random stream).
- ema (--ema DECAY): after every optimizer step, W_ema <- DECAY W_ema + (1 - DECAY) W (the first step copies W),
  through the library's get_ema_multi_avg_fn, on the device and without reading anything back to the host.
  BatchNorm buffers are averaged with the weights (use_buffers=True, as timm's ModelEmaV2/V3 and torch's own
  EMA recipe do): the running statistics then describe the averaged trajectory the weights come from, at no
  cost, while statistics copied from the student (DM-Improves-AT's update_bn) describe only the latest student,
  and recomputing them (SWA's pass) would cost a pass over the training set before every evaluation. Integer
  buffers (num_batches_tracked) are copied.

Each average is evaluated beside the student every epoch it is active, and saved (its latest and its
best-PGD-10, AVERAGE_FILES)."""
import itertools
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from data import Split, TrainBatches
from runtime.precision import prepare_batch

SWA, EMA = "swa", "ema"
# Each average's files: (its latest, its best by PGD-10 accuracy).
AVERAGE_FILES: Dict[str, Tuple[str, str]] = {SWA: ("swa_model.pth", "best_PGD10_acc_swa_model.pth"),
                                             EMA: ("ema_model.pth", "best_PGD10_acc_ema_model.pth")}


def average_names(swa_start: int, ema: Optional[float]) -> List[str]:
    """The averages a run with these settings keeps, in the order their columns and files come."""
    return ([SWA] if swa_start else []) + ([EMA] if ema else [])


class StudentAverage:
    def __init__(self, student: nn.Module, start: int = 0, generator: Optional[torch.Generator] = None,
                 decay: Optional[float] = None):
        """decay None: the swa rule, averaging every epoch after the first `start`, its BatchNorm statistics
        recomputed with `generator`; a decay in (0, 1): the ema rule, from the first step on."""
        self.rule = SWA if decay is None else EMA
        if self.rule == EMA:
            self.model = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        else:
            self.model = AveragedModel(student)
        # AveragedModel keeps its count n_averaged on the CPU (it is built without a device) and reads it on
        # the host in update_parameters, then copies it to the device: a host sync per call. The ema rule
        # updates every step, so it keeps the count here too and never reads a device tensor.
        self.count = 0
        self.start, self.generator, self.decay = start, generator, decay

    @property
    def name(self) -> str:
        return self.rule

    def active(self, epoch: int) -> bool:
        """Whether 1-based `epoch` ends with an average to evaluate: every epoch after the first `start`."""
        return epoch > self.start

    @property
    def averaged(self) -> int:
        """How many updates the average holds (swa: epochs; ema: optimizer steps)."""
        return int(self.model.n_averaged.item())

    @torch.no_grad()
    def step(self, student: nn.Module) -> None:
        """After an optimizer step: the ema rule's update (the swa rule waits for the epoch's end)."""
        if self.rule != EMA:
            return
        averaged = [t.detach() for t in itertools.chain(self.model.module.parameters(), self.model.module.buffers())]
        current = [t.detach() for t in itertools.chain(student.parameters(), student.buffers())]
        floating = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        if self.count == 0:  # W_ema_1 = W_1, as AveragedModel's first update
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)
        else:
            self.model.multi_avg_fn([averaged[i] for i in floating], [current[i] for i in floating], self.count)
            for i in set(range(len(averaged))) - set(floating):
                averaged[i].copy_(current[i])
        self.count += 1
        self.model.n_averaged += 1  # a CPU tensor: no sync

    def update(self, student: nn.Module, split: Split, batch_size: int, channels_last: bool = False) -> None:
        """At the end of an active epoch. swa: add the student's parameters, then recompute the average's
        BatchNorm statistics; ema: nothing (it was updated at every step)."""
        if self.rule != SWA:
            return
        self.model.update_parameters(student)
        batches = (prepare_batch(x, channels_last) for x, _, _ in TrainBatches(split, batch_size, self.generator))
        with torch.no_grad():
            update_bn(batches, self.model.module)

    def state_dict(self) -> Dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state)
        self.count = self.averaged
