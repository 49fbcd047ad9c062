"""The training entry point behind main.py and main_tiny.py: parse, resolve, fit, and turn a stop
into the right exit status with the command that resumes."""
import os
import shlex
import sys
from typing import Dict, Optional, Sequence

from runtime.distributed import quiet_unless_first
from runtime.errors import exit_on_user_error, report

from .config import build_parser, resolve
from .loop import fit
from .signals import RunInterrupted


def resume_command(script: str, args: Sequence[str]) -> str:
    """The command that continues this run, quoted for a POSIX shell (paths may hold spaces); under
    torchrun, with the job's node and process counts (any other count resumes it too)."""
    kept = [a for a in args if a not in ("--resume", "--overwrite")]
    launcher = ["python"]
    if "LOCAL_WORLD_SIZE" in os.environ:
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = max(int(os.environ.get("WORLD_SIZE", per_node)) // max(per_node, 1), 1)
        launcher = ["torchrun"] + (["--nnodes", str(nodes)] if nodes > 1 else []) + ["--nproc_per_node", str(per_node)]
    return shlex.join([*launcher, os.path.basename(script) or "main.py", *kept, "--resume"])


def main(prog_defaults: Dict, description: str, argv: Optional[Sequence[str]] = None) -> int:
    quiet_unless_first()
    with exit_on_user_error():
        try:
            fit(resolve(build_parser(prog_defaults, description).parse_args(argv)))
        except RunInterrupted as stop:
            args = argv if argv is not None else sys.argv[1:]
            report(f"{stop}. Resume with: {resume_command(sys.argv[0], args)}")
            return stop.exit_code
        except KeyboardInterrupt:
            report("interrupted before last.pth was saved; resume continues from the last completed epoch")
            return 130
    return 0
