"""The adaptive per-target limit: window sizing, cut on 429, gradual recovery."""

from __future__ import annotations

import pytest

from worker.oms.errors import ErrorInfo, Throttled
from worker.ratelimit import AdaptiveRateLimiter, Backoff, window_for


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttled(*, retry_after: float | None = None, limit: float | None = None) -> Throttled:
    info = ErrorInfo(method="DELETE", path="/x", http_status=429, error_code="APIG.0308")
    return Throttled(info, retry_after=retry_after, limit_per_second=limit)


@pytest.mark.parametrize(
    ("rate", "period", "slots"),
    [(500, 0.1, 50), (50, 0.1, 5), (20, 0.25, 5), (3, 5 / 3, 5), (0.5, 10.0, 5), (1000, 0.1, 100)],
)
def test_window_admits_the_rate(rate: float, period: float, slots: int) -> None:
    """Each window holds slots/period == rate, with at least a few slots per window."""
    got_period, got_slots = window_for(rate)
    assert got_slots == slots
    assert got_period == pytest.approx(period)
    assert got_slots / got_period == pytest.approx(rate)


def test_window_rejects_zero_rate() -> None:
    """A zero rate would wait forever, so it is refused."""
    with pytest.raises(ValueError, match="positive"):
        window_for(0)


def test_cut_then_linear_recovery() -> None:
    """A 429 halves the rate, which then regains 5 % of the configured rate per second."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(100, clock=clock)
    limiter.on_throttled(_throttled())
    assert limiter.current_rate == pytest.approx(50)
    clock.now += 4
    assert limiter.current_rate == pytest.approx(70)
    clock.now += 100
    assert limiter.current_rate == pytest.approx(100)


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


def test_stated_limit_sets_the_cut() -> None:
    """When the gateway states its limit the rate drops just below it."""
    limiter = AdaptiveRateLimiter(400, clock=FakeClock())
    limiter.on_throttled(_throttled(limit=100))
    assert limiter.current_rate == pytest.approx(90)


def test_floor_keeps_the_run_moving() -> None:
    """Repeated cuts never go below the minimum rate."""
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(10, clock=clock, backoff=Backoff(recovery_per_second=0))
    for _ in range(20):
        clock.now += 2
        limiter.on_throttled(_throttled())
    assert limiter.current_rate == pytest.approx(0.5)


async def test_retry_after_pauses_every_acquire() -> None:
    """A Retry-After holds back the next acquire until it has passed."""
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    clock = FakeClock()
    limiter = AdaptiveRateLimiter(100, clock=clock, sleep=record)
    limiter.on_throttled(_throttled(retry_after=0.05))
    await limiter.acquire()
    clock.now += 0.05
    await limiter.acquire()
    assert slept == [pytest.approx(0.05)]
