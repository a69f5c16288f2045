"""A per-target request rate limit that backs off on 429 and recovers gradually.

asyncio-throttle does the admission (a sliding-window log, never over its limit in any
window). This module decides what that limit is: the configured rate, cut on a 429 and
grown back additively toward the configured rate (AIMD), so that a server limit below
ours costs retries, not failed tasks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asyncio_throttle.throttler import Throttler

from worker.oms.errors import Throttled

# Short windows spread a second's budget instead of bursting it at the start of each second
# (library notes); a window must still hold a few slots or low rates undershoot badly.
_MIN_WINDOW = 0.1
_SLOTS_PER_WINDOW = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How the limiter reacts to throttling."""

    decrease_factor: float = 0.5
    # Share of the configured rate regained per second without a 429.
    recovery_per_second: float = 0.05
    # Many in-flight requests see the same overload; one cut per cooldown is enough.
    cooldown: float = 1.0
    # Never stall completely: a floor keeps the run moving (and probing).
    min_rate: float = 0.5
    # When the server states its limit, aim this far below it.
    stated_limit_margin: float = 0.9


def window_for(rate: float) -> tuple[float, int]:
    """(period seconds, slots) of a sliding window that admits `rate` requests per second."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    period = max(_MIN_WINDOW, _SLOTS_PER_WINDOW / rate)
    slots = max(1, math.floor(rate * period))
    return slots / rate, slots


class AdaptiveRateLimiter:
    """A `RequestGate` for one target: `acquire` before every send."""

    def __init__(
        self,
        rate: float,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.configured_rate = rate
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self._floor_rate = rate  # the rate right after the last cut
        self._last_cut: float | None = None
        self._paused_until = 0.0
        self.throttled_count = 0
        period, slots = window_for(rate)
        self._throttler = Throttler(rate_limit=slots, period=period)
        self._applied_rate = rate

    @property
    def current_rate(self) -> float:
        """The rate in force now: the configured one, or one recovering from a cut."""
        if self._last_cut is None:
            return self.configured_rate
        elapsed = max(0.0, self._clock() - self._last_cut)
        regained = self._backoff.recovery_per_second * self.configured_rate * elapsed
        return min(self.configured_rate, self._floor_rate + regained)

    async def acquire(self) -> None:
        """Wait for a slot under the current rate (and past any Retry-After pause)."""
        wait = self._paused_until - self._clock()
        if wait > 0:
            await self._sleep(wait)
        self._apply(self.current_rate)
        await self._throttler.acquire()  # type: ignore[no-untyped-call]

    def on_throttled(self, error: Throttled) -> None:
        """Cut the rate (at most once per cooldown) and honour a Retry-After for everyone."""
        self.throttled_count += 1
        now = self._clock()
        if error.retry_after:
            self._paused_until = max(self._paused_until, now + error.retry_after)
        if self._last_cut is not None and now - self._last_cut < self._backoff.cooldown:
            return
        cut = self.current_rate * self._backoff.decrease_factor
        if error.limit_per_second:
            cut = min(cut, error.limit_per_second * self._backoff.stated_limit_margin)
        self._floor_rate = max(self._backoff.min_rate, min(cut, self.configured_rate))
        self._last_cut = now

    def on_success(self) -> None:
        """Nothing to do: recovery is a function of time since the last cut."""

    def _apply(self, rate: float) -> None:
        # Re-deriving the window on every call would churn; a 2 % change is worth applying.
        if abs(rate - self._applied_rate) <= 0.02 * self._applied_rate:
            return
        period, slots = window_for(rate)
        self._throttler.rate_limit = slots
        self._throttler.period = period
        self._applied_rate = rate
