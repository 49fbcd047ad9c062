"""The optimiser and the learning-rate schedules (docs/methods.md section 1.3): pure functions."""
import math

import torch

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


def build_optimizer(config, params) -> torch.optim.Optimizer:
    """SGD with the run's lr_max, momentum and weight decay on every parameter."""
    return torch.optim.SGD(params, lr=config.lr_max, momentum=config.momentum, weight_decay=config.weight_decay)
