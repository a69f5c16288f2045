"""OmsClient against the OMS simulator over real loopback sockets.

Paging a large population, every typed error with its code and request id, the retry budget
counted on the simulator's side, Retry-After, timeouts, and secrets kept out of every error,
repr and log line. Sleeps between retries go to a recording sleep, so nothing waits for real
except the one timeout test (a 0.1 s client timeout).
"""

from __future__ import annotations

import asyncio
import json
import re
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import structlog
from conftest import FakeClock as SimClock
from conftest import SimulatorFactory
from pydantic import SecretStr

from worker.oms.auth import AkSk, Credentials, IamToken
from worker.oms.client import OmsClient
from worker.oms.errors import (
    AuthFailed,
    InvalidRequest,
    MalformedResponse,
    OmsError,
    PermissionDenied,
    ServerError,
    TaskNotFound,
    TaskNotMigrating,
    TaskRunning,
    Throttled,
    TransportError,
)
from worker.oms.models import TaskStatus
from worker.oms.retry import RetryPolicy
from worker.simulator.config import SimAccessKey, SimCredentials
from worker.simulator.faults import FaultConfig, Malformation, retry_after_header
from worker.simulator.population import PopulationConfig
from worker.simulator.server import SimulatorHandle

from .conftest import AK, AKSK, IAM_TOKEN, PID, SECURITY_TOKEN, SK, TOKEN, Harness

REQUEST_ID = re.compile(r"[0-9a-f]{32}")
TEMP_AK = "AKTEMPCLIENTSIM00001"
TEMP_SK = "SKtempCLIENTsimSKtempCLIENTsimSKtemp0001"
TEMPORARY = AkSk(
    access_key=TEMP_AK, secret_key=SecretStr(TEMP_SK), security_token=SecretStr(SECURITY_TOKEN)
)
WRONG_SK = "SKwrongSKwrongSKwrongSKwrongSKwrong00001"
WRONG_TOKEN = "MIIwrongIAMtokenWRONGiamTOKENwrong000001"
ALL_SECRETS = (SK, TEMP_SK, SECURITY_TOKEN, IAM_TOKEN, WRONG_SK, WRONG_TOKEN)
SIGNATURE = re.compile(r"Signature=[0-9a-f]{64}")
UNKNOWN_TASK = 999_999_999_999_999
FOREIGN_PROJECT = "f" * 32
SIM_CREDENTIALS = SimCredentials(
    access_keys=(
        SimAccessKey(access_key=AK, secret_key=SK),
        SimAccessKey(access_key=TEMP_AK, secret_key=TEMP_SK, security_token=SECURITY_TOKEN),
    ),
    iam_token=IAM_TOKEN,
)
# Every status the error cases need is present in a small population.
POPULATION = PopulationConfig(
    status_weights=((5, 0.4), (4, 0.15), (3, 0.1), (2, 0.15), (1, 0.1), (6, 0.05), (7, 0.05)),
    unicode_name_share=0.2,
)

Start = Callable[..., Awaitable[SimulatorHandle]]


@pytest.fixture
def start(make_simulator: SimulatorFactory, fake_clock: SimClock) -> Start:
    """Start a simulator on the fake clock that knows the client tests' credentials."""

    async def start(**overrides: Any) -> SimulatorHandle:
        settings: dict[str, Any] = {
            "now": fake_clock.now,
            "credentials": SIM_CREDENTIALS,
            "population": POPULATION,
            "tasks_per_project": 60,
        }
        return await make_simulator(**{**settings, **overrides})

    return start


def open_client(
    harness: Harness,
    handle: SimulatorHandle,
    *,
    credentials: Credentials = AKSK,
    retry: RetryPolicy | None = None,
    project_id: str = PID,
    total_timeout: float = 5.0,
) -> OmsClient:
    """An OmsClient on the harness's recording sleep, stepping clock and counting gate."""
    return harness.client(
        handle.url,
        credentials=credentials,
        retry=retry,
        project_id=project_id,
        total_timeout=total_timeout,
    )


def _task_ids(handle: SimulatorHandle, status: int | None = None) -> list[int]:
    tasks = handle.state.projects[PID].tasks.values()
    return [task["id"] for task in tasks if status is None or task["status"] == status]


def _frozen_monotonic() -> float:
    # The rate window never slides: once the budget is spent, every request is throttled.
    return 0.0


# --- paging -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "page_size", "status", "task_name"),
    [
        (1234, 100, None, None),
        (1200, 100, None, None),
        (1234, 37, None, None),
        (1234, 100, TaskStatus.SUCCEEDED, None),
        (1234, 100, None, "copy"),
        (1234, 11, TaskStatus.FAILED, "e"),
    ],
)
async def test_iter_tasks_sees_every_task_once_and_agrees_with_the_simulator(
    start: Start,
    harness: Harness,
    tasks: int,
    page_size: int,
    status: TaskStatus | None,
    task_name: str | None,
) -> None:
    """Over 1,200+ tasks, iter_tasks yields each matching task once, in as few pages as needed."""
    handle = await start(tasks_per_project=tasks)
    truth = {
        task["id"]
        for task in handle.state.projects[PID].tasks.values()
        if (status is None or task["status"] == status)
        and (task_name is None or task_name.casefold() in task["name"].casefold())
    }
    assert len(truth) > page_size
    async with open_client(harness, handle) as client:
        ids = [
            task.id
            async for task in client.iter_tasks(
                page_size=page_size, status=status, task_name=task_name
            )
        ]
        first = await client.list_tasks(limit=1, status=status, task_name=task_name)
    assert len(ids) == len(set(ids))
    assert set(ids) == truth
    assert first.count == len(truth)
    # A short page or offset >= count ends paging: no trailing empty page is fetched.
    pages = -(-len(truth) // page_size)
    assert client.stats.list == pages + 1
    assert handle.state.requests["list"] == client.stats.list
    assert harness.gate.acquired == harness.gate.successes == client.stats.list


async def test_list_tasks_pages_partition_the_population(start: Start, harness: Harness) -> None:
    """Pages of list_tasks by offset cover all 1,050 tasks, each page reporting the full count."""
    handle = await start(tasks_per_project=1050)
    seen: list[int] = []
    async with open_client(harness, handle) as client:
        for offset in range(0, 1100, 100):
            page = await client.list_tasks(limit=100, offset=offset)
            assert page.count == 1050
            assert len(page.tasks) == min(100, 1050 - offset)
            seen += [task.id for task in page.tasks]
        beyond = await client.list_tasks(limit=100, offset=5000)
    assert sorted(seen) == sorted(_task_ids(handle))
    assert (beyond.tasks, beyond.count) == ([], 1050)


# --- permanent errors: typed, with code and request id, sent once ------------------------


@dataclass(frozen=True, slots=True)
class PermanentCase:
    """A call the simulator refuses for good, and what the client must raise."""

    call: Callable[[OmsClient, SimulatorHandle], Awaitable[object]]
    error: type[OmsError]
    status: int
    code: str
    credentials: Credentials = AKSK
    project_id: str = PID
    simulator: tuple[tuple[str, Any], ...] = ()


def _delete_with(status: int) -> Callable[[OmsClient, SimulatorHandle], Awaitable[object]]:
    return lambda client, handle: client.delete_task(_task_ids(handle, status)[0])


def _stop_with(status: int) -> Callable[[OmsClient, SimulatorHandle], Awaitable[object]]:
    return lambda client, handle: client.stop_task(_task_ids(handle, status)[0])


def _list(**params: Any) -> Callable[[OmsClient, SimulatorHandle], Awaitable[object]]:
    return lambda client, handle: client.list_tasks(**params)


PERMANENT: dict[str, PermanentCase] = {
    "delete-waiting": PermanentCase(_delete_with(1), TaskRunning, 400, "OMS.0063"),
    "delete-migrating": PermanentCase(_delete_with(2), TaskRunning, 400, "OMS.0063"),
    "show-missing": PermanentCase(
        lambda c, h: c.show_task(UNKNOWN_TASK), TaskNotFound, 400, "OMS.1009"
    ),
    "delete-missing": PermanentCase(
        lambda c, h: c.delete_task(UNKNOWN_TASK), TaskNotFound, 400, "OMS.1009"
    ),
    "stop-missing": PermanentCase(
        lambda c, h: c.stop_task(UNKNOWN_TASK), TaskNotFound, 400, "OMS.1009"
    ),
    "stop-finished": PermanentCase(_stop_with(5), TaskNotMigrating, 400, "OMS.0066"),
    "list-not-started-filter": PermanentCase(
        _list(status=TaskStatus.NOT_STARTED), InvalidRequest, 400, "OMS.0064"
    ),
    "list-offset-past-cap": PermanentCase(
        _list(offset=10_001),
        InvalidRequest,
        400,
        "OMS.0064",
        simulator=(("max_offset", 10_000),),
    ),
    "show-id-too-long": PermanentCase(
        lambda c, h: c.show_task(10**19), InvalidRequest, 400, "OMS.0064"
    ),
    "wrong-sk": PermanentCase(
        _list(),
        AuthFailed,
        401,
        "APIG.0301",
        credentials=AkSk(access_key=AK, secret_key=SecretStr(WRONG_SK)),
    ),
    "wrong-iam-token": PermanentCase(
        _list(), AuthFailed, 401, "APIG.0301", credentials=IamToken(SecretStr(WRONG_TOKEN))
    ),
    "expired-iam-token": PermanentCase(
        _list(),
        AuthFailed,
        401,
        "APIG.0301",
        credentials=TOKEN,
        simulator=(("faults", FaultConfig(token_expires_after=0)),),
    ),
    "temporary-key-wrong-token": PermanentCase(
        _delete_with(5),
        AuthFailed,
        401,
        "APIG.0301",
        credentials=AkSk(TEMP_AK, SecretStr(TEMP_SK), SecretStr("SECURITYTOKEN-WRONG")),
    ),
    "foreign-project": PermanentCase(
        _list(), PermissionDenied, 403, "OMS.0206", project_id=FOREIGN_PROJECT
    ),
}


@pytest.mark.parametrize("case", sorted(PERMANENT))
async def test_permanent_errors_are_typed_and_sent_once(
    start: Start, harness: Harness, case: str
) -> None:
    """Each refusal is its own error type with code, status and request id; never retried."""
    spec = PERMANENT[case]
    handle = await start(**dict(spec.simulator))
    before = handle.state.remaining()
    client = open_client(harness, handle, credentials=spec.credentials, project_id=spec.project_id)
    async with client:
        with pytest.raises(OmsError) as caught:
            await spec.call(client, handle)
    error = caught.value
    assert type(error) is spec.error
    assert (error.http_status, error.error_code) == (spec.status, spec.code)
    assert error.request_id is not None
    assert REQUEST_ID.fullmatch(error.request_id)
    # Exactly one send reached the simulator, whichever gateway step refused it.
    reached = sum(handle.state.requests.values()) + sum(handle.state.rejected.values())
    assert reached == 1
    assert client.stats.total == 1
    assert client.stats.retries == 0
    assert harness.sleep.delays == []
    assert handle.state.deletions == []
    assert handle.state.stops == []
    assert handle.state.remaining() == before


async def test_the_request_ids_are_the_simulators_and_differ_per_answer(
    start: Start, harness: Harness
) -> None:
    """Two refusals carry two different request ids, each the X-Request-Id the simulator sent."""
    handle = await start()
    async with open_client(harness, handle) as client:
        errors = []
        for _ in range(2):
            with pytest.raises(TaskNotFound) as caught:
                await client.show_task(UNKNOWN_TASK)
            errors.append(caught.value)
    ids = {error.request_id for error in errors}
    assert len(ids) == 2
    assert all(REQUEST_ID.fullmatch(str(i)) for i in ids)


# --- transient errors: retried within the budget ------------------------------------------


async def test_throttling_honours_retry_after_until_the_budget_is_spent(
    start: Start, harness: Harness
) -> None:
    """A persistent 429 is sent max_attempts times, sleeping the simulator's Retry-After."""
    handle = await start(faults=FaultConfig(rate_limit=1), monotonic=_frozen_monotonic)
    async with open_client(harness, handle, retry=RetryPolicy(max_attempts=3)) as client:
        await client.list_tasks(limit=1)  # spends the window's only slot
        with pytest.raises(Throttled) as caught:
            await client.show_task(_task_ids(handle)[0])
    error = caught.value
    assert (error.http_status, error.error_code) == (429, "APIG.0308")
    assert error.request_id is not None
    assert REQUEST_ID.fullmatch(error.request_id)
    # With the window's clock frozen, a slot frees one whole window (1 s) later.
    assert error.retry_after == float(retry_after_header(1.0))
    assert error.limit_per_second == 1.0
    assert harness.sleep.delays == [error.retry_after] * 2
    assert handle.state.rejected["throttled"] == 3
    assert handle.state.requests["show"] == 0
    assert (client.stats.show, client.stats.retries, client.stats.throttled) == (3, 2, 3)
    assert len(harness.gate.throttled) == 3
    assert harness.gate.acquired == 4


async def test_throttling_without_retry_after_backs_off_by_the_policy(
    start: Start, harness: Harness
) -> None:
    """With no Retry-After the client sleeps its own jittered backoff, within each ceiling."""
    handle = await start(
        faults=FaultConfig(rate_limit=1, retry_after=False), monotonic=_frozen_monotonic
    )
    policy = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=1.5)
    async with open_client(harness, handle, retry=policy) as client:
        await client.list_tasks(limit=1)
        with pytest.raises(Throttled) as caught:
            await client.list_tasks(limit=1)
    assert caught.value.retry_after is None
    assert len(harness.sleep.delays) == 3
    for delay, ceiling in zip(harness.sleep.delays, [0.5, 1.0, 1.5], strict=True):
        assert 0 <= delay <= ceiling
    assert handle.state.rejected["throttled"] == 4


@pytest.mark.parametrize("max_attempts", [1, 2, 5])
async def test_server_errors_are_retried_exactly_up_to_max_attempts(
    start: Start, harness: Harness, max_attempts: int
) -> None:
    """A 5xx on every send: max_attempts sends reach the simulator, then ServerError."""
    handle = await start(faults=FaultConfig(error_rate=1.0))
    policy = RetryPolicy(max_attempts=max_attempts)
    async with open_client(harness, handle, retry=policy) as client:
        with pytest.raises(ServerError) as caught:
            await client.delete_task(_task_ids(handle, 5)[0])
    error = caught.value
    assert error.http_status in (500, 502, 503)
    assert error.error_code in ("OMS.2004", "APIG.0202")
    assert error.request_id is not None
    assert REQUEST_ID.fullmatch(error.request_id)
    assert handle.state.rejected["5xx"] == max_attempts
    assert client.stats.delete == max_attempts
    assert len(harness.sleep.delays) == max_attempts - 1
    assert handle.state.deletions == []


async def test_intermittent_server_errors_are_absorbed_by_retries(
    start: Start, harness: Harness
) -> None:
    """With half the sends failing, every call succeeds; each failure cost one retry."""
    handle = await start(faults=FaultConfig(error_rate=0.5))
    ids = _task_ids(handle)[:12]
    async with open_client(harness, handle, retry=RetryPolicy(max_attempts=20)) as client:
        shown = [(await client.show_task(task_id)).id for task_id in ids]
    assert shown == ids
    failures = handle.state.rejected["5xx"]
    assert failures > 0
    assert client.stats.retries == failures == len(harness.sleep.delays)
    assert client.stats.show == handle.state.requests["show"] + failures


async def test_dropped_connections_become_transport_error_after_the_budget(
    start: Start, harness: Harness
) -> None:
    """A simulator that hangs up on every send: TransportError chaining aiohttp's error."""
    handle = await start(faults=FaultConfig(drop_rate=1.0))
    async with open_client(harness, handle, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(TransportError) as caught:
            await client.show_task(_task_ids(handle)[0])
    error = caught.value
    assert isinstance(error.__cause__, aiohttp.ClientError)
    assert error.http_status is None
    assert len(harness.sleep.delays) == 2
    # aiohttp itself re-sends once on a hang-up, below our budget; those sends count too.
    assert 3 <= handle.state.rejected["dropped"] <= 6
    assert client.stats.show == handle.state.rejected["dropped"]


async def test_a_delete_whose_answer_was_lost_is_retried_into_not_found(
    start: Start, harness: Harness
) -> None:
    """The first delete takes effect but its answer is dropped; the retry meets OMS.1009."""
    handle = await start(faults=FaultConfig(drop_rate=1.0, drop_after_processing=True))
    task_id = _task_ids(handle, 5)[0]
    async with open_client(harness, handle, retry=RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(TransportError):
            await client.delete_task(task_id)
    assert [record.task_id for record in handle.state.deletions] == [task_id]
    assert task_id not in handle.state.projects[PID].tasks


async def test_malformed_list_answers_are_malformed_response_and_show_stays_intact(
    start: Start, harness: Harness
) -> None:
    """Broken 200 list bodies raise MalformedResponse, HTML 502s ServerError; a wrong-typed task
    is set aside on a page that still reads."""
    handle = await start(faults=FaultConfig(malformed_rate=1.0))
    raised: list[OmsError] = []
    set_aside = 0
    async with open_client(harness, handle, retry=RetryPolicy(max_attempts=1)) as client:
        for _ in range(16):
            try:
                page = await client.list_tasks(limit=5)
            except (MalformedResponse, ServerError) as error:
                raised.append(error)
            else:
                assert len(page.malformed) == 1  # the task whose id or status became a string
                assert len(page.tasks) == 4
                set_aside += 1
        task = await client.show_task(_task_ids(handle)[0])
    malformed = [e for e in raised if isinstance(e, MalformedResponse)]
    assert malformed, "a 200 with a broken body should have come up in 16 draws"
    assert set_aside, "a page with a wrong-typed task should have come up in 16 draws"
    for broken in malformed:
        assert broken.http_status == 200
        assert broken.request_id is not None
        assert REQUEST_ID.fullmatch(broken.request_id)
    for other in raised:
        if isinstance(other, ServerError):
            assert (other.http_status, other.error_code) == (502, None)
    assert handle.state.rejected["malformed"] == 16
    assert client.stats.list == 16
    assert task.id == _task_ids(handle)[0]


async def test_a_broken_200_list_answer_is_retried_until_sound(
    start: Start, harness: Harness
) -> None:
    """Over real sockets: a GET answered 200 with HTML or cut-short JSON is read again."""
    handle = await start(faults=FaultConfig(malformed_rate=0.5))
    async with open_client(harness, handle, retry=RetryPolicy(max_attempts=30)) as client:
        for _ in range(10):
            await client.list_tasks(limit=5)
        retries = client.stats.retries
        sent = client.stats.list
    assert retries > 0, "no broken answer came up in 10 calls at malformed_rate=0.5"
    assert sent == 10 + retries == handle.state.requests["list"]


async def test_a_slow_answer_times_out_as_transport_error(start: Start, harness: Harness) -> None:
    """A simulator that stalls past the client's total timeout: TransportError from TimeoutError."""
    release = asyncio.Event()

    async def stall(seconds: float) -> None:
        await release.wait()

    handle = await start(faults=FaultConfig(slow_rate=1.0, slow_seconds=60), sleep=stall)
    policy = RetryPolicy(max_attempts=2)
    try:
        async with open_client(harness, handle, retry=policy, total_timeout=0.1) as client:
            with pytest.raises(TransportError) as caught:
                await client.list_tasks()
    finally:
        release.set()  # let the stalled handlers finish so the simulator stops promptly
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert client.stats.list == 2
    assert len(harness.sleep.delays) == 1


# --- secrets ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretsCase:
    """A scenario that produces an error (and, when retried, log lines)."""

    simulator: tuple[tuple[str, Any], ...]
    call: Callable[[OmsClient, SimulatorHandle], Awaitable[object]]


SECRETS_CASES: dict[str, SecretsCase] = {
    "task-running": SecretsCase((), _delete_with(2)),
    "server-errors": SecretsCase((("faults", FaultConfig(error_rate=1.0)),), _list()),
    "throttled": SecretsCase(
        (("faults", FaultConfig(rate_limit=1)), ("monotonic", _frozen_monotonic)),
        _list(),
    ),
    "dropped": SecretsCase((("faults", FaultConfig(drop_rate=1.0)),), _stop_with(2)),
    "malformed": SecretsCase(
        (
            (
                "faults",
                FaultConfig(
                    malformed_rate=1.0,
                    malformations=(Malformation.TRUNCATED_JSON, Malformation.HTML_200),
                ),
            ),
        ),
        _list(),
    ),
}


@pytest.mark.parametrize(
    "credentials",
    [
        TEMPORARY,
        TOKEN,
        AkSk(access_key=AK, secret_key=SecretStr(WRONG_SK)),
        AkSk(TEMP_AK, SecretStr(TEMP_SK), SecretStr(WRONG_TOKEN)),
        IamToken(SecretStr(WRONG_TOKEN)),
    ],
    ids=["temporary-aksk", "iam-token", "wrong-sk", "wrong-security-token", "wrong-iam-token"],
)
@pytest.mark.parametrize("case", sorted(SECRETS_CASES))
async def test_secrets_never_reach_errors_reprs_or_logs(
    start: Start, harness: Harness, credentials: Credentials, case: str
) -> None:
    """No SK, security token, IAM token or signature shows in errors, tracebacks, reprs or logs."""
    spec = SECRETS_CASES[case]
    handle = await start(**dict(spec.simulator))
    client = open_client(harness, handle, credentials=credentials)
    structlog.reset_defaults()  # another test's level filter must not hide debug lines
    with structlog.testing.capture_logs() as logs:
        async with client:
            if case == "throttled":
                # Spend the single slot, whatever the credentials (a 401 does not use it).
                async with open_client(Harness(), handle) as warm:
                    await warm.list_tasks(limit=1)
            with pytest.raises(OmsError) as caught:
                await spec.call(client, handle)
    error = caught.value
    texts = [
        str(error),
        repr(error),
        repr(error.info),
        json.dumps(error.info.as_report()),
        "".join(traceback.format_exception(error)),
        repr(client),
        repr(client.config),
        repr(client.stats),
        repr(credentials),
        repr(logs),
        json.dumps(logs, default=repr),
    ]
    for text in texts:
        for secret in ALL_SECRETS:
            assert secret not in text
        assert SIGNATURE.search(text) is None
    assert error.request_id is not None or isinstance(error, TransportError)
    if error.retryable:
        assert [entry["event"] for entry in logs] == ["oms_request_retry"] * 2
