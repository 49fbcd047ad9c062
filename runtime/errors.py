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


def require_255_units(flag: str, value: float, example: str) -> None:
    """Radii and steps are given in 1/255 pixel units (8 means 8/255). The released scripts take
    fractions (0.031 for about 8/255): a value below 1 is one of those, not a tiny radius."""
    if value < 1:
        raise UserError(f"{flag} {value:g} is below 1: {flag} counts 1/255 pixel units, so a fraction such as "
                        f"0.031 (the released scripts' way to write 8/255) must be given as {example}")
