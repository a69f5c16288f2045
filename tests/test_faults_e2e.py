"""Whole runs against a misbehaving simulator: every fault knob, through real HTTP.

Each test states what must hold when the API misbehaves: the run completes (within its own
--deadline, never a wall-clock assertion), the outcomes are the right ones, and the report
agrees with the simulator's record. The expected selection is computed from the simulator's
raw task objects, not by the policy module.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SimulatorFactory
from expectations import eligible, validated
from pydantic import SecretStr

from worker import target as target_module
from worker.oms.auth import AkSk, Credentials, IamToken
from worker.oms.retry import RetryPolicy
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_IAM_TOKEN,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
    SimulatorConfig,
)
from worker.simulator.faults import NO_FAULTS, FaultConfig, FaultInjector, FaultPlan, Malformation
from worker.simulator.server import SimulatorHandle

SECOND_PROJECT = "fedcba9876543210fedcba9876543210"
OLDER_THAN = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Finished:
    """A run's exit code, its schema-checked report and the simulator's record after it."""

    exit_code: int
    report: dict[str, Any]
    truth: dict[str, Any]

    def outcomes(self, *names: str) -> set[int]:
        """Ids of the report's tasks with one of these outcomes."""
        return {t["id"] for t in self.report["tasks"] if t["outcome"] in names}

    @property
    def deleted_by_simulator(self) -> set[int]:
        """Ids of every delete the simulator applied."""
        return {d["task_id"] for d in self.truth["deletions"]}

    @property
    def requests_seen(self) -> int:
        """Every API request that reached the simulator, refused ones included."""
        counts = [*self.truth["requests"].values(), *self.truth["rejected"].values()]
        return sum(int(count) for count in counts)


def expected_selection(sim: SimulatorHandle, *, now: datetime) -> set[int]:
    """Finished tasks of the default project that started at least OLDER_THAN before `now`."""
    return eligible(sim.state.projects[DEFAULT_PROJECT_ID].tasks, now=now, older_than=OLDER_THAN)


async def run_against(
    sim: SimulatorHandle,
    tmp_path: Path,
    *,
    now: datetime,
    credentials: Credentials = DEFAULT_CLIENT_CREDENTIALS,
    **flags: Any,
) -> Finished:
    """One executing run with a 60 s deadline (unless overridden); report and record after."""
    report = tmp_path / "report.json"
    values: dict[str, Any] = {
        "endpoint": sim.url,
        "project_id": DEFAULT_PROJECT_ID,
        "report": str(report),
        "older_than": "1d",
        "rate": "1000",
        "concurrency": "16",
        "deadline": "60s",
        "execute": True,
        **flags,
    }
    code = await run_async(
        settings=load_settings(values, environ={}),
        credentials=credentials,
        now=lambda: now,
        handle_signals=False,
    )
    return Finished(exit_code=code, report=validated(report), truth=sim.state.snapshot())


@pytest.fixture
def now() -> datetime:
    """The moment ages are judged at."""
    return datetime.now(UTC)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's usual retry budget with millisecond backoff (its delays are tested apart)."""
    monkeypatch.setattr(
        target_module,
        "RetryPolicy",
        functools.partial(RetryPolicy, base_delay=0.005, max_delay=0.02),
    )


def assert_completed(run: Finished, expected: set[int]) -> None:
    """Exit 0 within the deadline; every selected task gone and the report says so."""
    assert run.exit_code == 0, run.report["summary"]
    assert run.report["summary"]["deadline_reached"] is False
    assert run.report["summary"]["failed"] == 0
    assert {t["id"] for t in run.report["tasks"]} == expected
    assert run.outcomes("deleted", "already_gone") == expected
    assert run.deleted_by_simulator == expected


# ------------------------------------------------------------------------------------------
# Throttling, server errors, dropped connections, slow answers


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
@pytest.mark.parametrize(
    ("state_limit", "least_429s"),
    # A gateway that states its limit is obeyed after its first 429; one that does not is
    # found by probing, which is a storm.
    [(True, 1), (False, 5)],
    ids=["limit-stated", "limit-unstated"],
)
async def test_429_storm_costs_time_not_tasks(
    make_simulator: SimulatorFactory,
    tmp_path: Path,
    now: datetime,
    retry_after: bool,
    state_limit: bool,
    least_429s: int,
) -> None:
    """A gateway admitting 10/s against 16 in flight at --rate 1000: all deleted, none failed."""
    faults = FaultConfig(rate_limit=10, retry_after=retry_after, state_limit=state_limit)
    sim = await make_simulator(tasks_per_project=30, faults=faults)
    expected = expected_selection(sim, now=now)

    run = await run_against(sim, tmp_path, now=now)

    assert run.truth["rejected"]["throttled"] >= least_429s
    assert_completed(run, expected)
    assert run.outcomes("deleted") == expected
    # Every send is accounted for: the report's count is what reached the gateway.
    assert run.report["summary"]["requests_sent"]["total"] == run.requests_seen


@pytest.mark.parametrize("after_processing", [False, True], ids=["before", "after-processing"])
async def test_server_errors_and_dropped_connections(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime, after_processing: bool
) -> None:
    """5 % 5xx and 2 % dropped connections: retried; a delete whose answer was lost is done."""
    sim = await make_simulator(
        tasks_per_project=150,
        faults=FaultConfig(error_rate=0.05, drop_rate=0.02, drop_after_processing=after_processing),
    )
    expected = expected_selection(sim, now=now)

    run = await run_against(sim, tmp_path, now=now)

    assert run.truth["rejected"]["5xx"] > 0
    assert run.truth["rejected"]["dropped"] > 0
    assert_completed(run, expected)
    gone = run.outcomes("already_gone")
    if not after_processing:
        # A drop before processing changed nothing: the retry deleted the task itself.
        assert gone == set()
    for record in run.report["tasks"]:
        if record["id"] in gone:
            # OMS.1009 on a retry: the lost first answer had deleted it.
            assert record["attempts"] == 1
            assert record["last_error"]["error_code"] == "OMS.1009"


async def test_answers_slower_than_the_request_timeout(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """10 % of answers take 1 s against a 0.2 s timeout: timed out, retried, all done."""
    slow_seconds = 1.0
    sim = await make_simulator(
        tasks_per_project=60, faults=FaultConfig(slow_rate=0.1, slow_seconds=slow_seconds)
    )
    expected = expected_selection(sim, now=now)

    run = await run_against(sim, tmp_path, now=now, request_timeout="0.2")
    # A timed-out request still runs to its end on the server: let the late ones land.
    await asyncio.sleep(slow_seconds + 0.2)
    truth = sim.state.snapshot()

    assert run.report["summary"]["requests_sent"]["total"] > run.truth["requests"]["list"] + len(
        expected
    ), "no request timed out"
    assert_completed(Finished(run.exit_code, run.report, truth), expected)


# ------------------------------------------------------------------------------------------
# Malformed listings: nothing is deleted on the strength of a broken answer


@pytest.fixture
def malformed_from_second_page(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Malformation:
    """The first list answer is sound; every later one is broken the parametrized way."""
    malformation: Malformation = request.param
    lists = 0

    def plan(self: FaultInjector, *, is_list: bool) -> FaultPlan:
        nonlocal lists
        if not is_list:
            return NO_FAULTS
        lists += 1
        return NO_FAULTS if lists == 1 else FaultPlan(malformation=malformation)

    monkeypatch.setattr(FaultInjector, "plan", plan)
    return malformation


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.parametrize(
    ("malformed_from_second_page", "list_requests", "http_status"),
    # Each is retried up to the budget of 5 sends: a 5xx, and a GET's broken 200 alike.
    [
        (Malformation.HTML_PAGE, 1 + 5, 502),
        (Malformation.HTML_200, 1 + 5, 200),
        (Malformation.TRUNCATED_JSON, 1 + 5, 200),
    ],
    indirect=["malformed_from_second_page"],
    ids=["html-502", "html-200", "truncated-json"],
)
async def test_malformed_listing_deletes_nothing(
    make_simulator: SimulatorFactory,
    tmp_path: Path,
    now: datetime,
    malformed_from_second_page: Malformation,
    list_requests: int,
    http_status: int,
) -> None:
    """A page broken on every retry after a sound one: exit 4, zero deletes, the answer named."""
    sim = await make_simulator(tasks_per_project=250)
    assert expected_selection(sim, now=now), "population too small for this test"

    run = await run_against(sim, tmp_path, now=now)

    assert run.exit_code == 4
    assert run.truth["requests"] == {"list": list_requests, "show": 0, "delete": 0, "stop": 0}
    assert run.truth["deletions"] == []
    assert run.truth["remaining"][DEFAULT_PROJECT_ID]["total"] == 250
    assert run.report["tasks"] == []
    assert run.report["summary"]["selected"] == 0
    (target,) = run.report["summary"]["targets"]
    assert target["error"]["http_status"] == http_status
    assert target["error"]["request_id"]


@pytest.mark.parametrize("malformed_from_second_page", [Malformation.WRONG_TYPES], indirect=True)
async def test_a_wrong_typed_task_is_kept_and_the_rest_deleted(
    make_simulator: SimulatorFactory,
    tmp_path: Path,
    now: datetime,
    malformed_from_second_page: Malformation,
) -> None:
    """One task per page with a string id or status: each kept as malformed, the rest deleted."""
    sim = await make_simulator(tasks_per_project=250)
    expected = expected_selection(sim, now=now)

    run = await run_against(sim, tmp_path, now=now)

    assert run.exit_code == 0, run.report["summary"]
    (target,) = run.report["summary"]["targets"]
    # Pages 2 and 3 of the one listing each carried one.
    assert target["not_selected"]["malformed"] == len(target["malformed"]) == 2
    assert target["listed"] == 250
    assert run.deleted_by_simulator <= expected
    assert len(expected - run.deleted_by_simulator) <= 2
    assert run.truth["remaining"][DEFAULT_PROJECT_ID]["total"] == 250 - len(
        run.deleted_by_simulator
    )


# ------------------------------------------------------------------------------------------
# Authentication: clock skew, expiring tokens, wrong keys on several targets


@pytest.mark.parametrize(
    ("skew", "exit_code"),
    [
        (timedelta(minutes=20), 4),
        (-timedelta(minutes=20), 4),
        (timedelta(minutes=5), 0),  # within the gateway's tolerance: the control case
    ],
    ids=["ahead-20m", "behind-20m", "ahead-5m"],
)
async def test_clock_skew_is_one_refused_request(
    make_simulator: SimulatorFactory,
    tmp_path: Path,
    now: datetime,
    skew: timedelta,
    exit_code: int,
) -> None:
    """An X-Sdk-Date outside the gateway's tolerance: 401, exit 4, after exactly one request."""
    sim = await make_simulator(tasks_per_project=30, now=lambda: datetime.now(UTC) + skew)

    run = await run_against(sim, tmp_path, now=now)

    assert run.exit_code == exit_code
    if exit_code == 4:
        assert run.requests_seen == run.truth["rejected"]["auth"] == 1
        assert run.truth["deletions"] == []
        (target,) = run.report["summary"]["targets"]
        assert target["error"]["error_code"] == "APIG.0301"
        assert "X-Sdk-Date" in target["error"]["error_msg"]
    else:
        assert run.truth["rejected"]["auth"] == 0
        assert run.deleted_by_simulator


async def test_token_expiring_while_listing_deletes_nothing(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """The IAM token expires on the third page: exit 4, nothing deleted, a report written."""
    sim = await make_simulator(tasks_per_project=350, faults=FaultConfig(token_expires_after=2))

    run = await run_against(
        sim, tmp_path, now=now, credentials=IamToken(token=SecretStr(DEFAULT_IAM_TOKEN))
    )

    assert run.exit_code == 4
    assert run.truth["requests"]["list"] == 2
    assert run.truth["rejected"]["auth"] == 1
    assert run.truth["deletions"] == []
    assert run.report["tasks"] == []
    (target,) = run.report["summary"]["targets"]
    assert target["error"]["error_code"] == "APIG.0301"


async def test_token_expiring_mid_deletion_with_requests_in_flight(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """Expiry with 8 deletes in flight: those may be refused too, nothing new starts after."""
    concurrency = 8
    sim = await make_simulator(tasks_per_project=80, faults=FaultConfig(token_expires_after=12))
    expected = expected_selection(sim, now=now)
    assert len(expected) > 20, "population too small for this test"

    run = await run_against(
        sim,
        tmp_path,
        now=now,
        credentials=IamToken(token=SecretStr(DEFAULT_IAM_TOKEN)),
        concurrency=str(concurrency),
    )

    assert run.exit_code == 4
    refused = run.truth["rejected"]["auth"]
    # Only requests already sent when the first 401 arrived can meet one.
    assert 1 <= refused <= concurrency
    assert run.truth["requests"]["delete"] == 11
    assert run.outcomes("deleted") == run.deleted_by_simulator
    failed = [t for t in run.report["tasks"] if t["outcome"] == "failed"]
    assert len(failed) == refused
    assert {t["last_error"]["error_code"] for t in failed} == {"APIG.0301"}
    assert run.outcomes("not_attempted") == expected - run.outcomes("deleted", "failed")
    assert run.report["summary"]["not_attempted"] == len(expected) - 11 - refused


@pytest.mark.parametrize(
    "credentials",
    [
        AkSk(access_key=DEFAULT_ACCESS_KEY, secret_key=SecretStr("SK-wrong-wrong-wrong-0001")),
        AkSk(access_key="AKNOSUCHKEY0001", secret_key=SecretStr(DEFAULT_SECRET_KEY)),
        IamToken(token=SecretStr("MIIexpired-or-wrong-token")),
    ],
    ids=["wrong-sk", "unknown-ak", "wrong-token"],
)
async def test_auth_failure_sends_at_most_one_request_per_target(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime, credentials: Credentials
) -> None:
    """Two targets, refused credentials: each gateway sees at most one request (no lock-out)."""
    first = await make_simulator(SimulatorConfig(tasks_per_project=250))
    second = await make_simulator(
        SimulatorConfig(project_ids=(SECOND_PROJECT,), tasks_per_project=250)
    )
    config = tmp_path / "targets.toml"
    config.write_text(
        f'[[targets]]\nendpoint = "{first.url}"\nproject_id = "{DEFAULT_PROJECT_ID}"\n'
        f'[[targets]]\nendpoint = "{second.url}"\nproject_id = "{SECOND_PROJECT}"\n',
        encoding="utf-8",
    )
    report = tmp_path / "report.json"
    settings = load_settings(
        {"older_than": "1d", "execute": True, "report": str(report), "rate": "1000"},
        config_file=config,
        environ={},
    )

    code = await run_async(settings=settings, credentials=credentials, handle_signals=False)
    # A request already on its way when the run ended would land now.
    await asyncio.sleep(0.2)

    assert code == 4
    for sim in (first, second):
        truth = sim.state.snapshot()
        assert sum(truth["requests"].values()) == 0
        assert sum(truth["rejected"].values()) == truth["rejected"]["auth"] <= 1
    written = validated(report)
    assert written["exit_code"] == 4
    assert written["tasks"] == []
    errors = [t["error"] for t in written["summary"]["targets"] if t["error"] is not None]
    assert errors
    assert {error["error_code"] for error in errors} == {"APIG.0301"}
