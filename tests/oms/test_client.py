"""OmsClient over real loopback sockets: signing, headers, retries, timeouts, paging, secrets."""

from __future__ import annotations

import asyncio
import json
import random
import re
import ssl
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yarl
from aiohttp import web
from multidict import CIMultiDict

from worker import __version__
from worker.oms import signing
from worker.oms.auth import Credentials
from worker.oms.client import ClientConfig, OmsClient
from worker.oms.errors import (
    AuthFailed,
    InvalidRequest,
    MalformedResponse,
    OmsError,
    PermissionDenied,
    ServerError,
    TaskNotFound,
    TaskRunning,
    Throttled,
    TransportError,
)
from worker.oms.models import TaskStatus
from worker.oms.retry import RetryPolicy

from .conftest import (
    AKSK,
    AKSK_TEMPORARY,
    IAM_TOKEN,
    PID,
    SECRETS,
    SECURITY_TOKEN,
    SK,
    TOKEN,
    Harness,
    Serve,
)

TASKS_PATH = f"/v2/{PID}/tasks"


def task_json(task_id: int, status: int = 5) -> dict[str, Any]:
    """A task object with the keys OMS sends, and some the worker does not know."""
    return {
        "id": task_id,
        "name": f"task-{task_id}",
        "status": status,
        "start_time": 1_700_000_000_000 + task_id,
        "group_id": "",
        "group_type": "NORMAL_TASK",
        "task_type": "object",
        "progress": 1.0,
        "total_size": 1024,
        "src_node": {"bucket": "src", "cloud_type": "AWS", "region": "us-east-1"},
        "dst_node": {"bucket": "dst", "region": "cn-north-4", "save_prefix": ""},
    }


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    """What the server received in one request."""

    method: str
    path: str
    raw_query: str
    query: list[tuple[str, str]]
    headers: CIMultiDict[str]

    def verifies(self, secret_key: str = SK) -> bool:
        """Whether its Authorization header verifies against the shared signer."""
        parsed = signing.parse_authorization(self.headers.get("Authorization", ""))
        if parsed is None:
            return False
        return signing.verify(
            authorization=parsed,
            secret_key=secret_key,
            method=self.method,
            path=self.path,
            query=self.query,
            headers=self.headers,
            body=b"",
        )


class ScriptedOms:
    """A minimal OMS: scripted replies first, then a task store answering the four calls."""

    def __init__(self, replies: list[Reply] | None = None, tasks: int = 0) -> None:
        self.replies = deque(replies or [])
        self.tasks = [task_json(1000 + n) for n in range(tasks)]
        self.seen: list[Seen] = []
        self.count_override: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                method=request.method,
                path=request.path,
                raw_query=request.raw_path.partition("?")[2],
                query=list(request.query.items()),
                headers=CIMultiDict(request.headers),
            )
        )
        if self.replies:
            reply = self.replies.popleft()
            body = reply.body
            data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
            return web.Response(status=reply.status, body=data, headers=reply.headers)
        if request.method == "GET" and request.path == TASKS_PATH:
            limit, offset = int(request.query["limit"]), int(request.query["offset"])
            count = len(self.tasks) if self.count_override is None else self.count_override
            return web.json_response({"tasks": self.tasks[offset : offset + limit], "count": count})
        if request.method == "GET":
            return web.json_response(task_json(int(request.match_info["tail"].split("/")[-1])))
        return web.Response(status=200)


def oms_error(status: int, code: str, msg: str = "", **headers: str) -> Reply:
    """An OMS error answer with a request id."""
    return Reply(
        status=status,
        body={"error_code": code, "error_msg": msg or code},
        headers={"X-Request-Id": f"req-{code}", **headers},
    )


Call = Callable[[OmsClient], Awaitable[object]]
CALLS: dict[str, tuple[Call, str, str]] = {
    "list": (
        lambda c: c.list_tasks(limit=50, status=TaskStatus.FAILED, task_name="nightly copy/é+&"),
        "GET",
        TASKS_PATH,
    ),
    "show": (lambda c: c.show_task(191297407830872), "GET", f"{TASKS_PATH}/191297407830872"),
    "delete": (
        lambda c: c.delete_task(191297407830872),
        "DELETE",
        f"{TASKS_PATH}/191297407830872",
    ),
    "stop": (lambda c: c.stop_task(191297407830872), "POST", f"{TASKS_PATH}/191297407830872/stop"),
}


@pytest.mark.parametrize("credentials", [AKSK, AKSK_TEMPORARY], ids=["aksk", "temporary"])
@pytest.mark.parametrize("call", sorted(CALLS))
async def test_every_call_is_signed_so_the_server_can_verify_it(
    serve: Serve, harness: Harness, call: str, credentials: Credentials
) -> None:
    """Each call sends the SDK headers and an Authorization that verifies with the SK."""
    oms = ScriptedOms(tasks=1)
    invoke, method, path = CALLS[call]
    async with harness.client(await serve(oms.app()), credentials=credentials) as client:
        await invoke(client)
    [seen] = oms.seen
    assert (seen.method, seen.path) == (method, path)
    assert seen.verifies()
    assert not seen.verifies(secret_key=SK.replace("0001", "0002"))
    assert seen.headers["X-Project-Id"] == PID
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == f"oms-cleanup/{__version__}"
    assert seen.headers["X-Sdk-Date"] == "20261127T120000Z"
    signed = signing.parse_authorization(seen.headers["Authorization"])
    assert signed is not None
    assert {"host", "x-sdk-date", "x-project-id", "content-type"} <= set(signed.signed_headers)
    if credentials is AKSK_TEMPORARY:
        assert seen.headers["X-Security-Token"] == SECURITY_TOKEN
        assert "x-security-token" in signed.signed_headers
    else:
        assert "X-Security-Token" not in seen.headers


async def test_iam_token_is_sent_instead_of_a_signature(serve: Serve, harness: Harness) -> None:
    """With an IAM token the request carries X-Auth-Token and no AK/SK signature."""
    oms = ScriptedOms()
    async with harness.client(await serve(oms.app()), credentials=TOKEN) as client:
        await client.delete_task(5)
    [seen] = oms.seen
    assert seen.headers["X-Auth-Token"] == IAM_TOKEN
    assert "Authorization" not in seen.headers
    assert "X-Sdk-Date" not in seen.headers


async def test_list_query_is_sent_sorted_and_encoded_like_the_sdk(
    serve: Serve, harness: Harness
) -> None:
    """The query string on the wire is the canonical one: sorted keys, %20 for a space."""
    oms = ScriptedOms()
    async with harness.client(await serve(oms.app())) as client:
        await client.list_tasks(
            limit=50, offset=0, status=TaskStatus.FAILED, group_id="g/1", task_name="nightly copy/é"
        )
    [seen] = oms.seen
    assert seen.raw_query == (
        "group_id=g%2F1&limit=50&offset=0&status=4&task_name=nightly%20copy%2F%C3%A9"
    )
    assert seen.verifies()


async def test_endpoint_path_prefix_is_kept_and_signed(serve: Serve, harness: Harness) -> None:
    """An endpoint with a path prefix (a private gateway) prefixes every call and still verifies."""
    oms = ScriptedOms()
    base = await serve(oms.app())
    async with harness.client(base.with_path("/oms-gw")) as client:
        await client.stop_task(9)
    [seen] = oms.seen
    assert seen.path == f"/oms-gw/v2/{PID}/tasks/9/stop"
    assert seen.verifies()


async def test_each_retry_is_signed_afresh(serve: Serve, harness: Harness) -> None:
    """A retried send carries a new X-Sdk-Date and a signature that verifies for it."""
    oms = ScriptedOms([oms_error(503, "OMS.2004")])
    async with harness.client(await serve(oms.app())) as client:
        await client.show_task(7)
    assert [s.headers["X-Sdk-Date"] for s in oms.seen] == ["20261127T120000Z", "20261127T120001Z"]
    assert all(s.verifies() for s in oms.seen)


@dataclass
class RawServer:
    """A bare TCP server speaking just enough HTTP/1.1; `hang_up` connections get no answer."""

    hang_up: int
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        if len(self.requests) <= self.hang_up:
            writer.close()
            return
        body = json.dumps(task_json(7)).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    def header(self, index: int, name: str) -> str:
        for line in self.requests[index].decode().split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.lower() == name.lower():
                return value.strip()
        raise KeyError(name)


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[int], Awaitable[tuple[RawServer, yarl.URL]]]]:
    """Start RawServers on loopback; closed after the test."""
    started: list[RawServer] = []

    async def start(hang_up: int) -> tuple[RawServer, yarl.URL]:
        raw = RawServer(hang_up=hang_up)
        raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        started.append(raw)
        port = raw.server.sockets[0].getsockname()[1]
        return raw, yarl.URL(f"http://127.0.0.1:{port}")

    yield start
    for raw in started:
        assert raw.server is not None
        raw.server.close()
        await raw.server.wait_closed()


async def test_aiohttps_own_resend_is_signed_afresh(
    raw_server: Callable[[int], Awaitable[tuple[RawServer, yarl.URL]]], harness: Harness
) -> None:
    """When aiohttp re-sends a GET after a hang-up, the middleware signs the re-send anew."""
    raw, url = await raw_server(1)
    async with harness.client(url) as client:
        task = await client.show_task(7)
    assert task.id == 7
    assert len(raw.requests) == 2
    assert harness.sleep.delays == []  # aiohttp re-sent it, not our retry loop
    # Both sends left the process: both are counted, and both passed the gate.
    assert client.stats.show == len(raw.requests) == 2
    assert client.stats.retries == 0
    assert harness.gate.acquired == 2
    dates = [raw.header(i, "X-Sdk-Date") for i in range(2)]
    assert dates == ["20261127T120000Z", "20261127T120001Z"]
    signatures = {raw.header(i, "Authorization") for i in range(2)}
    assert len(signatures) == 2


async def test_connection_hang_ups_become_transport_error_after_retries(
    raw_server: Callable[[int], Awaitable[tuple[RawServer, yarl.URL]]], harness: Harness
) -> None:
    """A server that always hangs up yields TransportError once the retry budget is spent."""
    raw, url = await raw_server(10**6)
    async with harness.client(url, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(TransportError) as caught:
            await client.delete_task(11)
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    assert caught.value.info.method == "DELETE"
    assert caught.value.info.path == f"{TASKS_PATH}/11"
    # Three sends of ours, each re-sent once by aiohttp: every one is counted and gated.
    assert client.stats.delete == len(raw.requests) == harness.gate.acquired
    assert client.stats.retries == 2
    assert len(harness.sleep.delays) == 2
    assert 3 <= len(raw.requests) <= 6


async def test_connection_refused_is_a_transport_error(harness: Harness) -> None:
    """Nothing listening: TransportError chaining aiohttp's connector error."""
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with harness.client(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(TransportError) as caught:
            await client.show_task(1)
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)
    assert client.stats.show == 3


async def test_timeout_is_a_transport_error(serve: Serve, harness: Harness) -> None:
    """A server that never answers trips the total timeout: TransportError, retried, chained."""
    never = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/{tail:.*}", stall)
    policy = RetryPolicy(max_attempts=2)
    async with harness.client(await serve(app), retry=policy, total_timeout=0.1) as client:
        with pytest.raises(TransportError) as caught:
            await client.list_tasks()
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert "Timeout" in str(caught.value)
    assert client.stats.list == 2


async def test_server_errors_are_retried_with_the_policys_delays(
    serve: Serve, harness: Harness
) -> None:
    """5xx is retried up to max_attempts, sleeping the policy's jittered delays in between."""
    policy = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=1.5)
    oms = ScriptedOms([oms_error(503, "OMS.2004")] * 4)
    async with harness.client(await serve(oms.app()), retry=policy, seed=3) as client:
        with pytest.raises(ServerError) as caught:
            await client.delete_task(3)
    assert len(oms.seen) == 4
    rng = random.Random(3)
    assert harness.sleep.delays == [policy.delay(n, rng=rng, retry_after=None) for n in (1, 2, 3)]
    assert all(
        0 <= d <= bound for d, bound in zip(harness.sleep.delays, [0.5, 1.0, 1.5], strict=True)
    )
    assert caught.value.http_status == 503
    assert caught.value.error_code == "OMS.2004"
    assert caught.value.request_id == "req-OMS.2004"
    stats = client.stats
    assert (stats.delete, stats.retries, stats.total) == (4, 3, 4)
    assert harness.gate.acquired == 4
    assert harness.gate.successes == 0


async def test_transient_failures_then_success(serve: Serve, harness: Harness) -> None:
    """A 502, a 500 and then a 200 make one successful call with two retries."""
    oms = ScriptedOms([oms_error(502, "APIG.0202"), oms_error(500, "OMS.2004")], tasks=3)
    async with harness.client(await serve(oms.app())) as client:
        page = await client.list_tasks()
    assert [t.id for t in page.tasks] == [1000, 1001, 1002]
    assert client.stats.retries == 2
    assert harness.gate.acquired == 3
    assert harness.gate.successes == 1


async def test_retry_after_is_honoured_and_the_gate_told(serve: Serve, harness: Harness) -> None:
    """A 429 with Retry-After waits exactly that long; the gate hears of the 429 and the 2xx."""
    throttled = oms_error(429, "APIG.0308", "limit:60,time:1 minute", **{"Retry-After": "7"})
    oms = ScriptedOms([throttled])
    async with harness.client(await serve(oms.app())) as client:
        await client.delete_task(4)
    assert harness.sleep.delays == [7.0]
    [error] = harness.gate.throttled
    assert error.limit_per_second == 1.0
    assert error.retry_after == 7.0
    assert (harness.gate.acquired, harness.gate.successes) == (2, 1)
    assert (client.stats.throttled, client.stats.retries) == (1, 1)


async def test_retry_after_is_capped(serve: Serve, harness: Harness) -> None:
    """An hour-long Retry-After is cut to the policy's cap."""
    oms = ScriptedOms([oms_error(429, "APIG.0308", **{"Retry-After": "3600"})])
    policy = RetryPolicy(max_attempts=2, max_retry_after=2.5)
    async with harness.client(await serve(oms.app()), retry=policy) as client:
        await client.show_task(4)
    assert harness.sleep.delays == [2.5]


async def test_throttling_that_persists_surfaces_as_throttled(
    serve: Serve, harness: Harness
) -> None:
    """After max_attempts 429s the Throttled error reaches the caller; each 429 told the gate."""
    oms = ScriptedOms([oms_error(429, "APIG.0308")] * 3)
    async with harness.client(await serve(oms.app())) as client:
        with pytest.raises(Throttled):
            await client.delete_task(4)
    assert len(harness.gate.throttled) == 3
    assert len(harness.sleep.delays) == 2


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (oms_error(401, "APIG.0301"), AuthFailed),
        (oms_error(403, "OMS.0206"), PermissionDenied),
        (oms_error(400, "OMS.0064"), InvalidRequest),
        (oms_error(400, "OMS.0063"), TaskRunning),
        (oms_error(400, "OMS.1009"), TaskNotFound),
        (Reply(404, b"<html>not here</html>", {"Content-Type": "text/html"}), MalformedResponse),
        (Reply(200, b"<html>welcome</html>", {"Content-Type": "text/html"}), MalformedResponse),
    ],
)
async def test_permanent_errors_are_not_retried(
    serve: Serve, harness: Harness, reply: Reply, error_type: type[OmsError]
) -> None:
    """Auth, permission, bad-request, task-state and malformed answers are sent exactly once."""
    oms = ScriptedOms([reply, Reply()])
    async with harness.client(await serve(oms.app())) as client:
        with pytest.raises(error_type) as caught:
            await client.delete_task(8)
    assert type(caught.value) is error_type
    assert len(oms.seen) == 1
    assert harness.sleep.delays == []
    assert caught.value.http_status == reply.status
    assert caught.value.request_id == reply.headers.get("X-Request-Id")


@pytest.mark.parametrize(
    ("tasks", "page_size", "requests"),
    [(1234, 100, 13), (1200, 100, 12), (0, 100, 1), (7, 3, 3), (1001, 100, 11)],
)
async def test_iter_tasks_pages_through_everything(
    serve: Serve, harness: Harness, tasks: int, page_size: int, requests: int
) -> None:
    """Every task once, in order; a short page or offset >= count ends paging."""
    oms = ScriptedOms(tasks=tasks)
    async with harness.client(await serve(oms.app())) as client:
        ids = [task.id async for task in client.iter_tasks(page_size=page_size)]
    assert ids == [1000 + n for n in range(tasks)]
    assert len(oms.seen) == requests
    offsets = [int(dict(s.query)["offset"]) for s in oms.seen]
    assert offsets == [page_size * n for n in range(requests)]
    assert client.stats.list == requests


async def test_iter_tasks_stops_on_a_short_page_even_if_count_says_more(
    serve: Serve, harness: Harness
) -> None:
    """A count larger than what the server holds does not make paging spin."""
    oms = ScriptedOms(tasks=150)
    oms.count_override = 1_000_000
    async with harness.client(await serve(oms.app())) as client:
        ids = [task.id async for task in client.iter_tasks(status=TaskStatus.SUCCEEDED)]
    assert len(ids) == 150
    assert len(oms.seen) == 2
    assert all(dict(s.query)["status"] == "5" for s in oms.seen)


def _signatures(seen: list[Seen]) -> list[str]:
    found = []
    for s in seen:
        match = re.search(r"Signature=([0-9a-f]+)", s.headers.get("Authorization", ""))
        if match:
            found.append(match[1])
    return found


class EchoHeaders:
    """Answers with every request header echoed into the body, as a leaky gateway might."""

    def __init__(self, status: int, *, html: bool = False) -> None:
        self.status = status
        self.html = html
        self.seen: list[Seen] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.method, request.path, "", [], CIMultiDict(request.headers)))
        echoed = "; ".join(f"{k}={v}" for k, v in request.headers.items())
        if self.html:
            return web.Response(status=self.status, text=echoed, content_type="text/html")
        body = {"error_code": "APIG.0301", "error_msg": echoed, "request_id": "r-1"}
        return web.json_response(body, status=self.status)


@pytest.mark.parametrize("credentials", [AKSK_TEMPORARY, TOKEN], ids=["aksk", "token"])
@pytest.mark.parametrize(("status", "html"), [(401, False), (503, False), (200, True)])
async def test_secrets_never_appear_in_errors_reprs_or_logs(
    serve: Serve, harness: Harness, credentials: Credentials, status: int, html: bool
) -> None:
    """Even when a server echoes our headers back, no secret reaches errors, reprs or logs."""
    echo = EchoHeaders(status, html=html)
    client = harness.client(await serve(echo.app()), credentials=credentials)
    structlog.reset_defaults()  # another test's level filter must not hide the retry lines
    with structlog.testing.capture_logs() as logs:
        async with client:
            with pytest.raises(OmsError) as caught:
                await client.show_task(12)
    forbidden = [*SECRETS, *_signatures(echo.seen)]
    error = caught.value
    texts = [str(error), repr(error), repr(error.info), json.dumps(error.info.as_report())]
    texts += [repr(client), repr(client.config), repr(credentials), repr(logs)]
    for text in texts:
        for secret in forbidden:
            assert secret not in text
    assert error.request_id is not None or html
    if status == 503:
        assert len(logs) == 2  # one line per retry, checked above


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_is_verified_against_the_configured_ca_bundle(
    serve: Serve, harness: Harness, tmp_path: Path
) -> None:
    """https works with the server's CA as bundle; without it the certificate is refused."""
    cert, key = _self_signed(tmp_path)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    oms = ScriptedOms()
    url = await serve(oms.app(), ssl=server_ssl)
    assert url.scheme == "https"

    trusted = ClientConfig(endpoint=url, project_id=PID, ca_bundle=cert)
    async with OmsClient(trusted, credentials=AKSK, sleep=harness.sleep) as client:
        await client.delete_task(1)
    assert len(oms.seen) == 1

    default = ClientConfig(endpoint=url, project_id=PID, retry=RetryPolicy(max_attempts=2))
    async with OmsClient(default, credentials=AKSK, sleep=harness.sleep) as client:
        with pytest.raises(TransportError) as caught:
            await client.delete_task(1)
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert len(oms.seen) == 1


async def test_missing_ca_bundle_is_a_clear_error(tmp_path: Path) -> None:
    """A CA bundle path that does not exist fails when the client opens, naming the path."""
    config = ClientConfig(
        endpoint=yarl.URL("https://oms.cn-north-4.myhuaweicloud.com"),
        project_id=PID,
        ca_bundle=tmp_path / "missing.pem",
    )
    client = OmsClient(config, credentials=AKSK)
    with pytest.raises(ValueError, match=r"missing\.pem"):
        await client.__aenter__()
    assert "closed" in repr(client)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"project_id": ""}, "project_id"),
        ({"project_id": "../admin"}, "project_id"),
        ({"project_id": "a b"}, "project_id"),
        ({"endpoint": yarl.URL("/relative")}, "absolute"),
        ({"endpoint": yarl.URL("ftp://oms.example.com")}, "absolute"),
        ({"connect_timeout": 0.0}, "timeouts"),
        ({"total_timeout": -1.0}, "timeouts"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_client_config_refuses_bad_settings(changes: dict[str, Any], message: str) -> None:
    """Settings that would build a wrong path or a useless session are refused up front."""
    settings: dict[str, Any] = {"endpoint": yarl.URL("https://oms.example.com"), "project_id": PID}
    with pytest.raises(ValueError, match=message):
        ClientConfig(**{**settings, **changes})


def test_client_config_defaults() -> None:
    """Defaults: the project's User-Agent and the default retry policy."""
    config = ClientConfig(endpoint=yarl.URL("https://oms.example.com"), project_id=PID)
    assert config.user_agent == f"oms-cleanup/{__version__}"
    assert config.retry == RetryPolicy()
    assert config.ca_bundle is None


async def test_stats_count_sends_by_kind(serve: Serve, harness: Harness) -> None:
    """Stats count every send under its kind, plus retries and 429s, and report them."""
    oms = ScriptedOms([oms_error(429, "APIG.0308"), oms_error(503, "OMS.2004")], tasks=2)
    async with harness.client(await serve(oms.app())) as client:
        await client.delete_task(1)  # 429, 503, then 200
        await client.list_tasks()
        await client.show_task(1)
        await client.stop_task(1)
        await client.stop_task(2)
    assert client.stats.as_report() == {
        "list": 1,
        "show": 1,
        "delete": 3,
        "stop": 2,
        "retries": 2,
        "throttled": 1,
        "total": 7,
    }
    assert client.stats.total == len(oms.seen)


async def test_repr_names_the_target_not_the_credentials(serve: Serve, harness: Harness) -> None:
    """The client's repr shows endpoint, project, auth mode and state, nothing secret."""
    url = await serve(ScriptedOms().app())
    client = harness.client(url, credentials=AKSK_TEMPORARY)
    assert repr(client) == f"OmsClient(endpoint='{url}', project_id='{PID}', auth=ak/sk, closed)"
    async with client:
        assert repr(client).endswith("open)")
    assert "AKTEST" not in repr(client)
