"""Fixtures for the OMS client tests: the aioresponses compat shim, tiny servers, fake clocks."""

from __future__ import annotations

import copy
import random
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aioresponses
import aioresponses.core
import pytest
import yarl
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from worker.oms.auth import AkSk, Credentials, IamToken
from worker.oms.client import ClientConfig, OmsClient
from worker.oms.errors import Throttled
from worker.oms.retry import RetryPolicy

AK = "AKTESTAKTESTAKTEST01"
SK = "SKtestSKtestSKtestSKtestSKtestSKtest0001"
SECURITY_TOKEN = "SECURITYTOKEN-EXAMPLE-0123456789"
IAM_TOKEN = "MIIIAMTOKEN-EXAMPLE-abcdefghijklmnopqrstuvwxyz"
PID = "0123456789abcdef0123456789abcdef"
SECRETS = (SK, SECURITY_TOKEN, IAM_TOKEN)

AKSK = AkSk(access_key=AK, secret_key=SecretStr(SK))
AKSK_TEMPORARY = AkSk(
    access_key=AK, secret_key=SecretStr(SK), security_token=SecretStr(SECURITY_TOKEN)
)
TOKEN = IamToken(token=SecretStr(IAM_TOKEN))

START = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


class _CompatClientResponse(ClientResponse):
    """aiohttp 3.14 made `stream_writer` a required argument that aioresponses 0.7.9 omits.

    aiohttp reads only `stream_writer.output_size` when the request is already sent
    (pnuckowski/aioresponses#289), so a stand-in with that attribute is enough.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentStreamWriter())
        super().__init__(*args, **kwargs)


class _SentStreamWriter:
    output_size = 0


class _RecordShallowly:
    """Stands in for the `copy` module inside aioresponses, which deep-copies every request's
    keyword arguments to record the call. Ours carry per-send middlewares bound to the live
    client, so a deep copy clones its session and event loop; the half-built loops then warn
    when collected. A shallow copy records the same call."""

    @staticmethod
    def deepcopy(value: Any, memo: Any = None) -> Any:
        return copy.copy(value)


@pytest.fixture
def mock_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses.aioresponses]:
    """aioresponses, made to work with aiohttp 3.14 (response mapping tests only)."""
    monkeypatch.setattr(aioresponses.core, "ClientResponse", _CompatClientResponse)
    monkeypatch.setattr(aioresponses.core, "copy", _RecordShallowly)
    with aioresponses.aioresponses() as mocked:
        yield mocked


@dataclass
class FakeClock:
    """A clock that moves one second each time it is read, so every signature gets a new date."""

    moment: datetime = START
    step: timedelta = timedelta(seconds=1)

    def __call__(self) -> datetime:
        current = self.moment
        self.moment += self.step
        return current


@dataclass
class RecordingSleep:
    """Stands in for asyncio.sleep: remembers the delays asked for, waits for none."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@dataclass
class RecordingGate:
    """A RequestGate that lets everything through and counts what it was told."""

    acquired: int = 0
    successes: int = 0
    throttled: list[Throttled] = field(default_factory=list)

    async def acquire(self) -> None:
        self.acquired += 1

    def on_throttled(self, error: Throttled) -> None:
        self.throttled.append(error)

    def on_success(self) -> None:
        self.successes += 1


@dataclass
class Harness:
    """The injected collaborators of one client under test."""

    sleep: RecordingSleep = field(default_factory=RecordingSleep)
    clock: FakeClock = field(default_factory=FakeClock)
    gate: RecordingGate = field(default_factory=RecordingGate)

    def client(
        self,
        endpoint: yarl.URL | str,
        *,
        credentials: Credentials = AKSK,
        retry: RetryPolicy | None = None,
        project_id: str = PID,
        total_timeout: float = 5.0,
        seed: int = 7,
    ) -> OmsClient:
        """An OmsClient wired to this harness (not yet opened)."""
        config = ClientConfig(
            endpoint=yarl.URL(endpoint),
            project_id=project_id,
            connect_timeout=2.0,
            total_timeout=total_timeout,
            max_connections=4,
            retry=retry if retry is not None else RetryPolicy(max_attempts=3),
        )
        return OmsClient(
            config,
            credentials=credentials,
            gate=self.gate,
            sleep=self.sleep,
            now=self.clock,
            rng=random.Random(seed),
        )


@pytest.fixture
def harness() -> Harness:
    """Fresh recording sleep, clock and gate for one test."""
    return Harness()


class Serve(Protocol):
    """Starts an app on a free loopback port and returns its base URL."""

    def __call__(
        self, app: web.Application, *, ssl: ssl_module.SSLContext | None = None
    ) -> Awaitable[yarl.URL]: ...


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp.web apps on free loopback ports; all are closed after the test."""
    servers: list[TestServer] = []

    async def start(app: web.Application, *, ssl: ssl_module.SSLContext | None = None) -> yarl.URL:
        server = TestServer(app)
        await server.start_server(ssl=ssl)
        servers.append(server)
        return server.make_url("")

    yield start
    for server in servers:
        await server.close()
