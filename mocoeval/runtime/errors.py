"""One-line errors for users: raise UserError for bad input, wrap CLIs with `cli_main`."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input or state the user can fix; printed as one line, never as a traceback."""


def one_line(e: BaseException | str) -> str:
    """An exception (or text) as one line of at most 500 characters, for logs and error messages."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines)[:500]


def last_line(e: BaseException) -> str:
    """The message of an error that may carry a traceback: errors raised inside DataLoader workers come back
    with the worker's traceback, whose last line is `...UserError: <message>`; keep just the message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(e).__name__
    return last.split("UserError: ", 1)[-1]


def cli_main(main):
    """Decorate a script's `main(argv=None)`: a UserError becomes `error: ...` on stderr and exit 2,
    Ctrl-C `interrupted` and exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt as e:  # a subclass may carry what was saved and its own exit code
            print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
            raise SystemExit(getattr(e, "exit_code", 130)) from None

    def console() -> int:
        """The console scripts' entry point (`module:main.console`): the exit status, 0 for a command that
        returns its result rather than a status."""
        result = wrapper(sys.argv[1:])
        return result if isinstance(result, int) else 0

    wrapper.console = console
    return wrapper
