"""Measuring training steps for bench.py: where the time of a step goes, FLOPs counted by
`torch.utils.flop_counter`, the device's measured matmul peak, and peak memory.

Time is split into phases by marks: a mark says "phase P starts now". On CUDA a mark is an
event recorded on the stream (no host sync; all are read once after the timed loop), on the CPU
it is the wall clock. Inside `training_step` the marks come from forward pre-hooks on the two
networks, so the step itself is timed unmodified:
- a forward whose input requires grad (an attack step), or a student forward without grad
  (a fixed student reference), starts `attack`;
- a teacher forward whose input needs no grad is `teacher`, and the phase in force before it
  resumes when it returns;
- any other student forward starts `update` (the loss, backward and optimiser step follow it).
"""
import contextlib
import time
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

PHASES = ("data", "attack", "teacher", "update")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: List = []
        self.current: Optional[str] = None

    def mark(self, phase: str) -> None:
        if self.cuda:
            stamp = torch.cuda.Event(enable_timing=True)
            stamp.record()
        else:
            stamp = time.perf_counter()
        self.marks.append((phase, stamp))
        self.current = phase

    def reset(self) -> None:
        self.marks, self.current = [], None

    def milliseconds(self) -> Dict[str, float]:
        """Total ms per phase between the first and the last mark (call after a device sync)."""
        totals: Dict[str, float] = defaultdict(float)
        for (phase, start), (_, end) in zip(self.marks, self.marks[1:]):
            totals[phase] += start.elapsed_time(end) if self.cuda else (end - start) * 1000.0
        return dict(totals)


@contextlib.contextmanager
def phase_hooks(clock: PhaseClock, student: nn.Module, teacher: Optional[nn.Module]):
    """Mark phases from the networks' forward calls (see the module docstring)."""
    resume: List[str] = []

    def first_input(args, kwargs):
        return args[0] if args else next(iter(kwargs.values()))

    def student_pre(module, args, kwargs):
        x = first_input(args, kwargs)
        clock.mark("attack" if x.requires_grad or not torch.is_grad_enabled() else "update")

    def teacher_pre(module, args, kwargs):
        if first_input(args, kwargs).requires_grad:
            clock.mark("attack")
        else:
            resume.append(clock.current)
            clock.mark("teacher")

    def teacher_post(module, args, kwargs, output):
        if clock.current == "teacher" and resume:
            clock.mark(resume.pop())

    handles = [student.register_forward_pre_hook(student_pre, with_kwargs=True)]
    if teacher is not None:
        handles.append(teacher.register_forward_pre_hook(teacher_pre, with_kwargs=True))
        handles.append(teacher.register_forward_hook(teacher_post, with_kwargs=True))
    try:
        yield clock
    finally:
        for handle in handles:
            handle.remove()


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks do not support
    `torch.autograd.grad` on a leaf input (what every attack step does); only the total is needed."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything `fn` runs (forward and backward), as torch's flop counter counts them."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, size: Optional[int] = None,
                       seconds: float = 1.0) -> float:
    """Achieved TFLOP/s of a large square matmul at `dtype`: the practical peak MFU is measured
    against. Without `size`, the side doubles from 512 until one product takes 20 ms (up to 8192
    on a GPU, 2048 on the CPU); then it is repeated for about `seconds` after a warm-up.

    fp32 uses the TF32 setting the convolutions use (cudnn.allow_tf32), since that is the arithmetic
    an fp32 step actually runs on tensor-core GPUs."""
    cuda = device.type == "cuda"
    largest = 8192 if cuda else 2048
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        def timed(repeats):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            synchronize(device)
            return time.perf_counter() - start
        side = size or 512
        while True:
            a = torch.randn(side, side, device=device, dtype=dtype)
            b = torch.randn(side, side, device=device, dtype=dtype)
            timed(3 if cuda else 1)
            one = timed(1)
            if size or one >= 0.02 or side >= largest:
                break
            side *= 2
        size = side
        repeats = max(1, min(1000, int(seconds / max(one, 1e-9))))
        elapsed = timed(repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2.0 * size ** 3 * repeats / elapsed / 1e12


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> Optional[float]:
    """Peak memory allocated by tensors since the last reset (CUDA); None on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return None
