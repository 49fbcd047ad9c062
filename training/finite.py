"""The --nan_policy stop guard: a non-finite loss ends the run before it reaches a checkpoint."""
import torch

from runtime.errors import UserError


class NonFiniteLoss(UserError):
    pass


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
