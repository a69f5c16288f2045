"""Typed OMS errors, and the one place that decides what an HTTP answer means.

`classify` is pure: the client feeds it the status, headers and body of every
non-2xx answer and raises what it returns. Transport failures are wrapped by the
client into `TransportError` with the aiohttp exception chained as the cause.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

TASK_RUNNING = "OMS.0063"
INVALID_PARAMETERS = "OMS.0064"
NOT_MIGRATING = "OMS.0066"
NOT_FOUND = "OMS.1009"
NO_PERMISSION = "OMS.0206"
AUTH_FAILED = "APIG.0301"
THROTTLED = "APIG.0308"

# The longest wait any Retry-After may impose, in the client's back-off and in the rate limiter
# alike: a hostile or buggy header ("Retry-After: 100000") must cost a minute, not the run.
MAX_RETRY_AFTER = 60.0

_LIMIT_RE = re.compile(r"limit:\s*(\d+)\s*,\s*time:\s*(\d+)\s*(second|minute|hour)", re.I)
_PERIOD_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What the API said about a failed call. Never holds a credential."""

    method: str
    path: str
    http_status: int | None = None
    error_code: str | None = None
    error_msg: str | None = None
    request_id: str | None = None

    def as_report(self) -> dict[str, Any]:
        """The `last_error` shape of the JSON report."""
        return {
            "http_status": self.http_status,
            "error_code": self.error_code,
            "error_msg": self.error_msg,
            "request_id": self.request_id,
        }


class OmsError(Exception):
    """Base of every error the client raises."""

    retryable: ClassVar[bool] = False

    def __init__(self, info: ErrorInfo) -> None:
        self.info = info
        super().__init__(self._describe())

    def _describe(self) -> str:
        i = self.info
        parts = [f"{i.method} {i.path}"]
        if i.http_status is not None:
            parts.append(f"HTTP {i.http_status}")
        if i.error_code:
            parts.append(i.error_code)
        if i.error_msg:
            parts.append(i.error_msg)
        if i.request_id:
            parts.append(f"request_id={i.request_id}")
        return f"{type(self).__name__}: " + ", ".join(parts)

    @property
    def http_status(self) -> int | None:
        return self.info.http_status

    @property
    def error_code(self) -> str | None:
        return self.info.error_code

    @property
    def request_id(self) -> str | None:
        return self.info.request_id


class TaskRunning(OmsError):
    """OMS.0063: the task is active and cannot be deleted yet."""


class TaskNotFound(OmsError):
    """OMS.1009: no such task."""


class TaskNotMigrating(OmsError):
    """OMS.0066: stop was called on a task that is not migrating (harmless when stopping)."""


class InvalidRequest(OmsError):
    """OMS.0064 and any other 400: a bug or bad input, never retried."""


class PermissionDenied(OmsError):
    """403 / OMS.0206: the credentials lack OMS permission; fatal for the run."""


class AuthFailed(OmsError):
    """401 / APIG.0301: never retried, the gateway locks a key after repeated failures."""


class Throttled(OmsError):
    """429 / APIG.0308: the gateway's rate limit was hit."""

    retryable = True

    def __init__(
        self,
        info: ErrorInfo,
        *,
        retry_after: float | None = None,
        limit_per_second: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.limit_per_second = limit_per_second
        super().__init__(info)


class ServerError(OmsError):
    """5xx from OMS or the gateway."""

    retryable = True


class TransportError(OmsError):
    """The request never got an HTTP answer: reset, timeout, refused."""

    retryable = True


class MalformedResponse(OmsError):
    """An answer not in the shape the API documents (HTML page, truncated, wrong types)."""


def parse_error_body(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(error_code, error_msg, request_id) from an error body; Nones when it is not JSON."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and value else None

    return text("error_code"), text("error_msg"), text("request_id")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds form only); None when absent or bad.

    Capped at MAX_RETRY_AFTER here, where the value enters, so that no consumer (the client's
    back-off, the limiter's pause) can be handed a longer wait.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def parse_limit(message: str | None) -> float | None:
    """Requests per second from a throttling message like `... limit:60,time:1 minute`."""
    if not message:
        return None
    match = _LIMIT_RE.search(message)
    if match is None:
        return None
    window = int(match[2]) * _PERIOD_SECONDS[match[3].lower()]
    return int(match[1]) / window if window > 0 else None


def classify(
    *, method: str, path: str, status: int, headers: Mapping[str, str], body: bytes
) -> OmsError:
    """Turn a non-2xx answer into the typed error it means."""
    code, msg, body_request_id = parse_error_body(body)
    request_id = _header(headers, "X-Request-Id") or body_request_id
    info = ErrorInfo(
        method=method,
        path=path,
        http_status=status,
        error_code=code,
        error_msg=msg,
        request_id=request_id,
    )
    if status < 400:
        # Only 4xx/5xx carry an OMS error; anything else (a redirect, 1xx) is not an answer
        # this client understands, whatever its body says.
        return MalformedResponse(info)
    if status == 429 or code == THROTTLED:
        return Throttled(
            info,
            retry_after=parse_retry_after(_header(headers, "Retry-After")),
            limit_per_second=parse_limit(msg),
        )
    if status >= 500:
        return ServerError(info)
    if status == 401 or code == AUTH_FAILED:
        return AuthFailed(info)
    if status == 403 or code == NO_PERMISSION:
        return PermissionDenied(info)
    if code is None:
        # A 4xx without an OMS error body (a proxy's 404 page, say) is not an OMS answer:
        # reading it as "task not found" would report a task gone that was never touched.
        return MalformedResponse(info)
    by_code: dict[str, type[OmsError]] = {
        TASK_RUNNING: TaskRunning,
        NOT_FOUND: TaskNotFound,
        NOT_MIGRATING: TaskNotMigrating,
    }
    return by_code.get(code, InvalidRequest)(info)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup, whether `headers` is a multidict or a plain dict."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)
