"""Writing files: the one atomic writer, and one line for every write that fails.

A leaf module (it imports only `kdistill.errors`), so every layer writes through it. A file is
written under a temporary name in its own folder, fsynced, then renamed over the target (or
linked, to create it only if absent): a kill or a full disk at any instant leaves the old file
or the whole new one. A failed write, whatever wraps its OSError (torch.save on a full disk
raises RuntimeError "unexpected pos ..." with the OSError as its context, or no OSError at all
when torch wrote the bytes itself), is one `KdistillError` line naming the file and what is intact.
"""

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from kdistill.errors import KdistillError

TEMP_SUFFIX = ".tmp"  # of the temporary files `atomic_write` renames into place
# How torch words a write that failed underneath it (its zip writer checks the bytes it wrote).
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed")


class WriteFailed(KdistillError):
    """A file could not be written (a full disk, no permission...); the message names the file
    and says what is intact."""

    def __init__(self, path: Path, reason: str, intact: str):
        super().__init__(f"{reason} while writing {path}; {intact}")
        self.path, self.reason, self.intact = path, reason, intact


def failure_reason(error: BaseException) -> str | None:
    """What made a write fail, in a few words ('no space left on device'); None when `error` is
    not a failed write (a bug in the code that produces the content must stay a traceback)."""
    seen: BaseException | None = error
    while seen is not None:  # torch raises its own error with the OSError as context
        if isinstance(seen, OSError):
            if seen.errno == errno.ENOSPC:
                return "no space left on device"
            return (seen.strerror or str(seen) or type(seen).__name__).lower()
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITE_FAILURES):
        return "the write failed (the disk may be full)"
    return None


def untouched(path: Path) -> str:
    """What a failed atomic write of `path` leaves, said for a one-line error."""
    return f"the previous {path.name} is untouched" if path.exists() else f"no {path.name} was written"


@contextlib.contextmanager
def reported_write(path: Path, intact: str | None = None) -> Iterator[None]:
    """Turn a failed write of `path` inside the block into one `WriteFailed` line; `intact` says
    what is still good (by default: the previous file, if any, is untouched). A caller's own
    `intact` replaces that of a failed write inside the block: it knows more of what is kept."""
    said = intact if intact is not None else untouched(path)
    try:
        yield
    except WriteFailed as failed:
        if intact is None:
            raise
        raise WriteFailed(failed.path, failed.reason, intact) from None
    except Exception as error:
        reason = failure_reason(error)
        if reason is None:
            raise
        raise WriteFailed(path, reason, said) from None


@contextlib.contextmanager
def also_intact(kept: str) -> Iterator[None]:
    """A failed write inside the block also says `kept` (what another owner keeps: a run whose
    teacher cache cannot be written still has its checkpoint)."""
    try:
        yield
    except WriteFailed as failed:
        raise WriteFailed(failed.path, failed.reason, f"{failed.intact}; {kept}") from None


def atomic_write(path: Path, write: Callable[[IO], None], mode: str = "wb", *, exclusive: bool = False,
                 intact: str | None = None) -> bool:
    """Write `path` through `write(file)` under a temporary name, fsync, then move it into place:
    replacing what is there, or (`exclusive`) only if nothing is (False: another process was first).
    A failed write is one `WriteFailed` line (see `reported_write`); the temporary file is removed."""
    with reported_write(path, intact):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(handle, mode) as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            if not exclusive:
                os.replace(temporary, path)
                return True
            try:
                os.link(temporary, path)  # atomic create-if-absent
                return True
            except FileExistsError:
                return False
        finally:
            Path(temporary).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str, **options) -> bool:
    """`atomic_write` of a text (options: `exclusive`, `intact`)."""
    return atomic_write(path, lambda file: file.write(text), mode="w", **options)


def atomic_write_bytes(path: Path, data: bytes, **options) -> bool:
    """`atomic_write` of bytes (options: `exclusive`, `intact`)."""
    return atomic_write(path, lambda file: file.write(data), **options)


def try_lock(path: Path) -> tuple[IO | None, str]:
    """An exclusive lock on the file `path` for this process, held while the returned file stays
    open (the OS releases it when the process dies, however it dies), with this process's pid
    written in it; or (None, the holder's pid as written) when another process holds it."""
    with reported_write(path):
        file = open(path, "a+")  # noqa: SIM115 (stays open: the lock lives as long as the file)
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        return None, holder
    try:
        with reported_write(path):
            file.truncate(0)
            file.write(f"{os.getpid()}\n")
            file.flush()
    except WriteFailed:
        file.close()
        raise
    return file, str(os.getpid())


def lock_holder(path: Path) -> str | None:
    """The pid written in the lock file `path` while another process holds it; None when free."""
    if not path.is_file():
        return None
    with open(path) as file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released as the file closes
        except BlockingIOError:
            return file.read().strip() or "unknown"
    return None
