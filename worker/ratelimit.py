"""A per-target request rate limit that backs off on 429 and recovers gradually.

asyncio-throttle does the admission: its sliding-window log bounds every second (never more
than the rate in any second). In front of it this module paces and orders the requests, and
decides what the rate is:

- Waiters queue in FIFO order behind one lock; only the head looks at the clock, and it
  sleeps until the exact moment it may go instead of polling. asyncio-throttle alone wakes
  every waiter every 10 ms: CPU that grows with the number of waiters, no order among them,
  and lateness that a sliding log never gives back (5-7 % of the rate at 500/s).
- Admissions are spaced evenly (GCRA: each has a due time one interval after the previous
  one's), so a second's budget does not leave in one burst, and an admission that wakes a
  little late does not push back all the ones after it.
- The rate is the configured one, cut on a 429 and grown back (AIMD). A 429 that states the
  gateway's limit caps the rate just below it for the rest of the run: probing above a limit
  the server has stated only buys more 429s. Without a stated limit, the rate at which the
  429 came is remembered as a ceiling: recovery is quick up to it and slow above it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asyncio_throttle.throttler import Throttler

from worker.oms.errors import MAX_RETRY_AFTER, Throttled

# Requests are paced as if each second were this much longer: at exactly the rate, a server
# counting the same requests on its own clock would see a full second whenever one request
# travels a little slower than the one `rate` before it. 10 ms is 1 % of the rate.
PACE_GUARD = 0.01
# How far behind its schedule a queue of requests may catch up (a late wake-up, a short
# stall); the one-second window still bounds the result.
CATCH_UP = 0.02
# The throttler compares with a strict '>': wake just after the oldest entry leaves the window.
_WAKE_EPSILON = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How the limiter reacts to throttling."""

    decrease_factor: float = 0.5
    # Share of the configured rate regained per second, up to the last rate that met a 429.
    recovery_per_second: float = 0.05
    # Share of the configured rate gained per second above that rate: a slow probe.
    probe_per_second: float = 0.01
    # Many in-flight requests see the same overload; one cut per cooldown is enough.
    cooldown: float = 1.0
    # Never stall completely: a floor keeps the run moving (and probing).
    min_rate: float = 0.5
    # When we exceeded the limit the server states, stay this far below it.
    stated_limit_margin: float = 0.97
    # Throttled at the stated limit though within it by our clock: slow down this much.
    bunching_step: float = 0.01


def second_window_for(rate: float) -> tuple[float, int]:
    """(period seconds, slots) of the window that bounds each second: whole requests only."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    if rate < 1:
        return 1 / rate, 1
    return 1.0, math.floor(rate)


def pace_for(rate: float) -> float:
    """Seconds between two admissions: the one-second window's budget, spread evenly."""
    period, slots = second_window_for(rate)
    return (period + PACE_GUARD) / slots


class _Pacer:
    """Even spacing by due times (GCRA-like).

    While requests queue, the schedule is kept: an admission that went up to `catch_up` late
    does not push back the ones after it, which go early until the schedule is met again.
    A request that finds nobody waiting starts a new schedule: idle time earns no burst.
    """

    def __init__(self, interval: float, *, catch_up: float) -> None:
        self.interval = interval
        self._catch_up = catch_up
        self._due = -math.inf  # when the next admission is due on schedule

    def until_due(self, now: float) -> float:
        """Seconds until the next admission may go (0 or less: now)."""
        return self._due - now

    def admit(self, now: float, *, backlog: bool) -> None:
        """Record an admission at `now`; `backlog` when it had to wait for it."""
        credit = self._catch_up if backlog else 0.0
        self._due = max(self._due, now - credit) + self.interval


class _Window:
    """One asyncio-throttle sliding window, and when it next has a free slot."""

    def __init__(self, period: float, slots: int, *, clock: Callable[[], float]) -> None:
        self._throttler = Throttler(rate_limit=slots, period=period)
        self._clock = clock
        self._period = period
        self._slots = slots

    def resize(self, period: float, slots: int) -> None:
        """A new size; admissions already logged keep counting."""
        self._throttler.rate_limit = self._slots = slots
        self._throttler.period = self._period = period

    def until_free(self) -> float:
        """Seconds until a slot is free (0 when one is free now)."""
        throttler = self._throttler
        throttler.flush()  # type: ignore[no-untyped-call]
        # The log of admission times is private to asyncio-throttle 1.0.2 (pinned); reading
        # it is what turns polling into one exact wake-up.
        admitted: deque[float] = throttler._task_logs
        excess = len(admitted) - self._slots
        if excess < 0:
            return 0.0
        return admitted[excess] + self._period - self._clock() + _WAKE_EPSILON

    async def admit(self) -> None:
        """Record an admission; immediate when `until_free()` just returned 0."""
        await self._throttler.acquire()  # type: ignore[no-untyped-call]


class AdaptiveRateLimiter:
    """A `RequestGate` for one target: `acquire` before every send.

    `clock` must be the throttler's clock (`time.monotonic`) outside tests: wake-up times are
    computed from the throttler's log of admission times.
    """

    def __init__(
        self,
        rate: float,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.configured_rate = rate
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self._floor_rate = rate  # the rate right after the last cut
        self._last_cut: float | None = None
        # The rate at which the last unexplained 429 came: recovery slows down above it.
        self._knee: float | None = None
        # The gateway's stated limit, less the margin: never exceeded once known.
        self._stated_cap: float | None = None
        self._paused_until = 0.0
        self._turn = asyncio.Lock()  # FIFO: waiters are served in the order they came
        self._inside = 0  # coroutines in acquire(), admitted or queued
        self.throttled_count = 0
        self._pacer = _Pacer(pace_for(rate), catch_up=CATCH_UP)
        period, slots = second_window_for(rate)
        self._second = _Window(period, slots, clock=clock)
        self._applied_rate = rate

    @property
    def current_rate(self) -> float:
        """The rate in force now: the configured one, or one recovering from a cut."""
        cap = self.configured_rate
        if self._stated_cap is not None:
            cap = min(cap, self._stated_cap)
        if self._last_cut is None:
            return cap
        elapsed = max(0.0, self._clock() - self._last_cut)
        fast = self._backoff.recovery_per_second * self.configured_rate
        slow = self._backoff.probe_per_second * self.configured_rate
        knee = cap if self._knee is None else min(self._knee, cap)
        floor = self._floor_rate
        if floor >= knee:
            rate = floor + slow * elapsed
        elif fast <= 0:
            rate = floor
        else:
            to_knee = (knee - floor) / fast
            if elapsed <= to_knee:
                rate = floor + fast * elapsed
            else:
                rate = knee + slow * (elapsed - to_knee)
        return min(cap, rate)

    async def acquire(self) -> None:
        """Wait for a slot under the current rate (and past any Retry-After pause), in turn."""
        # Someone ahead (admitted or queued): this one is part of a queue, not after a lull.
        backlog = self._inside > 0
        self._inside += 1
        try:
            async with self._turn:
                while True:
                    paused = self._paused_until - self._clock()
                    if paused > 0:
                        await self._sleep(paused)
                        continue  # another 429 may have moved the pause meanwhile
                    self._apply(self.current_rate)
                    wait = max(self._pacer.until_due(self._clock()), self._second.until_free())
                    if wait <= 0:
                        break
                    await self._sleep(wait)
                    backlog = True
                self._pacer.admit(self._clock(), backlog=backlog)
                # The window has a free slot now, so this records the admission at once.
                await self._second.admit()
        finally:
            self._inside -= 1

    def on_throttled(self, error: Throttled) -> None:
        """Slow down for a 429: how much depends on what the gateway said its limit is.

        - We sent faster than the stated limit: cap a margin below it and honour Retry-After
          for every request (the server's window is full; let it drain).
        - We sent at the stated limit (within the margin) by our own clock: the requests
          bunched up on the way. Cap 1 % lower per such 429 (once per cooldown); only the
          throttled request waits (it retries after its Retry-After), the others go on.
        - No stated limit, or well below it: cut multiplicatively (once per cooldown) and
          honour Retry-After for everyone.
        """
        self.throttled_count += 1
        now = self._clock()
        rate = self.current_rate
        cooling = self._last_cut is not None and now - self._last_cut < self._backoff.cooldown
        limit = error.limit_per_second
        if limit:
            below = max(self._backoff.min_rate, limit * self._backoff.stated_limit_margin)
            if rate > limit:
                self._stated_cap = below
                self._pause(error, now)
                self._cut(below, now)
                return
            if rate >= below:
                if not cooling:
                    self._stated_cap = max(
                        self._backoff.min_rate, rate * (1 - self._backoff.bunching_step)
                    )
                    self._cut(self._stated_cap, now)
                return
            self._stated_cap = min(limit, self._stated_cap or limit)
        self._pause(error, now)
        if cooling:
            return
        self._knee = rate
        self._cut(rate * self._backoff.decrease_factor, now)

    def on_success(self) -> None:
        """Nothing to do: recovery is a function of time since the last cut."""

    def _pause(self, error: Throttled, now: float) -> None:
        if error.retry_after:
            # The client's cap, again: a Throttled built elsewhere must not freeze the target.
            pause = min(error.retry_after, MAX_RETRY_AFTER)
            self._paused_until = max(self._paused_until, now + pause)

    def _cut(self, rate: float, now: float) -> None:
        self._floor_rate = max(self._backoff.min_rate, min(rate, self.configured_rate))
        self._last_cut = now

    def _apply(self, rate: float) -> None:
        # Re-deriving the window on every call would churn; a 2 % change is worth applying.
        if abs(rate - self._applied_rate) <= 0.02 * self._applied_rate:
            return
        self._pacer.interval = pace_for(rate)
        period, slots = second_window_for(rate)
        self._second.resize(period, slots)
        self._applied_rate = rate
