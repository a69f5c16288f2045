"""Injected faults: each knob's effect over HTTP, their reproducibility, and the rate window."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import aiohttp
import pytest
from conftest import SimulatorFactory
from pydantic import SecretStr
from sim_client import sim_client

from worker.oms.auth import AkSk
from worker.oms.errors import parse_limit
from worker.simulator.config import DEFAULT_ACCESS_KEY, DEFAULT_PROJECT_ID
from worker.simulator.faults import (
    NO_FAULTS,
    FaultConfig,
    FaultInjector,
    Malformation,
    SlidingWindow,
    malformed_list_answer,
    retry_after_header,
    throttle_message,
)
from worker.simulator.population import PopulationConfig

FINISHED_ONLY = PopulationConfig(status_weights=((5, 1.0),))


class FakeMonotonic:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


class RecordingSleep:
    """Records requested sleeps and yields once instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


# --- pure parts -----------------------------------------------------------------------


def test_sliding_window_admits_the_limit_then_frees_slots_as_they_age() -> None:
    """At most `limit` admissions in any window; a slot frees one window after its use."""
    clock = FakeMonotonic()
    window = SlidingWindow(3, clock=clock)
    assert [window.admit() for _ in range(3)] == [None, None, None]
    clock.value += 0.4
    assert window.admit() == pytest.approx(0.6)
    clock.value += 0.6
    assert [window.admit() for _ in range(3)] == [None, None, None]
    assert window.admit() == pytest.approx(1.0)
    clock.value += 0.999
    assert window.admit() == pytest.approx(0.001)


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (0.99, "1"), (1.0, "1"), (1.2, "2")])
def test_retry_after_is_whole_seconds_never_zero(wait: float, header: str) -> None:
    """Retry-After rounds up to whole seconds and is at least 1."""
    assert retry_after_header(wait) == header


def test_injector_without_faults_plans_nothing() -> None:
    """The default FaultConfig injects nothing at all."""
    injector = FaultInjector(FaultConfig(), seed=1)
    assert all(injector.plan(is_list=True) is NO_FAULTS for _ in range(50))


def test_injector_is_reproducible_from_its_seed() -> None:
    """Same seed, same plans; another seed, other plans."""
    config = FaultConfig(error_rate=0.3, drop_rate=0.2, slow_rate=0.2, malformed_rate=0.3)

    def plans(seed: int) -> list[Any]:
        injector = FaultInjector(config, seed=seed)
        return [injector.plan(is_list=i % 2 == 0) for i in range(200)]

    assert plans(5) == plans(5)
    assert plans(5) != plans(6)


@pytest.mark.parametrize(
    ("knob", "field"),
    [
        ("error_rate", "server_error"),
        ("drop_rate", "drop"),
        ("slow_rate", "slow"),
        ("malformed_rate", "malformation"),
    ],
)
def test_injector_rates_are_roughly_honoured(knob: str, field: str) -> None:
    """A rate of 0.25 hits about a quarter of requests; only that fault appears."""
    overrides: dict[str, Any] = {knob: 0.25}
    config = dataclasses.replace(FaultConfig(), **overrides)
    injector = FaultInjector(config, seed=3)
    plans = [injector.plan(is_list=True) for _ in range(2000)]
    hits = sum(1 for plan in plans if getattr(plan, field))
    assert 400 < hits < 600
    others = {"server_error", "drop", "slow", "malformation"} - {field}
    assert not any(getattr(plan, other) for plan in plans for other in others)


def test_malformation_only_hits_list_calls() -> None:
    """Show, delete and stop are never given a malformed body."""
    injector = FaultInjector(FaultConfig(malformed_rate=1.0), seed=3)
    assert all(injector.plan(is_list=False).malformation is None for _ in range(50))


def test_latency_with_jitter_stays_in_its_band() -> None:
    """Delay = latency +/- jitter, never negative."""
    injector = FaultInjector(FaultConfig(latency_ms=20, jitter_ms=30), seed=3)
    delays = [injector.plan(is_list=False).delay_seconds for _ in range(500)]
    assert all(0.0 <= d <= 0.050 for d in delays)
    assert min(delays) == 0.0
    assert max(delays) > 0.040


PAGE = {"tasks": [{"id": 123456789012345, "status": 5, "name": "x"}], "count": 7}


@pytest.mark.parametrize("malformation", list(Malformation))
def test_each_malformation_breaks_the_page(malformation: Malformation) -> None:
    """HTML 502 or 200, truncated JSON, or a value of the wrong JSON type; input untouched."""
    original = json.loads(json.dumps(PAGE))
    status, content_type, body = malformed_list_answer(malformation, PAGE, random.Random(1))
    assert original == PAGE
    if malformation is Malformation.HTML_PAGE:
        assert (status, content_type) == (502, "text/html")
        assert body.startswith(b"<html>")
        return
    if malformation is Malformation.HTML_200:
        assert (status, content_type) == (200, "text/html")
        assert b"<html>" in body
        return
    assert (status, content_type) == (200, "application/json")
    if malformation is Malformation.TRUNCATED_JSON:
        with pytest.raises(ValueError, match=r"\w"):
            json.loads(body)
        return
    task = json.loads(body)["tasks"][0]
    assert isinstance(task["id"], str) or isinstance(task["status"], str)


def test_wrong_types_on_an_empty_page_break_the_count() -> None:
    """With no task to spoil, the count becomes a string."""
    _, _, body = malformed_list_answer(
        Malformation.WRONG_TYPES, {"tasks": [], "count": 0}, random.Random(1)
    )
    assert json.loads(body)["count"] == "0"


# --- over HTTP ------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [True, False])
async def test_rate_limit_answers_429_with_the_applied_limit(
    make_simulator: SimulatorFactory, retry_after: bool
) -> None:
    """Past the limit: 429 APIG.0308 saying limit:3,time:1 second; Retry-After when configured."""
    clock = FakeMonotonic()
    handle = await make_simulator(
        faults=FaultConfig(rate_limit=3, retry_after=retry_after), monotonic=clock
    )
    async with sim_client(handle) as client:
        admitted = [(await client.list()).status for _ in range(3)]
        throttled = await client.list()
        clock.value += 1.0
        recovered = await client.list()
        state = await client.sim_state()
    assert admitted == [200, 200, 200]
    assert (throttled.status, throttled.error_code) == (429, "APIG.0308")
    message = throttled.json()["error_msg"]
    assert "The throttling threshold has been reached" in message
    assert "limit:3,time:1 second" in message
    assert throttled.json()["request_id"] == throttled.headers["X-Request-Id"]
    assert throttled.headers.get("Retry-After") == ("1" if retry_after else None)
    assert recovered.status == 200
    assert state["rejected"]["throttled"] == 1
    assert state["requests"]["list"] == 4


async def test_rejected_credentials_do_not_use_the_rate_budget(
    make_simulator: SimulatorFactory,
) -> None:
    """Only authenticated requests count against the window."""
    from pydantic import SecretStr

    from worker.oms.auth import IamToken

    handle = await make_simulator(faults=FaultConfig(rate_limit=2), monotonic=FakeMonotonic())
    async with sim_client(handle) as client:
        for _ in range(5):
            bad = await client.request(
                "GET", client.tasks_path(), credentials=IamToken(SecretStr("bad"))
            )
            assert bad.status == 401
        assert [(await client.list()).status for _ in range(3)] == [200, 200, 429]


async def test_server_errors_change_nothing(make_simulator: SimulatorFactory) -> None:
    """error_rate=1: every call is a 5xx with an error body, and deletes do not happen."""
    handle = await make_simulator(faults=FaultConfig(error_rate=1.0), population=FINISHED_ONLY)
    task_id = next(iter(handle.state.projects[DEFAULT_PROJECT_ID].tasks))
    async with sim_client(handle) as client:
        answers = [await client.delete(task_id) for _ in range(30)]
        state = await client.sim_state()
    assert {a.status for a in answers} == {500, 502, 503}
    codes = {a.status: a.error_code for a in answers}
    assert codes == {500: "OMS.2004", 502: "APIG.0202", 503: "OMS.2004"}
    assert state["deletions"] == []
    assert state["rejected"]["5xx"] == 30
    assert state["requests"]["delete"] == 0


@pytest.mark.parametrize("after", [False, True], ids=["before-processing", "after-processing"])
async def test_dropped_connections_answer_nothing(
    make_simulator: SimulatorFactory, after: bool
) -> None:
    """drop_rate=1 closes the connection; with drop_after_processing the stop still happened."""
    handle = await make_simulator(
        faults=FaultConfig(drop_rate=1.0, drop_after_processing=after),
        population=PopulationConfig(status_weights=((2, 1.0),)),
    )
    task_id = next(iter(handle.state.projects[DEFAULT_PROJECT_ID].tasks))
    async with sim_client(handle) as client:
        # POST: aiohttp never re-sends it, so exactly one request reaches the simulator.
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.stop(task_id)
        state = await client.sim_state()
    assert state["rejected"]["dropped"] == 1
    assert [s["task_id"] for s in state["stops"]] == ([task_id] if after else [])


async def test_a_dropped_delete_may_still_have_deleted(make_simulator: SimulatorFactory) -> None:
    """After-processing drops: the client sees a disconnect although the task is gone."""
    handle = await make_simulator(
        faults=FaultConfig(drop_rate=1.0, drop_after_processing=True), population=FINISHED_ONLY
    )
    task_id = next(iter(handle.state.projects[DEFAULT_PROJECT_ID].tasks))
    async with sim_client(handle) as client:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.delete(task_id)
    assert [d.task_id for d in handle.state.deletions] == [task_id]
    # aiohttp silently re-sends an idempotent DELETE once; that re-send met OMS.1009 and
    # was dropped too.
    assert handle.state.rejected["dropped"] >= 1
    assert len(handle.state.deletions) == 1


async def test_slow_and_latency_sleep_on_the_injected_sleep(
    make_simulator: SimulatorFactory,
) -> None:
    """slow_rate=1 sleeps slow_seconds after the latency delay, every request."""
    sleep = RecordingSleep()
    handle = await make_simulator(
        faults=FaultConfig(latency_ms=40, slow_rate=1.0, slow_seconds=7.5), sleep=sleep
    )
    async with sim_client(handle) as client:
        statuses = [(await client.list()).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert sleep.calls == [pytest.approx(0.04), 7.5] * 3


async def test_a_slow_answer_really_waits(make_simulator: SimulatorFactory) -> None:
    """With the real sleep, a slow answer outlasts a short client read timeout."""
    handle = await make_simulator(faults=FaultConfig(slow_rate=1.0, slow_seconds=0.3))
    timeout = aiohttp.ClientTimeout(sock_read=0.05)
    async with aiohttp.ClientSession(timeout=timeout) as session, sim_client(handle) as client:
        client.session = session
        with pytest.raises(TimeoutError):
            await client.list()


async def test_malformed_list_answers_and_intact_show(make_simulator: SimulatorFactory) -> None:
    """malformed_rate=1 breaks every list answer in one of three ways; show stays intact."""
    handle = await make_simulator(faults=FaultConfig(malformed_rate=1.0))
    kinds = set()
    async with sim_client(handle) as client:
        for _ in range(30):
            answer = await client.list(limit=3)
            if answer.status == 502:
                assert answer.headers["Content-Type"].startswith("text/html")
                kinds.add("html")
                continue
            assert answer.status == 200
            try:
                body = answer.json()
            except ValueError:
                kinds.add("truncated")
                continue
            spoiled = [t for t in body["tasks"] if isinstance(t["id"], str)] + [
                t for t in body["tasks"] if isinstance(t["status"], str)
            ]
            assert len(spoiled) == 1
            kinds.add("types")
        task_id = next(iter(handle.state.projects[DEFAULT_PROJECT_ID].tasks))
        shown = await client.show(task_id)
        state = await client.sim_state()
    assert kinds == {"html", "truncated", "types"}
    assert shown.json()["id"] == task_id
    assert state["rejected"]["malformed"] == 30


async def test_admin_route_is_never_faulted(make_simulator: SimulatorFactory) -> None:
    """/_sim/state answers even when every API call errors, drops and is throttled."""
    handle = await make_simulator(
        faults=FaultConfig(error_rate=1.0, drop_rate=1.0, rate_limit=1, malformed_rate=1.0)
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(f"{handle.url}/_sim/state") as response:
                assert response.status == 200
                assert "remaining" in await response.json()


async def test_the_same_seed_meets_the_same_faults(make_simulator: SimulatorFactory) -> None:
    """Two simulators with one seed answer the same request sequence identically."""
    faults = FaultConfig(error_rate=0.4, malformed_rate=0.3)
    sequences = []
    for _ in range(2):
        handle = await make_simulator(faults=faults, seed=99)
        async with sim_client(handle) as client:
            sequences.append([(await client.list(limit=2)).body[:40] for _ in range(20)])
    assert sequences[0] == sequences[1]
    assert len(set(sequences[0])) > 2


@pytest.mark.parametrize(("stated", "limit"), [(True, 50.0), (False, None)])
def test_throttle_message_states_the_limit_or_not(stated: bool, limit: float | None) -> None:
    """The 429 text carries the applied limit only when the knob says so, as clients parse it."""
    message = throttle_message(50, stated=stated)
    assert message.startswith("The throttling threshold has been reached")
    assert parse_limit(message) == limit


async def test_revoked_credentials_are_refused_after_n_requests(
    make_simulator: SimulatorFactory,
) -> None:
    """credentials_revoked_after=2: two accepted requests, then 401 APIG.0301 for every one."""
    sim = await make_simulator(faults=FaultConfig(credentials_revoked_after=2))
    async with sim_client(sim) as client:
        answers = [await client.list(limit=1) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 401, 401]
    assert {a.error_code for a in answers[2:]} == {"APIG.0301"}
    state = sim.state.snapshot()
    assert state["rejected"]["auth"] == 2
    assert state["auth_refused_by_project"] == {DEFAULT_PROJECT_ID: 2}


async def test_a_key_failing_repeatedly_is_locked(make_simulator: SimulatorFactory) -> None:
    """More than key_lockout_after failures in a row lock the AK: even a good signature fails."""
    sim = await make_simulator(faults=FaultConfig(key_lockout_after=5))
    wrong = AkSk(access_key=DEFAULT_ACCESS_KEY, secret_key=SecretStr("SK-wrong-0000000001"))
    async with sim_client(sim) as client:

        async def wrongly() -> int:
            answer = await client.request("GET", client.tasks_path(), credentials=wrong)
            return answer.status

        assert [await wrongly() for _ in range(5)] == [401] * 5
        assert (await client.list(limit=1)).status == 200  # five failures: not yet locked
        assert [await wrongly() for _ in range(6)] == [401] * 6
        locked = await client.list(limit=1)
    assert locked.status == 401
    assert b"locked" in locked.body
    assert sim.state.snapshot()["locked_keys"] == [DEFAULT_ACCESS_KEY]


async def test_a_stated_retry_after_replaces_the_windows_wait(
    make_simulator: SimulatorFactory,
) -> None:
    """retry_after_seconds: every 429 says that, however soon the window frees."""
    clock = FakeMonotonic()
    handle = await make_simulator(
        faults=FaultConfig(rate_limit=1, retry_after_seconds=100_000), monotonic=clock
    )
    async with sim_client(handle) as client:
        assert (await client.list()).status == 200
        throttled = await client.list()
    assert throttled.status == 429
    assert throttled.headers["Retry-After"] == "100000"


async def test_another_deleter_removes_passed_tasks_after_each_page(
    make_simulator: SimulatorFactory,
) -> None:
    """After each list page it deletes tasks at offsets already read, up to its budget."""
    handle = await make_simulator(
        tasks_per_project=50,
        faults=FaultConfig(
            other_deleter_per_page=3, other_deleter_states=frozenset({5}), other_deleter_budget=5
        ),
    )
    async with sim_client(handle) as client:
        first = (await client.list(limit=10, offset=0)).json()
        second = (await client.list(limit=10, offset=10)).json()
        third = (await client.list(limit=10, offset=20)).json()
        state = await client.sim_state()
    gone = [record["task_id"] for record in state["other_deletions"]]
    assert len(gone) == 5  # 3, then the 2 left of the budget, then none
    first_ids = [task["id"] for task in first["tasks"]]
    succeeded_first = [task["id"] for task in first["tasks"] if task["status"] == 5]
    assert gone[:3] == succeeded_first[:3]
    assert set(gone) <= set(first_ids) | {task["id"] for task in second["tasks"]}
    assert (first["count"], second["count"], third["count"]) == (50, 47, 45)
    assert state["deletions"] == []  # not a client's deletion
    assert state["remaining"][DEFAULT_PROJECT_ID]["total"] == 45
