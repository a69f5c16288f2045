"""How a stop reaches every send: a gate that admits nothing after it, a sleep that wakes.

Every request passes the target's `RequestGate` just before it is sent. `StopGate` wraps the
rate limiter: a request waiting for its slot when the run stops leaves the queue with
`Stopped` instead of being sent, and one admitted in the same moment is refused after all.
`stop_aware_sleep` is the client's retry back-off, cut short the same way. Whoever sends a
request that matters (the scheduler's delete) opens `tracking_sends()`: the gate marks it
the moment it admits a send, so a request cancelled at shutdown is known to have left the
process, or known not to have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

from worker.oms.client import RequestGate
from worker.oms.errors import Throttled

_T = TypeVar("_T")


class Stopped(Exception):
    """The run stopped: this request was not sent (or its retry was not)."""


class JudgementExpired(Exception):
    """The judgement behind this send grew older than --max-staleness while it waited for
    its slot (a limiter slowed or paused by 429s, a retry back-off): it was not sent."""


@dataclass(slots=True)
class SendMark:
    """Whether a send has been admitted since the mark was opened, and of which call.

    `gated` says a `StopGate` saw the call at all; without one nobody can tell whether a
    send left, and `may_have_left` assumes it did (the report then says "may have reached").
    """

    sent: bool = False
    gated: bool = False
    call: str = ""
    # Loop time after which the judgement this send acts on is too old: the gate refuses it.
    send_by: float | None = None
    # Loop time the first send under this mark was admitted: what a read saw is at least
    # this fresh (the wait for the slot before it does not age the answer).
    first_sent_at: float | None = None

    @property
    def may_have_left(self) -> bool:
        """Whether a request of this call may have reached the server."""
        return self.sent or not self.gated


_MARK: ContextVar[SendMark | None] = ContextVar("oms_cleanup_send_mark", default=None)


@contextlib.contextmanager
def tracking_sends() -> Iterator[SendMark]:
    """Mark the sends made by this task (the coroutine's context) until the block ends."""
    mark = SendMark()
    token = _MARK.set(mark)
    try:
        yield mark
    finally:
        _MARK.reset(token)


async def until_stopped(waiting: Awaitable[_T], stopped: asyncio.Event) -> _T:
    """Await `waiting`, or raise Stopped as soon as `stopped` is set (cancelling it)."""
    work = asyncio.ensure_future(waiting)
    stop = asyncio.create_task(stopped.wait())
    try:
        await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if stopped.is_set():
        raise Stopped
    return work.result()


class StopGate:
    """A `RequestGate` in front of another: after a stop it admits nothing, at once."""

    def __init__(
        self,
        inner: RequestGate,
        *,
        stopped: asyncio.Event,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._inner = inner
        self._stopped = stopped
        # The loop's clock by default: the one judgement times (`Job.judged_at`) are taken on.
        self._clock = clock

    async def acquire(self) -> None:
        """Wait for the inner gate, unless the run stops first; mark the send as sent.

        The expiry is checked after admission, at the last moment before the send: however
        long the wait was, no request leaves on a judgement older than its mark allows.
        """
        mark = _MARK.get()
        if mark is not None:
            mark.gated = True
        if self._stopped.is_set():
            raise Stopped
        await until_stopped(self._inner.acquire(), self._stopped)
        if mark is None:
            return
        now = self._clock() if self._clock else asyncio.get_running_loop().time()
        if mark.send_by is not None and now > mark.send_by:
            raise JudgementExpired
        mark.sent = True
        if mark.first_sent_at is None:
            mark.first_sent_at = now

    def on_throttled(self, error: Throttled) -> None:
        self._inner.on_throttled(error)

    def on_success(self) -> None:
        self._inner.on_success()


def stop_aware_sleep(stopped: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    """An `asyncio.sleep` that raises Stopped when the run stops before the delay is over."""

    async def sleep(delay: float) -> None:
        if stopped.is_set():
            raise Stopped
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=max(0.0, delay))
        if stopped.is_set():
            raise Stopped

    return sleep
