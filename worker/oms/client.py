"""The OMS v2 task API over HTTP: one aiohttp session, every send signed, typed errors, retries.

Everything that can go wrong leaves this module as a `worker.oms.errors.OmsError` subclass:
an HTTP answer is classified by `errors.classify`, a 2xx answer that does not match the
documented shape becomes `MalformedResponse`, and a request that never got an answer becomes
`TransportError` with the aiohttp exception chained as its cause.
"""

from __future__ import annotations

import asyncio
import enum
import random
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypeVar

import aiohttp
import pydantic
import structlog
import yarl
from aiohttp import hdrs

from worker import __version__
from worker.oms import signing
from worker.oms.auth import AkSk, Credentials, IamToken, auth_headers
from worker.oms.errors import (
    ErrorInfo,
    MalformedResponse,
    OmsError,
    Throttled,
    TransportError,
    classify,
)
from worker.oms.models import Task, TaskPage, TaskStatus
from worker.oms.retry import RetryPolicy

log = structlog.get_logger(__name__)

MAX_PAGE_SIZE = 100
_PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SIGNATURE_RE = re.compile(rb"Signature=[0-9a-fA-F]+")
_SNIPPET_CHARS = 60
_T = TypeVar("_T")
_TASK_PAGE = pydantic.TypeAdapter(TaskPage)
_TASK = pydantic.TypeAdapter(Task)
_JSON_OBJECT = pydantic.TypeAdapter(dict[str, object])


def utc_now() -> datetime:
    """The current moment, timezone-aware in UTC (the default clock for signing)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Connection settings for one OMS target (endpoint + project)."""

    endpoint: yarl.URL
    project_id: str
    connect_timeout: float = 10.0
    total_timeout: float = 60.0
    max_connections: int = 16
    ca_bundle: Path | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    user_agent: str = f"oms-cleanup/{__version__}"

    def __post_init__(self) -> None:
        if not self.endpoint.is_absolute() or self.endpoint.scheme not in ("http", "https"):
            raise ValueError("endpoint must be an absolute http(s) URL (see resolve_endpoint)")
        if not _PROJECT_ID_RE.fullmatch(self.project_id):
            # It becomes a path segment: anything beyond this alphabet is a mistake.
            raise ValueError("project_id must be 1-64 letters, digits, '-' or '_'")
        if not self.connect_timeout > 0 or not self.total_timeout > 0:
            raise ValueError("timeouts must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


class RequestKind(enum.StrEnum):
    """The four task calls, as counted in `RequestStats`."""

    LIST = "list"
    SHOW = "show"
    DELETE = "delete"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class RequestStats:
    """Sends so far, each counted under its kind (our retries and aiohttp's own re-sends on a
    stale pooled connection included), our retries, and 429s."""

    list: int = 0
    show: int = 0
    delete: int = 0
    stop: int = 0
    retries: int = 0
    throttled: int = 0

    @property
    def total(self) -> int:
        """Every send of every kind."""
        return self.list + self.show + self.delete + self.stop

    def as_report(self) -> dict[str, int]:
        """The `requests` mapping of the JSON report."""
        return {
            "list": self.list,
            "show": self.show,
            "delete": self.delete,
            "stop": self.stop,
            "retries": self.retries,
            "throttled": self.throttled,
            "total": self.total,
        }


class RequestGate(Protocol):
    """Paces sends: awaited before every send, told about every 429 and every 2xx."""

    async def acquire(self) -> None: ...

    def on_throttled(self, error: Throttled) -> None: ...

    def on_success(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str


class OmsClient:
    """Async client for the four OMS v2 task calls. Use as `async with OmsClient(...) as c:`."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        credentials: Credentials,
        gate: RequestGate | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        now: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._gate = gate
        self._sleep = sleep
        self._now = now
        self._rng = rng if rng is not None else random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._counts: Counter[str] = Counter()
        self._secrets = _secret_values(credentials)
        self._base_path = config.endpoint.path.rstrip("/")

    def __repr__(self) -> str:
        mode = "iam-token" if isinstance(self._credentials, IamToken) else "ak/sk"
        state = "open" if self._session is not None else "closed"
        return (
            f"OmsClient(endpoint='{self._config.endpoint}', "
            f"project_id={self._config.project_id!r}, auth={mode}, {state})"
        )

    @property
    def config(self) -> ClientConfig:
        """The settings this client was built with (no credentials in it)."""
        return self._config

    @property
    def stats(self) -> RequestStats:
        """A snapshot of the sends made so far."""
        c = self._counts
        return RequestStats(
            list=c[RequestKind.LIST],
            show=c[RequestKind.SHOW],
            delete=c[RequestKind.DELETE],
            stop=c[RequestKind.STOP],
            retries=c["retries"],
            throttled=c["throttled"],
        )

    async def __aenter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("OmsClient is already open")
        cfg = self._config
        connector = aiohttp.TCPConnector(limit=cfg.max_connections, ssl=self._ssl_context())
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The total limit is armed per send, after the rate limiter (see _pace_and_count).
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout),
            headers={
                hdrs.CONTENT_TYPE: "application/json",
                "X-Project-Id": cfg.project_id,
                hdrs.USER_AGENT: cfg.user_agent,
            },
            middlewares=(self._authenticate,),  # each send also gets _pace_and_count
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- the four calls -----------------------------------------------------------------

    async def list_tasks(
        self,
        *,
        limit: int = MAX_PAGE_SIZE,
        offset: int = 0,
        status: TaskStatus | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> TaskPage:
        """One page of `GET /v2/{project_id}/tasks`; `count` is the total matching the filter."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        if offset < 0:
            raise ValueError("offset must be >= 0")
        query = [("limit", str(limit)), ("offset", str(offset))]
        if status is not None:
            if status is TaskStatus.UNKNOWN:
                raise ValueError("cannot filter by the UNKNOWN status")
            query.append(("status", str(int(status))))
        if group_id is not None:
            query.append(("group_id", group_id))
        if task_name is not None:
            query.append(("task_name", task_name))
        path = self._path("/tasks")
        return await self._call(
            RequestKind.LIST,
            "GET",
            path,
            query,
            read=lambda answer: self._parse(_TASK_PAGE, answer, method="GET", path=path),
        )

    async def iter_pages(
        self,
        *,
        page_size: int = MAX_PAGE_SIZE,
        status: TaskStatus | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> AsyncIterator[TaskPage]:
        """Every page matching the filter, the way the Terraform provider pages.

        offset += entries on the page (malformed ones included); stop on a short or empty page
        or once offset reaches `count`.
        Offsets shift when tasks are deleted between page reads; a caller that deletes while
        iterating must account for that (the run lists everything before deleting).
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        offset = 0
        while True:
            page = await self.list_tasks(
                limit=page_size,
                offset=offset,
                status=status,
                group_id=group_id,
                task_name=task_name,
            )
            yield page
            # Entries set aside as malformed held their place on the page like any other.
            offset += page.size
            # An empty page also ends the loop, so a server whose `count` lies cannot spin us.
            if page.size < page_size or offset >= page.count:
                return

    async def iter_tasks(
        self,
        *,
        page_size: int = MAX_PAGE_SIZE,
        status: TaskStatus | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> AsyncIterator[Task]:
        """Every task matching the filter, page by page (see `iter_pages`)."""
        async for page in self.iter_pages(
            page_size=page_size, status=status, group_id=group_id, task_name=task_name
        ):
            for task in page.tasks:
                yield task

    async def show_task(self, task_id: int) -> Task:
        """`GET /v2/{project_id}/tasks/{task_id}`."""
        path = self._path(f"/tasks/{_checked_id(task_id)}")
        return await self._call(
            RequestKind.SHOW,
            "GET",
            path,
            [],
            read=lambda answer: self._parse(_TASK, answer, method="GET", path=path),
        )

    async def delete_task(self, task_id: int) -> None:
        """`DELETE /v2/{project_id}/tasks/{task_id}`.

        A delete can reach the server twice: after a transport error this client retries it,
        and aiohttp itself re-sends an idempotent request once when a pooled keep-alive
        connection turns out closed. The first send may have deleted the task, so the answer
        to the second can be TaskNotFound (OMS.1009) for a task this run did delete; callers
        count that as done, not as a failure.
        """
        path = self._path(f"/tasks/{_checked_id(task_id)}")
        await self._call(
            RequestKind.DELETE,
            "DELETE",
            path,
            [],
            read=lambda answer: self._check_empty(answer, method="DELETE", path=path),
        )

    async def stop_task(self, task_id: int) -> None:
        """`POST /v2/{project_id}/tasks/{task_id}/stop`.

        Unlike the SDK this client retries the POST on transient errors: stopping twice is
        harmless, the second answer is at worst TaskNotMigrating (OMS.0066).
        """
        path = self._path(f"/tasks/{_checked_id(task_id)}/stop")
        await self._call(
            RequestKind.STOP,
            "POST",
            path,
            [],
            read=lambda answer: self._check_empty(answer, method="POST", path=path),
        )

    # -- sending ------------------------------------------------------------------------

    def _path(self, suffix: str) -> str:
        """The request path: endpoint prefix, then `/v2/{project_id}` and the call's own part."""
        return f"{self._base_path}/v2/{self._config.project_id}{suffix}"

    def _url(self, path: str, query: list[tuple[str, str]]) -> yarl.URL:
        url = self._config.endpoint.with_path(path)
        if not query:
            return url
        # Sent exactly as signed (sorted, RFC 3986 encoding, space as %20) like the SDK,
        # not with yarl's form encoding, which writes a space as '+'.
        return yarl.URL(f"{url}?{signing.canonical_query(query)}", encoded=True)

    async def _call(
        self,
        kind: RequestKind,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        *,
        read: Callable[[_Answer], _T],
    ) -> _T:
        """Send until `read` accepts a 2xx, a permanent error, or the retry budget is spent.

        A GET's 2xx that `read` refuses (cut short, an HTML page, the wrong content type) is
        a glitch on the way, like a 5xx: reading again is safe, so it is retried. A DELETE or
        POST whose 2xx body is broken is not: it may have taken effect, and a blind re-send
        would hide that; it is raised for the caller to report.
        """
        session = self._session
        if session is None:
            raise RuntimeError("OmsClient is not open; use 'async with OmsClient(...)'")
        policy = self._config.retry
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                self._counts["retries"] += 1
            try:
                return read(await self._send(session, kind, method, path, query))
            except OmsError as error:
                if not _retryable(error, method=method) or not policy.should_retry(attempt):
                    raise
                retry_after = error.retry_after if isinstance(error, Throttled) else None
                delay = policy.delay(attempt, rng=self._rng, retry_after=retry_after)
                log.info(
                    "oms_request_retry",
                    kind=str(kind),
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=type(error).__name__,
                    http_status=error.http_status,
                    error_code=error.error_code,
                    request_id=error.request_id,
                )
                await self._sleep(delay)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        kind: RequestKind,
        method: str,
        path: str,
        query: list[tuple[str, str]],
    ) -> _Answer:
        """One send of ours: the answer when 2xx, else the typed error for it.

        The request's time limit is armed by `_pace_and_count` once the gate lets it go, so
        waiting for the rate limiter never counts as the request timing out.
        """
        try:
            async with asyncio.timeout(None) as limit:
                # Redirects are not followed: aiohttp would carry X-Auth-Token to the new host.
                async with session.request(
                    method,
                    self._url(path, query),
                    allow_redirects=False,
                    middlewares=(self._pace_and_count(kind, limit), self._authenticate),
                ) as response:
                    body = await response.read()
                    answer = _Answer(
                        status=response.status,
                        headers=response.headers,
                        body=body,
                        content_type=response.content_type
                        if hdrs.CONTENT_TYPE in response.headers
                        else "",
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(
                ErrorInfo(method=method, path=path, error_msg=_describe_transport(exc))
            ) from exc
        if 200 <= answer.status < 300:
            if self._gate is not None:
                self._gate.on_success()
            return answer
        error = classify(
            method=method,
            path=path,
            status=answer.status,
            headers=answer.headers,
            body=self._redact(answer.body),
        )
        if isinstance(error, Throttled):
            self._counts["throttled"] += 1
            if self._gate is not None:
                self._gate.on_throttled(error)
        raise error

    def _pace_and_count(
        self, kind: RequestKind, limit: asyncio.Timeout
    ) -> aiohttp.ClientMiddlewareType:
        """The middleware every send of one call passes, aiohttp's own re-sends included.

        aiohttp re-sends an idempotent request once when a pooled keep-alive connection turns
        out closed, below `_call`: only here does that second send meet the gate and the count.
        Whatever the gate raises (a stop, say) leaves unchanged: nothing is sent then.
        """

        async def pace_and_count(
            request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
        ) -> aiohttp.ClientResponse:
            if self._gate is not None:
                await self._gate.acquire()
            self._counts[kind] += 1
            limit.reschedule(asyncio.get_running_loop().time() + self._config.total_timeout)
            return await handler(request)

        return pace_and_count

    async def _authenticate(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Sign each send as it leaves, aiohttp's own re-sends included, with a fresh date."""
        # The SDK signs Host, Content-Type, X-Project-Id, X-Sdk-Date (+ X-Security-Token);
        # signing the same set keeps us byte-compatible with what the gateway verifies.
        # The task calls carry no body, hence the empty body hash.
        request.headers.update(
            auth_headers(
                self._credentials,
                method=request.method,
                host=request.headers[hdrs.HOST],
                path=request.url.path,
                query=list(request.url.query.items()),
                headers={
                    hdrs.CONTENT_TYPE: request.headers[hdrs.CONTENT_TYPE],
                    "X-Project-Id": request.headers["X-Project-Id"],
                },
                body=b"",
                now=self._now(),
            )
        )
        return await handler(request)

    # -- reading answers ----------------------------------------------------------------

    def _parse(
        self, shape: pydantic.TypeAdapter[_T], answer: _Answer, *, method: str, path: str
    ) -> _T:
        if answer.content_type and not _is_json(answer.content_type):
            # A captive portal or proxy page, whatever its body happens to parse as.
            raise self._malformed(
                answer, method=method, path=path, problem="not a JSON content type"
            )
        try:
            return shape.validate_json(answer.body)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in err['loc']) or 'body'}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False)[:3]
            )
            raise self._malformed(answer, method=method, path=path, problem=problems) from None

    def _check_empty(self, answer: _Answer, *, method: str, path: str) -> None:
        """Delete and stop answer with an empty body; tolerate a JSON object, nothing else.

        An HTML page with a 200 (a captive proxy, say) must not be read as "deleted".
        """
        if not answer.body.strip():
            return
        try:
            _JSON_OBJECT.validate_json(answer.body)
        except pydantic.ValidationError:
            raise self._malformed(
                answer, method=method, path=path, problem="expected an empty body"
            ) from None

    def _malformed(
        self, answer: _Answer, *, method: str, path: str, problem: str
    ) -> MalformedResponse:
        snippet = self._redact(answer.body[: _SNIPPET_CHARS * 4]).decode("utf-8", "replace")
        snippet = "".join(ch if ch.isprintable() else "?" for ch in snippet[:_SNIPPET_CHARS])
        return MalformedResponse(
            ErrorInfo(
                method=method,
                path=path,
                http_status=answer.status,
                error_msg=(
                    f"unexpected answer ({problem}); body {answer.content_type or 'untyped'}, "
                    f"{len(answer.body)} bytes, starts {snippet!r}"
                ),
                request_id=answer.headers.get("X-Request-Id"),
            )
        )

    def _redact(self, body: bytes) -> bytes:
        """Blank out our own secrets should a server echo them back (error text, snippets)."""
        for secret in self._secrets:
            body = body.replace(secret, b"***")
        return _SIGNATURE_RE.sub(b"Signature=***", body)

    def _ssl_context(self) -> ssl.SSLContext | bool:
        """Default verification, or verification against the configured CA bundle."""
        bundle = self._config.ca_bundle
        if bundle is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load CA bundle {bundle}: {exc}") from None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _retryable(error: OmsError, *, method: str) -> bool:
    """Transient errors, and a GET's broken 2xx (reading again changes nothing on OMS)."""
    if error.retryable:
        return True
    return (
        method == "GET"
        and isinstance(error, MalformedResponse)
        and error.http_status is not None
        and 200 <= error.http_status < 300
    )


def _checked_id(task_id: int) -> int:
    if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id <= 0:
        raise ValueError(f"task id must be a positive integer, got {task_id!r}")
    return task_id


def _secret_values(credentials: Credentials) -> tuple[bytes, ...]:
    if isinstance(credentials, AkSk):
        values = [credentials.secret_key, credentials.security_token]
    else:
        values = [credentials.token]
    return tuple(v.get_secret_value().encode() for v in values if v and v.get_secret_value())


def _describe_transport(exc: BaseException) -> str:
    """What went wrong on the wire, from the exception type and its own short text.

    aiohttp's messages name the host and the OS error, never request headers.
    """
    detail = str(exc).strip()
    if isinstance(exc, TimeoutError) and not detail:
        detail = "timed out"
    name = type(exc).__name__
    return f"{name}: {detail[:200]}" if detail else name
