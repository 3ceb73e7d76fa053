"""User-facing errors: the CLI prints them as one line and exits with code 2."""

import difflib
from collections.abc import Iterable


class KdistillError(Exception):
    """A problem with the user's input that the user can fix; the message names the fix."""

    exit_code = 2
    prefix = "error: "  # printed after "kdistill: "


class RunStopped(KdistillError):
    """Training stopped before its end (a non-finite loss, a signal); the message says what is
    kept on disk and how to continue."""

    def __init__(self, message: str, exit_code: int, prefix: str = "error: "):
        super().__init__(message)
        self.exit_code, self.prefix = exit_code, prefix


def closest_names(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> KdistillError:
    choices = sorted(choices)
    close = closest_names(name, choices)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose one of: {', '.join(choices)}"
    return KdistillError(f"unknown {kind} '{name}': {hint} (`kdistill list` shows all)")


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), to quote
    inside a one-line error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
