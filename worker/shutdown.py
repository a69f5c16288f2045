"""The record of why a run stops: signals, the deadline, an answer the run cannot go past.

Every stop arrives here and nowhere else, and nothing here exits the process or picks an
exit code (that is `exit_codes.exit_code`, from the facts at the end). Once any stop is
recorded `requested` is set: `stopping.StopGate` then admits no new request, the back-off
sleeps wake, and the schedulers wind down; in-flight requests get a grace period. A second
SIGINT/SIGTERM sets `immediate`: stop at once.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from worker.oms.errors import ErrorInfo

DEADLINE = "deadline"
FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class FatalStop:
    """What made the run stop on its own: refused credentials, no permission, a listing."""

    target: str
    message: str
    error: ErrorInfo | None = None


class Shutdown:
    """Every stop asked for, kept side by side: a later one never hides an earlier one."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.deadline_reached = False
        self.fatal: FatalStop | None = None
        self.requested = asyncio.Event()
        self.immediate = asyncio.Event()

    def on_signal(self, name: str) -> None:
        """A first signal stops gracefully; a second one stops at once."""
        if self.signal is not None:
            self.immediate.set()
        self.signal = name
        self.requested.set()

    def on_deadline(self) -> None:
        """The run's time is up."""
        self.deadline_reached = True
        self.requested.set()

    def on_fatal(self, stop: FatalStop) -> None:
        """An answer the run cannot go past; the first one is the one reported."""
        if self.fatal is None:
            self.fatal = stop
        self.requested.set()

    @property
    def is_requested(self) -> bool:
        return self.requested.is_set()

    @property
    def reason(self) -> str | None:
        """For log events: the signal, else "fatal" or "deadline"; None while running."""
        if self.signal is not None:
            return self.signal
        if self.fatal is not None:
            return FATAL
        if self.deadline_reached:
            return DEADLINE
        return None


@contextmanager
def signals_handled(shutdown: Shutdown) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `shutdown` for the duration of the block.

    Afterwards the handlers that were there before come back (the loop's own removal would
    reset them to the defaults, which kill the process).
    """
    loop = asyncio.get_running_loop()
    installed: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, shutdown.on_signal, sig.name)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            continue
        installed[sig] = previous
    try:
        yield
    finally:
        for sig, previous in installed.items():
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)


def route_process_signals(shutdown: Shutdown) -> None:
    """Send SIGINT/SIGTERM to `shutdown` outside the event loop too (process entry only).

    `signals_handled` covers the run itself. Before the loop starts listening a signal must
    still stop the run (it is seen as soon as the run starts, before any request), and after
    the report is written a late one must not kill the process with the default action, whose
    exit code would contradict the report.
    """

    def handler(signum: int, frame: object) -> None:
        shutdown.on_signal(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers (a run embedded in a worker thread)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
