"""SIGINT, SIGTERM and SIGUSR2 (what schedulers send: SLURM's warning before a time limit or a
pre-emption is SIGUSR2 under submitit) ask the run to finish its step, save last.pth and stop."""
import signal
import threading
from typing import Optional

from runtime.errors import report


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class RunInterrupted(Exception):
    """Raised after last.pth is saved in answer to SIGINT/SIGTERM."""

    def __init__(self, signal_name: str, epoch: int, step: Optional[int]):
        where = f"in epoch {epoch} after step {step}" if step is not None else f"after epoch {epoch}"
        super().__init__(f"stopped by {signal_name} {where}; last.pth is saved")
        self.exit_code = 128 + int(getattr(signal, signal_name))


class GracefulStop:
    """While entered, a signal sets `signal_name` instead of killing the process; the loop polls
    it between steps. A second SIGINT stops at once. Outside the main thread it does nothing."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._previous = {}

    def _request(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        report(f"\n{self.signal_name} received: finishing the current step, then saving last.pth")

    def agreed(self, world) -> Optional[str]:
        """The job's stop signal, the same on every process of a distributed job (any process's
        signal stops all of them after the same step); `signal_name` in a single process."""
        number = world.agree_stop(0 if self.signal_name is None else int(signal.Signals[self.signal_name]))
        if number and self.signal_name is None:
            self.signal_name = signal.Signals(number).name
        return self.signal_name if number else None

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._request) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
