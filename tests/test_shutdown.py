"""Signals reach the run's shutdown flag, inside and outside the event loop."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from worker.shutdown import Shutdown, route_process_signals, signals_handled


@pytest.fixture
def restored_handlers() -> Iterator[None]:
    """Put the process's SIGINT/SIGTERM handlers back after the test."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_first_signal_is_graceful_second_is_immediate() -> None:
    """One signal asks for a graceful stop; a second asks to stop at once."""
    shutdown = Shutdown()
    shutdown.on_signal("SIGTERM")
    assert (shutdown.is_requested, shutdown.immediate.is_set()) == (True, False)
    assert shutdown.signal == "SIGTERM"
    shutdown.on_signal("SIGINT")
    assert shutdown.immediate.is_set()
    assert shutdown.signal == "SIGINT"


def test_deadline_then_signal_reports_the_signal() -> None:
    """A signal after the deadline is recorded beside it, without being 'immediate'."""
    shutdown = Shutdown()
    shutdown.on_deadline()
    shutdown.on_signal("SIGTERM")
    assert shutdown.signal == "SIGTERM"
    assert shutdown.deadline_reached
    assert not shutdown.immediate.is_set()


@pytest.mark.usefixtures("restored_handlers")
def test_signal_outside_the_loop_reaches_the_flag() -> None:
    """Before the loop listens (or after it stopped) a real SIGTERM still sets the flag."""
    shutdown = Shutdown()
    route_process_signals(shutdown)
    os.kill(os.getpid(), signal.SIGTERM)
    assert shutdown.signal == "SIGTERM"


@pytest.mark.usefixtures("restored_handlers")
async def test_loop_handlers_give_back_the_previous_ones() -> None:
    """After the run, the handlers that were there before are back (not the killing default)."""
    outer = Shutdown()
    route_process_signals(outer)
    before = signal.getsignal(signal.SIGTERM)
    inner = Shutdown()
    with signals_handled(inner):
        os.kill(os.getpid(), signal.SIGTERM)
        await inner.requested.wait()
    assert signal.getsignal(signal.SIGTERM) is before
    assert outer.reason is None
    assert inner.signal == "SIGTERM"
