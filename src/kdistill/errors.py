"""User-facing errors: the CLI prints them as one line and exits with code 2."""

import difflib
from collections.abc import Iterable
from pathlib import Path


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


LISTED_AT_MOST = 12  # an error lists every valid name only when there are this few


def closest_names(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The choices most like `name` (difflib's ratio, ignoring case), best first."""
    by_folded: dict[str, str] = {}
    for choice in choices:
        by_folded.setdefault(choice.lower(), choice)
    return [by_folded[folded] for folded in difflib.get_close_matches(name.lower(), list(by_folded), n=n, cutoff=0.4)]


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> KdistillError:
    """One line: the close names, or every name when there are few (a long list hides the fix)."""
    choices = sorted(choices)
    close = closest_names(name, choices)
    if close:
        hint = f"did you mean {', '.join(close)}?"
    elif len(choices) <= LISTED_AT_MOST:
        hint = f"choose one of: {', '.join(choices)}"
    else:
        hint = f"no {kind} name is close"
    return KdistillError(f"unknown {kind} '{name}': {hint} (`kdistill list` shows all)")


def missing_path_hint(path: str | Path) -> str:
    """For a path that does not exist: the close names in the deepest folder of it that does
    (` (did you mean runs/teacher?)`), or "" when none is close."""
    path = Path(path)
    parts = path.parts
    for depth in range(len(parts) - 1, -1, -1):
        folder = Path(*parts[:depth]) if depth else Path(".")
        if folder.is_dir():
            break
    else:
        return ""
    try:
        siblings = [entry.name for entry in folder.iterdir()]
    except OSError:
        return ""
    close = closest_names(parts[depth], siblings) if depth < len(parts) else []
    rest = parts[depth + 1:]
    guesses = [str(Path(*parts[:depth], guess, *rest)) for guess in close]
    return f" (did you mean {' or '.join(guesses)}?)" if guesses else ""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), to quote
    inside a one-line error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
