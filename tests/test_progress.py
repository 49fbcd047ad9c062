"""Long work shows progress without a terminal too: a line at least every `every` seconds, with
the count, the percentage and an ETA, even while nothing updates; AutoAttack names its stages."""
import io
import logging
import time

import pytest

from evaluation.autoattack import _Collect
from runtime.progress import Progress, clock


def test_without_a_terminal_a_line_comes_every_interval_even_without_updates():
    stream = io.StringIO()
    with Progress(200, "PGD-20", every=0.05, stream=stream) as progress:
        assert progress.bar is None
        progress.update(50)
        progress.note("running apgd-t")
        time.sleep(0.3)  # no update meanwhile, as inside one long AutoAttack batch
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert lines[-1].startswith("PGD-20: 50/200 img (25%), ") and "ETA " in lines[-1]
    assert lines[-1].endswith(", running apgd-t")
    count = len(stream.getvalue().splitlines())
    time.sleep(0.15)
    assert len(stream.getvalue().splitlines()) == count  # closed: no more lines


def test_the_eta_is_unknown_before_the_first_update_and_clock_format():
    progress = Progress(10, "x", every=3600, stream=io.StringIO())
    assert "ETA unknown" in progress.line()
    progress.close()
    assert (clock(65), clock(3725)) == ("1:05", "1:02:05")


def test_autoattack_names_each_stage_as_it_starts():
    seen = []
    handler = _Collect(seen.append)
    for message in ("running apgd-ce", "apgd-ce - 1/1 - 3 out of 8 successfully perturbed", "running square"):
        handler.emit(logging.LogRecord("auto-attack", logging.INFO, __file__, 0, message, None, None))
    assert seen == ["apgd-ce", "square"] and len(handler.records) == 3


@pytest.mark.slow  # subprocesses
def test_ctrl_c_while_the_entry_script_imports_exits_130_without_a_traceback():
    import os
    import signal
    import subprocess
    import sys

    from helpers import REPO
    for script in ("main.py", "main_eval.py"):
        proc = subprocess.Popen([sys.executable, script, "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(0.4)  # inside `import torch`, which takes seconds
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in err, (script, proc.returncode, err)
