"""The rate limiter's own cost: CPU for 500 waiters at 500 requests/s, no HTTP at all."""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.harness import emit, rounded
from worker.ratelimit import AdaptiveRateLimiter

RATE = 500
WAITERS = 500
ACQUISITIONS = 2_500  # five seconds at the rate


def _most_in_any_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.benchmark
async def test_limiter_cost_with_many_waiters() -> None:
    """500 coroutines share 2,500 acquisitions at 500/s: CPU share, achieved rate, peaks."""
    limiter = AdaptiveRateLimiter(RATE)
    admitted: list[float] = []
    left = ACQUISITIONS

    async def waiter() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await limiter.acquire()
            admitted.append(time.monotonic())

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(waiter() for _ in range(WAITERS)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    assert len(admitted) == ACQUISITIONS
    steady = (len(admitted) - 1) / (admitted[-1] - admitted[0])
    emit(
        "ratelimit_cost",
        rate=RATE,
        waiters=WAITERS,
        acquisitions=ACQUISITIONS,
        wall_s=rounded(wall),
        cpu_s=rounded(cpu),
        cpu_share_of_a_core=rounded(cpu / wall),
        cpu_us_per_acquire=rounded(cpu / ACQUISITIONS * 1e6, 1),
        achieved_per_s=rounded(steady, 1),
        utilisation=rounded(steady / RATE),
        max_in_any_1s=_most_in_any_window(admitted, 1.0),
        max_in_any_100ms=_most_in_any_window(admitted, 0.1),
    )
