"""How a training run stops early: SIGINT/SIGTERM (`StopSignals`), and a non-finite loss
(`NonFiniteWatch`, read without a host synchronisation per step on asynchronous devices)."""

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from kdistill.distributed import sum_over_ranks


class NonFiniteWatch:
    """Flags of the steps not yet checked: isfinite of each step's total and terms, kept on the
    device until `first_non_finite` reads them all at once (one host sync)."""

    def __init__(self):
        self.pending: list[tuple[int, list[str], Tensor]] = []

    def add(self, step: int, total: Tensor, terms: dict[str, Tensor]) -> None:
        values = torch.stack([total.detach(), *(value.detach() for value in terms.values())])
        self.pending.append((step, list(terms), torch.isfinite(values)))

    def first_non_finite(self) -> tuple[int, list[str]] | None:
        """(step, non-finite terms) of the first pending step whose total was non-finite on any rank."""
        if not self.pending:
            return None
        pending, self.pending = self.pending, []
        bad = sum_over_ranks(torch.cat([flags for _, _, flags in pending]).logical_not().int()).cpu().tolist()
        offset = 0
        for step, names, flags in pending:
            if bad[offset]:
                return step, [name for name, count in zip(names, bad[offset + 1 :]) if count]
            offset += len(flags)
        return None


class Signalled(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM during training: abandons the current step."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM raise `Signalled` in the training process; a signal that
    arrives inside `deferred()` (a save) waits for the block to finish. DataLoader workers (forked
    children) ignore them: the training process stops them as it ends."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.pid = os.getpid()
        self.deferring = False
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # only there can handlers be set
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.HANDLED}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:
            return
        if self.deferring:
            self.pending = signum
            return
        raise Signalled(signum)

    @contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise Signalled(self.pending)
