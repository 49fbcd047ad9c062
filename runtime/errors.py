"""User-facing errors: one line, actionable, non-zero exit, no traceback."""
import argparse
import contextlib
import json
import os
import sys
import time


# True in the processes of a distributed job other than process 0: it says each message once.
QUIET = False


class UserError(Exception):
    """A problem with the user's input or environment that the user can fix."""


def report(message: str) -> None:
    """A message for the user on stderr (once per job: not from quiet processes)."""
    if not QUIET:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    report(f"warning: {message}")


def fail(message: str) -> None:
    """`error: <message>` on stderr, then exit status 2. Under torchrun the line is also this process's
    error file, which torchrun's failure report shows as the cause (instead of a pointer to its docs)."""
    line = f"error: {message}"
    report(line)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with contextlib.suppress(OSError):
            with open(error_file, "w") as f:
                json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line,
                                                                     "timestamp": str(int(time.time()))}}}, f)
    sys.exit(2)


@contextlib.contextmanager
def exit_on_user_error():
    """Turn a UserError into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors (an unknown flag, a value of the wrong type) are one line, as
    every other error is, instead of the usage block and then the message."""

    def error(self, message: str) -> None:
        fail(f"{message} ({self.prog} --help lists the flags)")


def require_255_units(flag: str, value: float, example: str) -> None:
    """Radii and steps are given in 1/255 pixel units (8 means 8/255). The released scripts take
    fractions (0.031 for about 8/255): a value below 1 is one of those, not a tiny radius."""
    if value < 1:
        raise UserError(f"{flag} {value:g} is below 1: {flag} counts 1/255 pixel units, so a fraction such as "
                        f"0.031 (the released scripts' way to write 8/255) must be given as {example}")
