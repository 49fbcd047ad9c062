"""The optimiser and the learning-rate schedules (docs/methods.md section 1.3): pure functions."""
import math
from typing import Sequence

import torch

SCHEDULES = ("piecewise", "cosine", "constant")


COSINE_FLOOR = 1e-4  # the DGAD/AdaAD code's cosine never goes below it


def learning_rate(schedule: str, lr_max: float, epoch: int, epochs: int, milestones: Sequence[int] = (),
                  decay: Sequence[float] = ()) -> float:
    """lr for 0-based `epoch`. piecewise: lr_max times each decay[i] whose milestones[i] epochs have
    passed (epoch >= milestones[i]); cosine: half a cosine from lr_max to 0 over the run, floored."""
    if schedule == "piecewise":
        lr = lr_max
        for milestone, factor in zip(milestones, decay):
            if epoch >= milestone:
                lr *= factor
        return lr
    if schedule == "cosine":
        return max(0.5 * lr_max * (1 + math.cos(math.pi * epoch / epochs)), COSINE_FLOOR)
    if schedule == "constant":
        return lr_max
    raise ValueError(f"unknown lr schedule {schedule!r}")


def build_optimizer(config, params) -> torch.optim.Optimizer:
    """SGD with the run's lr_max, momentum (Nesterov's where the recipe says) and weight decay on every
    parameter."""
    return torch.optim.SGD(params, lr=config.lr_max, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)
