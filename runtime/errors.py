"""User-facing errors: one line, actionable, non-zero exit, no traceback."""
import contextlib
import sys


class UserError(Exception):
    """A problem with the user's input or environment that the user can fix."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def exit_on_user_error():
    """Turn a UserError into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
