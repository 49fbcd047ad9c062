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
@pytest.mark.parametrize("script, module", [("main.py", "training.cli"), ("main_tiny.py", "training.cli"),
                                            ("main_eval.py", "evaluation.cli"),
                                            ("main_eval_tinyimagenet.py", "evaluation.cli")])
def test_ctrl_c_while_the_entry_script_imports_exits_130_without_a_traceback(script, module):
    """Ctrl-C lands in the entry script's import of the project (which imports torch, seconds long):
    simulated deterministically by an import hook that raises KeyboardInterrupt there."""
    import subprocess
    import sys

    from helpers import REPO
    hook = ("import builtins, runpy\n"
            "real = builtins.__import__\n"
            "def interrupted(name, *args, **kwargs):\n"
            f"    if name == {module!r}:\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = interrupted\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", hook], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
