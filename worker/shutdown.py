"""Shutdown as a flag: it stops new work; whoever is running decides how to wind down.

A first SIGINT/SIGTERM asks for a graceful stop (no new request, in-flight ones get a
grace period); a second one asks to stop at once. The deadline and a fatal API error stop
the run the same graceful way. Nothing here exits the process.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
DEADLINE = "deadline"
FATAL = "fatal"


class Shutdown:
    """Why and how urgently the run should stop; `reason` is None while it should go on."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.requested = asyncio.Event()
        self.immediate = asyncio.Event()

    def request(self, reason: str) -> None:
        """Stop taking new work (deadline, fatal error). The first reason given stays."""
        if self.reason is None:
            self.reason = reason
        self.requested.set()

    def on_signal(self, name: str) -> None:
        """A first signal stops gracefully; a second one stops at once."""
        if self.signal is not None:
            self.immediate.set()
        self.reason = name
        self.requested.set()

    @property
    def is_requested(self) -> bool:
        return self.requested.is_set()

    @property
    def signal(self) -> str | None:
        """The signal's name when a signal stopped the run."""
        return self.reason if self.reason in SIGNAL_EXIT_CODES else None

    @property
    def signal_exit_code(self) -> int | None:
        """130 or 143 when a signal stopped the run, else None."""
        return SIGNAL_EXIT_CODES.get(self.reason or "")


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
