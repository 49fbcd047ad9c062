"""The --nan_policy stop guard: a non-finite loss ends the run before it reaches a checkpoint."""
import torch

from runtime.errors import UserError


class NonFiniteLoss(UserError):
    pass


class HostCopy:
    """A device scalar for the host without stalling the GPU: copied to pinned host memory behind the
    work queued so far, and read later (`read`), when that work is long done."""

    def __init__(self, value: torch.Tensor):
        value = value.detach()
        if value.is_cuda:
            self.value = torch.empty((), dtype=value.dtype, pin_memory=True)
            self.value.copy_(value, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.value, self.event = value, None

    def ready(self) -> torch.Tensor:
        """The host tensor, once the copy is done (by now long done: no wait in practice)."""
        if self.event is not None:
            self.event.synchronize()
        return self.value


class FiniteCheck:
    """Reads a step's is-finite flag without stalling the GPU (`HostCopy`), one step later."""

    def __init__(self, finite: torch.Tensor, epoch: int, step: int):
        self.epoch, self.step = epoch, step
        self.flag = HostCopy(finite)

    def check(self):
        if not bool(self.flag.ready()):
            raise NonFiniteLoss(f"non-finite loss at epoch {self.epoch} step {self.step}: stopped, and the last "
                                f"good checkpoint is untouched (last.pth holds epoch {self.epoch - 1}); lower "
                                f"--lr_max, check the teacher, or pass --nan_policy skip")
