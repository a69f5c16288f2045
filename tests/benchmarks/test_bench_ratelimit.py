"""The rate limiter's own cost: CPU for 500 waiters at 500 requests/s, no HTTP at all."""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.harness import emit, rounded
from worker.ratelimit import AdaptiveRateLimiter

SECONDS = 5


def _most_in_any_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.benchmark
@pytest.mark.parametrize(("rate", "waiters"), [(500, 500), (50, 1_000)])
async def test_limiter_cost_with_many_waiters(rate: int, waiters: int) -> None:
    """Many coroutines share five seconds' worth of acquisitions: CPU, achieved rate, peaks."""
    limiter = AdaptiveRateLimiter(rate)
    admitted: list[float] = []
    acquisitions = left = rate * SECONDS

    async def waiter() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await limiter.acquire()
            admitted.append(time.monotonic())

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(waiter() for _ in range(waiters)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    assert len(admitted) == acquisitions
    # Whole seconds after the first: the first second's budget may leave early by design.
    start = admitted[0] + 1.0
    middle = [t for t in admitted if start <= t < start + SECONDS - 2]
    steady = len(middle) / (SECONDS - 2)
    emit(
        "ratelimit_cost",
        rate=rate,
        waiters=waiters,
        acquisitions=acquisitions,
        wall_s=rounded(wall),
        cpu_s=rounded(cpu),
        cpu_share_of_a_core=rounded(cpu / wall),
        cpu_us_per_acquire=rounded(cpu / acquisitions * 1e6, 1),
        achieved_per_s=rounded(steady, 1),
        utilisation=rounded(steady / rate),
        max_in_any_1s=_most_in_any_window(admitted, 1.0),
        max_in_any_100ms=_most_in_any_window(admitted, 0.1),
    )
