"""The adaptive per-target limit: window sizing, admission in turn, cut on 429, recovery."""

from __future__ import annotations

import asyncio
import types

import asyncio_throttle.throttler
import pytest

from worker.oms.errors import MAX_RETRY_AFTER, ErrorInfo, Throttled
from worker.ratelimit import (
    CATCH_UP,
    PACE_GUARD,
    AdaptiveRateLimiter,
    Backoff,
    pace_for,
    second_window_for,
)


class FakeClock:
    """A monotonic clock the test moves by hand, or by sleeping on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        """The same clock under the name asyncio-throttle calls."""
        return self.now

    async def sleep(self, delay: float) -> None:
        """Pass `delay` on this clock at once, then let other coroutines run."""
        self.sleeps.append(delay)
        self.now += max(0.0, delay)
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A FakeClock that asyncio-throttle reads too (it calls `time.monotonic()` itself)."""
    fake = FakeClock()
    monkeypatch.setattr(
        asyncio_throttle.throttler, "time", types.SimpleNamespace(monotonic=fake.monotonic)
    )
    return fake


def _throttled(*, retry_after: float | None = None, limit: float | None = None) -> Throttled:
    info = ErrorInfo(method="DELETE", path="/x", http_status=429, error_code="APIG.0308")
    return Throttled(info, retry_after=retry_after, limit_per_second=limit)


def _most_in_any_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def _admit(
    limiter: AdaptiveRateLimiter, clock: FakeClock, *, waiters: int, total: int
) -> list[tuple[float, int]]:
    """`waiters` coroutines take `total` slots between them: (time, waiter) per admission."""
    admitted: list[tuple[float, int]] = []
    left = total

    async def waiter(number: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await limiter.acquire()
            admitted.append((clock.now, number))

    async with asyncio.timeout(10):
        await asyncio.gather(*(waiter(n) for n in range(waiters)))
    return admitted


@pytest.mark.parametrize(
    ("rate", "interval"),
    [(500, 1.01 / 500), (50, 1.01 / 50), (97.5, 1.01 / 97), (1, 1.01), (0.5, 2.01)],
)
def test_pace_spreads_each_window_evenly(rate: float, interval: float) -> None:
    """Admissions are spaced by the one-second window (held 10 ms longer) over its slots."""
    assert pace_for(rate) == pytest.approx(interval)


@pytest.mark.parametrize(
    ("rate", "period", "slots"),
    [(500, 1.0, 500), (97.5, 1.0, 97), (1, 1.0, 1), (2.5, 1.0, 2), (0.5, 2.0, 1), (0.1, 10.0, 1)],
)
def test_second_window_counts_whole_requests(rate: float, period: float, slots: int) -> None:
    """Every second (or 1/rate below one per second) holds at most the rate, rounded down."""
    got_period, got_slots = second_window_for(rate)
    assert got_slots == slots
    assert got_period == pytest.approx(period)


@pytest.mark.parametrize("rate", [0, -1])
def test_zero_rate_is_refused(rate: float) -> None:
    """A zero or negative rate would wait forever, so it is refused."""
    with pytest.raises(ValueError, match="positive"):
        pace_for(rate)
    with pytest.raises(ValueError, match="positive"):
        second_window_for(rate)
    with pytest.raises(ValueError, match="positive"):
        AdaptiveRateLimiter(rate)


@pytest.mark.parametrize(
    ("rate", "waiters"), [(100, 1), (100, 200), (500, 500), (20, 50), (97, 32), (3, 10)]
)
async def test_never_over_the_rate_in_any_window(clock: FakeClock, rate: int, waiters: int) -> None:
    """However many wait, no second holds more than the rate, and no tenth of one a burst."""
    limiter = AdaptiveRateLimiter(rate, clock=clock, sleep=clock.sleep)
    admitted = await _admit(limiter, clock, waiters=waiters, total=rate * 3)
    times = [moment for moment, _ in admitted]
    assert _most_in_any_window(times, 1.0) <= rate
    assert _most_in_any_window(times, 0.1) <= rate * (0.1 + CATCH_UP) + 1
    # And it is not much slower than asked: three seconds' worth takes about three seconds.
    span = times[-1] - times[0]
    assert span <= 3 * (1 + PACE_GUARD)


async def test_late_wake_ups_are_made_good(clock: FakeClock) -> None:
    """Waking 15 ms late every time (a busy loop) still yields the rate, not a lower one."""

    async def oversleep(delay: float) -> None:
        await clock.sleep(delay + 0.015)

    limiter = AdaptiveRateLimiter(100, clock=clock, sleep=oversleep)
    admitted = await _admit(limiter, clock, waiters=16, total=300)
    times = [moment for moment, _ in admitted]
    assert times[-1] - times[0] <= 3 * (1 + PACE_GUARD) + 0.02
    assert _most_in_any_window(times, 1.0) <= 100


async def test_waiters_are_served_in_arrival_order(clock: FakeClock) -> None:
    """The first to ask is the first admitted, also when every slot is taken."""
    limiter = AdaptiveRateLimiter(50, clock=clock, sleep=clock.sleep)
    order: list[int] = []

    async def one(number: int) -> None:
        await limiter.acquire()
        order.append(number)

    tasks = []
    for number in range(40):
        tasks.append(asyncio.create_task(one(number)))
        await asyncio.sleep(0)  # each starts waiting before the next one is created
    await asyncio.gather(*tasks)
    assert order == list(range(40))


async def test_only_the_head_waits_on_the_clock(clock: FakeClock) -> None:
    """Waiters do not poll: at most one sleep per admission, however many wait."""
    limiter = AdaptiveRateLimiter(100, clock=clock, sleep=clock.sleep)
    await _admit(limiter, clock, waiters=300, total=300)
    assert len(clock.sleeps) <= 300


async def test_cancelled_waiter_does_not_block_the_queue(clock: FakeClock) -> None:
    """A waiter cancelled while it waits for a slot lets the next one through."""
    hold = asyncio.Event()

    async def sleep(delay: float) -> None:
        if not hold.is_set():
            await asyncio.Event().wait()  # the head waits until it is cancelled
        await clock.sleep(delay)

    limiter = AdaptiveRateLimiter(10, clock=clock, sleep=sleep)
    await limiter.acquire()  # the next one is due a tenth of a second later
    head = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    head.cancel()
    hold.set()
    async with asyncio.timeout(5):
        await second
    assert head.cancelled()


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (0, 50),  # halved at the 429
        (4, 70),  # quick recovery: 5 % of the configured 100 per second...
        (10, 100),  # ...up to the rate that met the 429 (here the configured one)
        (100, 100),  # and never above the configured rate
    ],
)
def test_cut_then_linear_recovery(elapsed: float, expected: float) -> None:
    """A 429 without a stated limit halves the rate, which then regains 5 % a second."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(100, clock=clock)
    limiter.on_throttled(_throttled())
    clock.now += elapsed
    assert limiter.current_rate == pytest.approx(expected)


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (0, 30),  # halved from the 60 the second 429 came at
        (3, 45),  # quick: 5 of the configured 100 per second, up to 60...
        (6, 60),
        (8, 62),  # ...then a slow probe: 1 per second above it
        (46, 100),  # up to the configured rate in the end
    ],
)
def test_recovery_slows_down_above_the_last_ceiling(elapsed: float, expected: float) -> None:
    """Above the rate that last met a 429 the limiter only probes, five times slower."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(100, clock=clock)
    limiter.on_throttled(_throttled())  # 100 -> 50
    clock.now += 2  # back at 60
    limiter.on_throttled(_throttled())  # 60 -> 30, ceiling 60
    clock.now += elapsed
    assert limiter.current_rate == pytest.approx(expected)


def test_one_cut_per_cooldown() -> None:
    """A burst of 429s from concurrent requests cuts once, not once per request."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(100, clock=clock)
    for _ in range(20):
        limiter.on_throttled(_throttled())
    assert limiter.current_rate == pytest.approx(50)
    assert limiter.throttled_count == 20
    clock.now += 1.5
    limiter.on_throttled(_throttled())
    assert limiter.current_rate == pytest.approx((50 + 7.5) / 2)


@pytest.mark.parametrize(
    ("configured", "stated", "elapsed", "expected"),
    [
        (400, 100, 0, 97),  # just below the stated limit at once, not halved
        (400, 100, 600, 97),  # and never probing above it
        (500, 500, 0, 495),  # at the limit by our clock: 1 % slower, not 3 %
        (490, 500, 0, 485.1),
        (50, 100, 0, 25),  # a stated limit above ours: the 429 is not ours to explain; halve
        (50, 100, 60, 50),  # and recover to the configured rate
    ],
)
def test_stated_limit_caps_the_rate(
    configured: float, stated: float, elapsed: float, expected: float
) -> None:
    """When the gateway states its limit the rate stays just below it for the rest of the run."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(configured, clock=clock)
    limiter.on_throttled(_throttled(limit=stated))
    clock.now += elapsed
    assert limiter.current_rate == pytest.approx(expected)


@pytest.mark.parametrize(
    ("configured", "stated", "everyone_waits"),
    [
        (400, 100, True),  # we sent faster than the limit: its window is full, let it drain
        (500, 500, False),  # within the limit by our clock: bunching on the way; cap, go on
        (495, 500, False),
        (50, 100, True),  # below the limit and still throttled: a real overload
    ],
)
async def test_who_waits_out_the_retry_after(
    clock: FakeClock, configured: float, stated: float, everyone_waits: bool
) -> None:
    """Retry-After holds back every request only when the 429 means the server is overloaded."""
    limiter = AdaptiveRateLimiter(configured, clock=clock, sleep=clock.sleep)
    limiter.on_throttled(_throttled(retry_after=1.0, limit=stated))
    await limiter.acquire()
    assert clock.sleeps == ([pytest.approx(1.0)] if everyone_waits else [])
    assert limiter.current_rate < stated


def test_stated_limit_burst_cuts_once() -> None:
    """Every in-flight request meeting the same stated limit leaves the rate at the cap."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(400, clock=clock)
    for _ in range(32):
        limiter.on_throttled(_throttled(limit=100))
    assert limiter.current_rate == pytest.approx(97)


def test_floor_keeps_the_run_moving() -> None:
    """Repeated cuts never go below the minimum rate."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(10, clock=clock, backoff=Backoff(recovery_per_second=0))
    for _ in range(20):
        clock.now += 2
        limiter.on_throttled(_throttled())
    assert limiter.current_rate == pytest.approx(0.5)


async def test_retry_after_pauses_every_acquire(clock: FakeClock) -> None:
    """A Retry-After holds back the next acquire until it has passed, then no longer."""
    limiter = AdaptiveRateLimiter(100, clock=clock, sleep=clock.sleep)
    limiter.on_throttled(_throttled(retry_after=0.05))
    await limiter.acquire()
    assert clock.sleeps == [pytest.approx(0.05)]
    await limiter.acquire()
    # Then only the spacing of the halved rate.
    assert clock.sleeps == [pytest.approx(0.05), pytest.approx(pace_for(50))]


@pytest.mark.parametrize("retry_after", [100_000.0, MAX_RETRY_AFTER + 0.5])
async def test_a_huge_retry_after_pauses_no_longer_than_the_cap(
    clock: FakeClock, retry_after: float
) -> None:
    """Retry-After: 100000 must not freeze the target: the pause is the client's cap at most."""
    limiter = AdaptiveRateLimiter(100, clock=clock, sleep=clock.sleep)
    limiter.on_throttled(_throttled(retry_after=retry_after))
    await limiter.acquire()
    assert clock.sleeps == [pytest.approx(MAX_RETRY_AFTER)]


async def test_lowered_rate_applies_to_admissions(clock: FakeClock) -> None:
    """After a cut, admissions follow the lower rate at once (the window is re-derived)."""
    limiter = AdaptiveRateLimiter(400, clock=clock, sleep=clock.sleep)
    limiter.on_throttled(_throttled(limit=100))
    admitted = await _admit(limiter, clock, waiters=32, total=300)
    times = [moment for moment, _ in admitted]
    assert _most_in_any_window(times, 1.0) <= 97
