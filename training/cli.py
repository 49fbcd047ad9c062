"""The training entry point behind main.py and main_tiny.py: parse, resolve, fit, and turn a stop
into the right exit status with the command that resumes."""
import os
import shlex
import sys
from typing import Dict, Optional, Sequence

from runtime.errors import exit_on_user_error

from .config import build_parser, resolve
from .loop import fit
from .signals import RunInterrupted


def resume_command(script: str, args: Sequence[str]) -> str:
    """The command that continues this run, quoted for a POSIX shell (paths may hold spaces)."""
    kept = [a for a in args if a not in ("--resume", "--overwrite")]
    return shlex.join(["python", os.path.basename(script) or "main.py", *kept, "--resume"])


def main(prog_defaults: Dict, description: str, argv: Optional[Sequence[str]] = None) -> int:
    with exit_on_user_error():
        try:
            fit(resolve(build_parser(prog_defaults, description).parse_args(argv)))
        except RunInterrupted as stop:
            args = argv if argv is not None else sys.argv[1:]
            print(f"{stop}. Resume with: {resume_command(sys.argv[0], args)}", file=sys.stderr, flush=True)
            return stop.exit_code
        except KeyboardInterrupt:
            print("interrupted before last.pth was saved; resume continues from the last completed epoch",
                  file=sys.stderr, flush=True)
            return 130
    return 0
