"""One run across several processes (torchrun), on PyTorch's own stack: the process group,
DistributedDataParallel, and the few collectives the training loop needs besides DDP's gradient
all-reduce (docs/distributed.md).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. Without them, or with one process, the `World` is
this process alone and every collective below is the identity: the single-process path runs no
distributed code at all.
"""
import datetime
import inspect
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from . import errors, progress
from .errors import UserError


def ddp_buffer_sync_off(ddp_class=nn.parallel.DistributedDataParallel) -> dict:
    """DistributedDataParallel's keyword that stops its buffer broadcast at every forward: torch 2.13 renamed
    `broadcast_buffers` (deprecated since) to `forward_sync_buffers`, and GPU machines still run older torch."""
    renamed = "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters
    return {"forward_sync_buffers" if renamed else "broadcast_buffers": False}


class JobError(UserError):
    """A setup error raised on every process of the job alike (`World.agree_error`)."""


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times `factor` backward."""

    @staticmethod
    def forward(ctx, tensor, factor):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    # Host-side agreement (a stop signal, a setup error) goes through a gloo group on the CPU, so
    # that asking "did any process get SIGTERM?" every step never waits for the GPU.
    control: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self) -> torch.device:
        """This process's device: cuda:LOCAL_RANK, or the CPU without CUDA."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def wrap(self, module: Optional[nn.Module], device: torch.device) -> Optional[nn.Module]:
        """`module` under DistributedDataParallel (its gradients averaged over the processes at each
        backward); itself in a single process. Buffers are not broadcast at each forward:
        `broadcast_buffers` does it once per step, before the attack reads them."""
        if module is None or not self.distributed:
            return module
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **ddp_buffer_sync_off())

    def gather_rows(self, local: torch.Tensor, rows: Tuple[int, int, int]) -> torch.Tensor:
        """The whole batch's tensor from each process's rows (`data.Shard`), on every process.

        Only this process's rows carry a gradient, scaled by the number of processes: DDP averages
        the parameter gradients over the processes, so their mean is the gradient of the loss of
        the whole batch, exactly as one process computes it, whatever the loss (counts over the
        batch, batch statistics, a smaller last batch)."""
        if not self.distributed:
            return local
        total = rows[0]
        sizes = [total * (r + 1) // self.size - total * r // self.size for r in range(self.size)]
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[:local.shape[0]] = local.detach()
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(pieces, padded)
        pieces = [piece[:size] for piece, size in zip(pieces, sizes)]
        pieces[self.rank] = _ScaleGradient.apply(local, float(self.size)) if local.requires_grad else local
        return torch.cat(pieces)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the processes, in place."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        """Every process's `tensor` (same shape everywhere), in rank order."""
        if not self.distributed:
            return [tensor]
        pieces = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(pieces, tensor.contiguous())
        return pieces

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Every process takes process 0's buffers (BatchNorm running statistics): each process
        updates its own from its shard, and the model that is attacked, evaluated and saved is one."""
        if not self.distributed:
            return
        by_dtype = {}
        for buffer in module.buffers():
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
        for buffers in by_dtype.values():
            flat = torch.cat([b.detach().reshape(-1) for b in buffers])
            dist.broadcast(flat, src=0)
            offset = 0
            for b in buffers:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    def agree_stop(self, signal_number: int) -> int:
        """The largest stop signal any process received (0: none), on every process: all stop
        after the same step, whichever of them the signal reached first."""
        if not self.distributed:
            return signal_number
        flag = torch.tensor([signal_number], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        return int(flag.item())

    def agree_error(self, error: Optional[UserError]) -> None:
        """Raise on every process if any one failed to set up (a missing file, a busy folder), so
        that all stop with the same one-line message and exit status instead of waiting for the
        failed one in a collective. Process 0 prints it; the others exit quietly."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        messages: List[Optional[str]] = [None] * self.size
        dist.all_gather_object(messages, None if error is None else str(error), group=self.control)
        for rank, message in enumerate(messages):
            if message is not None:
                raise JobError(message if rank == 0 else f"process {rank} of {self.size}: {message}")

    def leave(self, together: bool = True) -> None:
        """Close the process group. `together`: every process got here the same way (the run ended,
        stopped on a signal or failed the same setup check), so they first wait for each other:
        none closes its connections while another still uses them. Otherwise (one process failed
        alone) the group is left to the exit, and torchrun ends the others."""
        if self.distributed and dist.is_initialized() and together:
            dist.barrier(group=self.control)
            dist.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process of the job is gone: NCCL's
    errors and timeouts (DistError), gloo's closed connections and timeouts."""
    text = str(error)
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and (
        "gloo" in text and ("Connection closed by peer" in text or "Timed out" in text
                            or "Connection reset" in text)))


def peer_failure(error: BaseException) -> str:
    """The gist of a collective's error: its first sentence, without the source location."""
    first = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0] if str(error).strip() else "")
    return first.split(". ")[0].rstrip(".") or type(error).__name__


def launched_world_size() -> int:
    """How many processes torchrun started for this job (1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with torchrun") from None


def join(timeout_minutes: float, use_cuda: bool) -> World:
    """This process's place in the job torchrun launched: NCCL between GPUs (one per process,
    cuda:LOCAL_RANK), gloo between CPU processes. Collectives that wait longer than
    `timeout_minutes` for a process fail (a process that died takes the job down, not a hang)."""
    size = launched_world_size()
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {rank} has LOCAL_RANK {local_rank} but this node has "
                            f"{torch.cuda.device_count()} GPUs; start at most that many per node "
                            f"(torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank))
        control = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
        control = None  # the default group is gloo already
    world = World(rank=rank, size=size, local_rank=local_rank, control=control)
    if not world.main:
        quiet_follower()
    return world


def quiet_unless_first() -> None:
    """Called first by the entry scripts: under torchrun only process 0 says anything, from the
    first message on (argument errors come before the job is joined)."""
    if os.environ.get("RANK", "0") != "0":
        quiet_follower()


def quiet_follower() -> None:
    """Processes other than 0 print nothing: no progress, no warnings, no one-line errors (process 0
    says them once for the job). Tracebacks of real crashes still reach stderr."""
    sys.stdout = open(os.devnull, "w")
    errors.QUIET = True
    progress.QUIET = True
