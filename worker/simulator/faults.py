"""The misbehaviour the simulator can inject: latency, throttling, 5xx, drops, slowness, bad bodies.

Decisions come from a seeded RNG that draws the same number of values for every request, so a
given sequence of requests meets the same faults on every run.
"""

from __future__ import annotations

import enum
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Malformation(enum.Enum):
    """Ways a list answer can be broken."""

    HTML_PAGE = "html_page"
    # A captive portal or proxy answering 200 with its own page.
    HTML_200 = "html_200"
    TRUNCATED_JSON = "truncated_json"
    WRONG_TYPES = "wrong_types"


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Knobs for injected faults; the defaults inject nothing."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    # Authenticated API requests admitted per sliding second; None for no limit.
    rate_limit: int | None = None
    # Whether a 429 carries `Retry-After` (unknown for real OMS: clients must cope with both).
    retry_after: bool = True
    # Whether the 429's message states the applied limit ("limit:50,time:1 second"), as the
    # reference says; a gateway that does not must still be handled.
    state_limit: bool = True
    error_rate: float = 0.0
    drop_rate: float = 0.0
    # A drop after the call took effect is the nasty real case: the delete happened, the
    # answer was lost, and the retry meets OMS.1009.
    drop_after_processing: bool = False
    slow_rate: float = 0.0
    slow_seconds: float = 5.0
    # Share of list answers that are broken (HTML 502, HTML 200, truncated JSON, wrong types).
    malformed_rate: float = 0.0
    # The ways a malformed answer is broken, drawn evenly.
    malformations: tuple[Malformation, ...] = tuple(Malformation)
    # When set, every 429 states this `Retry-After` (seconds) instead of the window's own
    # wait: a gateway bug or a hostile middlebox ("Retry-After: 100000").
    retry_after_seconds: int | None = None
    # Another actor cleaning up while we list: after each list page it deletes this many
    # tasks (in `other_deleter_states`) at offsets the page already passed, so every later
    # page shifts. `other_deleter_budget` bounds how many it deletes in all (None: no bound).
    other_deleter_per_page: int = 0
    other_deleter_states: frozenset[int] = frozenset({3, 4, 5})
    other_deleter_budget: int | None = None
    # Requests an IAM token is accepted for before it expires; None for never.
    token_expires_after: int | None = None
    # Requests an AK/SK is accepted for before it is revoked (deleted in IAM): every later
    # request signed with it is answered 401 APIG.0301; None for never.
    credentials_revoked_after: int | None = None
    # Projects where the key may list but not change tasks: every DELETE and stop there is
    # answered 403 OMS.0206 (an IAM policy granting read-only OMS access).
    read_only_projects: tuple[str, ...] = ()
    # The gateway locks an AK/SK after more than this many consecutive failed requests, for
    # `key_lockout_seconds` of the state clock (5 and 5 min per the API notes); None: never.
    key_lockout_after: int | None = None
    key_lockout_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do to one request."""

    delay_seconds: float = 0.0
    drop: bool = False
    server_error: int | None = None
    slow: bool = False
    malformation: Malformation | None = None


NO_FAULTS = FaultPlan()

_SERVER_ERRORS = (500, 502, 503)


class FaultInjector:
    """Draws a FaultPlan per API request from a seeded RNG."""

    def __init__(self, config: FaultConfig, *, seed: int) -> None:
        self._config = config
        self._rng = random.Random(f"oms-faults:{seed}")
        self._idle = (
            config.latency_ms <= 0
            and config.jitter_ms <= 0
            and config.error_rate <= 0
            and config.drop_rate <= 0
            and config.slow_rate <= 0
            and config.malformed_rate <= 0
        )

    @property
    def rng(self) -> random.Random:
        """The injector's RNG, also used to shape malformed bodies."""
        return self._rng

    def plan(self, *, is_list: bool) -> FaultPlan:
        """Decide the faults for one request; malformation only applies to list calls."""
        if self._idle:
            return NO_FAULTS
        c = self._config
        r = self._rng
        # Always draw the same values in the same order, whatever the outcome.
        jitter = (r.random() * 2 - 1) * c.jitter_ms
        drop, error, slow, malformed = r.random(), r.random(), r.random(), r.random()
        error_status = r.choice(_SERVER_ERRORS)
        malformation = r.choice(c.malformations)
        return FaultPlan(
            delay_seconds=max(0.0, c.latency_ms + jitter) / 1000,
            drop=drop < c.drop_rate,
            server_error=error_status if error < c.error_rate else None,
            slow=slow < c.slow_rate,
            malformation=malformation if is_list and malformed < c.malformed_rate else None,
        )


class SlidingWindow:
    """Admits at most `limit` events in any `window` seconds (a sliding log)."""

    def __init__(
        self, limit: int, *, window: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1:
            raise ValueError("rate limit must be at least 1 per window")
        self.limit = limit
        self._window = window
        self._clock = clock
        self._admitted: deque[float] = deque()

    def admit(self) -> float | None:
        """None when admitted (and recorded); otherwise seconds until a slot frees."""
        now = self._clock()
        horizon = now - self._window
        admitted = self._admitted
        while admitted and admitted[0] <= horizon:
            admitted.popleft()
        if len(admitted) < self.limit:
            admitted.append(now)
            return None
        return admitted[0] - horizon


def throttle_message(limit: int, *, stated: bool = True) -> str:
    """The APIG.0308 text, stating the applied limit as the real gateway does (if `stated`)."""
    text = "The throttling threshold has been reached: policy user over ratelimit"
    return f"{text},limit:{limit},time:1 second" if stated else text


def retry_after_header(wait_seconds: float) -> str:
    """Whole seconds, never 0: `Retry-After` has no fractional form."""
    return str(max(1, math.ceil(wait_seconds)))


_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


_HTML_LOGIN = (
    b"<!DOCTYPE html>\r\n<html><head><title>Sign in</title></head>\r\n"
    b'<body><form action="/login">Please sign in to continue.</form></body></html>\r\n'
)


def malformed_list_answer(
    malformation: Malformation, page: dict[str, Any], rng: random.Random
) -> tuple[int, str, bytes]:
    """(status, content type, body) of a broken answer to a list call."""
    if malformation is Malformation.HTML_PAGE:
        return 502, "text/html", _HTML_502
    if malformation is Malformation.HTML_200:
        return 200, "text/html", _HTML_LOGIN
    if malformation is Malformation.TRUNCATED_JSON:
        body = json.dumps(page, ensure_ascii=False).encode()
        return 200, "application/json", body[: max(1, len(body) // 2)]
    tasks = [dict(task) for task in page["tasks"]]
    broken: dict[str, Any] = {"tasks": tasks, "count": page["count"]}
    if tasks:
        victim = tasks[rng.randrange(len(tasks))]
        key = rng.choice(("status", "id"))
        victim[key] = str(victim[key])
    else:
        broken["count"] = str(page["count"])
    return 200, "application/json", json.dumps(broken, ensure_ascii=False).encode()
