"""Stop a long run cleanly on Ctrl-C or SIGTERM: save at the next safe point, then exit; a second signal stops at once.

A training loop installs a `StopRequest` around its work and asks `requested` at points where its state is whole
(after an optimizer step); once it has saved, it raises `Interrupted`, which `errors.cli_main` turns into one line
on stderr and the exit status 128 + signal (130 for Ctrl-C, 143 for SIGTERM), as the shell would report.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

logger = logging.getLogger("mocoeval")


class Interrupted(KeyboardInterrupt):
    """Stopped on a signal after saving what is needed to continue (the message says where).

    A KeyboardInterrupt, so that `except Exception` in trainers (Detectron2's logs those as crashes) lets it pass.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Records the first SIGINT/SIGTERM instead of dying; the second (or any after `finishing()`) raises
    KeyboardInterrupt at once. Handlers are installed only in the main thread (Python's rule); `restore()` puts
    the previous ones back and is safe to call twice."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, what_happens: str = "stopping at the next safe point"):
        self.signum: int | None = None
        self.what_happens = what_happens
        self.aborted = False  # a second signal (or one after finishing()) raised KeyboardInterrupt: save nothing more
        self._previous: dict = {}
        self._at_once = False

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def finishing(self) -> None:
        """From now on (e.g. a final evaluation that cannot stop half-way) a signal interrupts at once."""
        self._at_once = True

    def interrupted(self, message: str) -> Interrupted:
        """The exception to raise once the loop has saved: '<SIGNAL>: <message>'."""
        return Interrupted(f"{self.name}: {message}", self.signum)

    def _handle(self, signum, frame):
        if self.signum is not None or self._at_once:
            self.restore()
            self.aborted = True
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning(f"{signal.Signals(signum).name} received: {self.what_happens} (send it again to stop at once)")


def any_process(flags: list[bool], world: int, device: torch.device) -> list[bool]:
    """Each flag, true if it is true in any process (one small all_reduce; nothing with one process), so that
    every process of a distributed run takes the same stop / save decision at the same step."""
    if world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]
