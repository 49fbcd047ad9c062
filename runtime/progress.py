"""Progress of long work, wherever it runs: a bar with an ETA on a terminal, and without one (nohup,
SLURM logs) a line at least every `every` seconds, even while one long step (say an AutoAttack
batch) reports nothing. What finished is said by the caller (an epoch's line, an attack's line)."""
import sys
import threading
import time
from typing import Optional

from tqdm import tqdm

# True in the processes of a distributed job other than process 0: only process 0 shows progress.
QUIET = False


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "img", every: float = 60.0, initial: int = 0,
                 stream=None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done, self.note_text = initial, ""
        self.start = time.perf_counter()
        self.bar: Optional[tqdm] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if QUIET:
            return
        if self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                            file=self.stream)
            self.every = min(every, 1.0)  # redraw: the elapsed time moves even inside one long batch
        self._thread = threading.Thread(target=self._report_periodically, daemon=True)
        self._thread.start()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        eta = clock(elapsed / self.done * (self.total - self.done)) if self.done else "unknown"
        note = f", {self.note_text}" if self.note_text else ""
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{clock(elapsed)} elapsed, ETA {eta}{note}")

    def _report_periodically(self):
        while not self._stop.wait(self.every):
            if self.bar is not None:
                self.bar.refresh()
            else:
                print(self.line(), file=self.stream, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text: str) -> None:
        """What the work is doing now (a bar's postfix; part of the next line without a terminal)."""
        self.note_text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
