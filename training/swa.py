"""Stochastic weight averaging of the student (--swa_start; SAAD and PeerAiD use it by default),
with torch.optim.swa_utils: after every epoch past the start, the student's parameters join an
equal-weight running mean, and the average's BatchNorm statistics are recomputed over the training
set (augmented, from their own random stream). The average is evaluated beside the student each
epoch and saved (docs/methods.md section 8.4)."""
from typing import Any, Dict

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, update_bn

from data import Split, TrainBatches
from runtime.precision import prepare_batch


class StudentAverage:
    def __init__(self, student: nn.Module, start: int, generator: torch.Generator):
        self.model = AveragedModel(student)
        self.start, self.generator = start, generator

    def active(self, epoch: int) -> bool:
        """Whether 1-based `epoch` ends with an update: every epoch after the first `start`."""
        return epoch > self.start

    @property
    def averaged(self) -> int:
        return int(self.model.n_averaged.item())

    def update(self, student: nn.Module, split: Split, batch_size: int, channels_last: bool = False) -> None:
        """Add the student's parameters, then recompute the average's BatchNorm statistics."""
        self.model.update_parameters(student)
        batches = (prepare_batch(x, channels_last) for x, _, _ in TrainBatches(split, batch_size, self.generator))
        with torch.no_grad():
            update_bn(batches, self.model.module)

    def state_dict(self) -> Dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state)
