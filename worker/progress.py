"""A one-line progress display on stderr for manual mass cleanups.

The scheduler bumps plain integer counters on `Progress` (no locks, no I/O: the event loop is
single-threaded). `ProgressLine` redraws them in place with a carriage return, at most once per
`interval` of its injected clock, and writes nothing at all when the stream is not a terminal,
so logs and reports redirected to files stay clean.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(slots=True)
class Progress:
    """Running counters of one run, across targets."""

    listed: int = 0
    selected: int = 0
    deleted: int = 0
    requeued: int = 0
    failed: int = 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressLine:
    """Draws a `Progress` on one terminal line; a no-op on anything but a TTY.

    The rate is deletions per second over the last `rate_window` seconds of drawn samples.
    """

    def __init__(
        self,
        progress: Progress,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.25,
        rate_window: float = 5.0,
    ) -> None:
        if interval <= 0 or rate_window <= 0:
            raise ValueError("interval and rate_window must be positive")
        self._progress = progress
        self._stream = sys.stderr if stream is None else stream
        self._clock = clock
        self._interval = interval
        self._rate_window = rate_window
        self._enabled = _is_terminal(self._stream)
        self._closed = False
        self._started = clock()
        self._last_draw: float | None = None
        self._drawn_width = 0
        self._samples: deque[tuple[float, int]] = deque()

    @property
    def enabled(self) -> bool:
        """Whether anything will be written (a terminal, not closed, no write error yet)."""
        return self._enabled and not self._closed

    def refresh(self) -> None:
        """Redraw if at least `interval` has passed since the last drawing."""
        if not self.enabled:
            return
        now = self._clock()
        if self._last_draw is not None and now - self._last_draw < self._interval:
            return
        self._draw(now, end="")

    def close(self) -> None:
        """Draw the final counts and end the line; later calls do nothing."""
        if self.enabled:
            self._draw(self._clock(), end="\n")
        self._closed = True

    async def run(self, *, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """Refresh every `interval` until cancelled (run it as a task beside the workers)."""
        while self.enabled:
            self.refresh()
            await sleep(self._interval)

    def rate(self) -> float:
        """Deletions per second over the sampled window; 0 until two samples exist."""
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self) -> str:
        """The line's text for the current counters and rate (no control characters)."""
        p = self._progress
        elapsed = max(0.0, (self._last_draw or self._started) - self._started)
        return (
            f"listed {p.listed:,}  selected {p.selected:,}  deleted {p.deleted:,}  "
            f"requeued {p.requeued:,}  failed {p.failed:,}  "
            f"{self.rate():.1f}/s  {_clock_text(elapsed)}"
        )

    def _sample(self, now: float) -> None:
        self._samples.append((now, self._progress.deleted))
        # Keep the newest sample at or before the window's start as the rate's baseline.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._rate_window:
            self._samples.popleft()

    def _draw(self, now: float, *, end: str) -> None:
        self._last_draw = now
        self._sample(now)
        text = self.render()
        # Pad over what a longer previous line left behind; no terminal escape codes needed.
        padding = " " * max(0, self._drawn_width - len(text))
        self._drawn_width = len(text)
        try:
            self._stream.write("\r" + text + padding + end)
            self._stream.flush()
        except (OSError, ValueError):
            # A vanished terminal must not stop a cleanup half-way.
            self._enabled = False
