"""Numeric precision and model preparation for training and the benchmark.

`--precision bf16` runs the networks' forward (and so backward) passes under bf16 autocast, in
the attack and in the update; images, perturbations and adversarial examples stay fp32, as do
the logits the losses read (the step casts them back). `--channels_last` stores weights and
batches as NHWC, the layout tensor cores read fastest. `--compile` compiles each network in place
(`nn.Module.compile`): the module keeps its parameters and state-dict names, so there is one
handle per network and checkpoints are written from it as from an uncompiled one.
"""
import contextlib
import functools
from typing import Callable, Optional

import torch
import torch.nn as nn

from .errors import UserError

PRECISIONS = ("fp32", "bf16")


def autocast_factory(precision: str, device: torch.device) -> Optional[Callable[[], contextlib.AbstractContextManager]]:
    """A zero-argument context-manager factory for `training_step(..., autocast=...)`; None for fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                            f"use --precision fp32")
        return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    raise UserError(f"unknown --precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def compute_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare_batch(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The batch in the models' layout (a no-op for NCHW); its dtype is untouched."""
    return x.contiguous(memory_format=memory_format(channels_last)) if x.dim() == 4 else x


def prepare_model(model: Optional[nn.Module], channels_last: bool = False, compile: bool = False) -> Optional[nn.Module]:
    """Convert `model` in place to channels_last and compile it in place, as asked; returns it."""
    if model is None:
        return None
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model
