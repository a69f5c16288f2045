"""The stop reaches every send: the gate wakes its waiters, the back-off sleep wakes, marks."""

from __future__ import annotations

import asyncio

import pytest

from worker.oms.errors import ErrorInfo, Throttled
from worker.ratelimit import AdaptiveRateLimiter
from worker.stopping import (
    JudgementExpired,
    StopGate,
    Stopped,
    stop_aware_sleep,
    tracking_sends,
)


class Recording:
    """A gate that admits when told to, and records what it was told."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.throttled = 0
        self.successes = 0

    async def acquire(self) -> None:
        await self.open.wait()

    def on_throttled(self, error: Throttled) -> None:
        self.throttled += 1

    def on_success(self) -> None:
        self.successes += 1


async def test_waiters_at_the_rate_limiter_end_at_the_stop() -> None:
    """63 workers queued at a 1/s limiter all leave with Stopped the moment the run stops."""
    stopped = asyncio.Event()
    gate = StopGate(AdaptiveRateLimiter(1.0), stopped=stopped)
    await gate.acquire()  # the one slot of this second
    admitted: list[int] = []

    async def worker(number: int) -> None:
        with tracking_sends() as mark:
            try:
                await gate.acquire()
            finally:
                if mark.sent:
                    admitted.append(number)

    workers = [asyncio.create_task(worker(n)) for n in range(63)]
    await asyncio.sleep(0)
    stopped.set()
    results = await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 5)
    assert all(isinstance(result, Stopped) for result in results)
    assert admitted == []


async def test_admitted_in_the_same_moment_as_the_stop_is_refused() -> None:
    """An admission that comes with the stop is not used: checked again after admission."""
    stopped = asyncio.Event()
    inner = Recording()
    gate = StopGate(inner, stopped=stopped)
    with tracking_sends() as mark:
        waiting = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        inner.open.set()
        stopped.set()
        with pytest.raises(Stopped):
            await waiting
    assert not mark.sent
    assert mark.gated


async def test_after_a_stop_nothing_is_admitted_at_all() -> None:
    """Once stopped, acquire raises at once, even with the inner gate wide open."""
    stopped = asyncio.Event()
    inner = Recording()
    inner.open.set()
    stopped.set()
    with pytest.raises(Stopped):
        await StopGate(inner, stopped=stopped).acquire()


async def test_an_admitted_send_is_marked_and_feedback_passes_through() -> None:
    """Admission marks the send as sent; 429s and successes still reach the inner gate."""
    stopped = asyncio.Event()
    inner = Recording()
    inner.open.set()
    gate = StopGate(inner, stopped=stopped)
    with tracking_sends() as mark:
        await gate.acquire()
    assert mark.sent
    assert mark.may_have_left
    gate.on_throttled(Throttled(ErrorInfo(method="GET", path="/", http_status=429)))
    gate.on_success()
    assert (inner.throttled, inner.successes) == (1, 1)


def test_a_call_no_gate_saw_may_have_left() -> None:
    """Without a StopGate nobody knows whether the send left: assume it may have."""
    with tracking_sends() as mark:
        pass
    assert mark.may_have_left


async def test_back_off_sleep_wakes_at_the_stop() -> None:
    """A retry back-off of an hour ends with Stopped as soon as the run stops."""
    stopped = asyncio.Event()
    sleep = stop_aware_sleep(stopped)
    sleeping = asyncio.ensure_future(sleep(3600))
    await asyncio.sleep(0)
    stopped.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(sleeping, 5)


async def test_back_off_sleep_sleeps_while_running() -> None:
    """Without a stop the sleep just returns; after one it raises before sleeping."""
    stopped = asyncio.Event()
    sleep = stop_aware_sleep(stopped)
    await sleep(0)
    stopped.set()
    with pytest.raises(Stopped):
        await sleep(0)


class SlowSlot:
    """A gate whose slot comes `wait` seconds later on a hand-moved clock (a 429 pause)."""

    def __init__(self, wait: float) -> None:
        self.clock = 100.0
        self.wait = wait

    async def acquire(self) -> None:
        self.clock += self.wait

    def on_throttled(self, error: Throttled) -> None:
        return None

    def on_success(self) -> None:
        return None


@pytest.mark.parametrize(
    ("wait", "refused"),
    [(0.5, False), (1.0, False), (1.001, True), (60.0, True)],
    ids=["well-within", "at-the-bound", "just-past", "a-long-pause"],
)
async def test_a_judgement_that_expires_at_the_limiter_is_not_sent(
    wait: float, refused: bool
) -> None:
    """The expiry is checked after the slot came: a wait past it refuses the send, unsent."""
    inner = SlowSlot(wait)
    gate = StopGate(inner, stopped=asyncio.Event(), clock=lambda: inner.clock)
    with tracking_sends() as mark:
        mark.send_by = 101.0
        if refused:
            with pytest.raises(JudgementExpired):
                await gate.acquire()
        else:
            await gate.acquire()
    assert mark.sent is not refused
    assert mark.first_sent_at == (None if refused else 100.0 + wait)


async def test_a_read_without_expiry_records_when_it_left() -> None:
    """A mark without `send_by` (a refresh read) is never refused; its first send is timed."""
    inner = SlowSlot(5.0)
    gate = StopGate(inner, stopped=asyncio.Event(), clock=lambda: inner.clock)
    with tracking_sends() as mark:
        await gate.acquire()
        await gate.acquire()
    assert mark.sent
    assert mark.first_sent_at == 105.0
