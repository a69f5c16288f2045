"""Whole runs against a simulator whose listing misbehaves: another deleter, odd task objects,
broken 200 answers, a huge Retry-After, aiohttp's own re-sends. Real HTTP throughout.

Each test holds the run to the simulator's record: what is left on the server afterwards is
worked out from its raw task objects (tests/expectations.py), not by the policy module.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import SimulatorFactory
from expectations import eligible, validated

from worker import target as target_module
from worker.oms import errors as errors_module
from worker.oms.retry import RetryPolicy
from worker.ratelimit import AdaptiveRateLimiter
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import DEFAULT_CLIENT_CREDENTIALS, DEFAULT_PROJECT_ID
from worker.simulator.faults import FaultConfig, Malformation
from worker.simulator.population import PopulationConfig
from worker.simulator.server import SimulatorHandle

OLDER_THAN = timedelta(days=1)
# 2015-01-01 and one day ahead, in epoch milliseconds, worked out apart from policy.py.
EARLIEST_MS = 1_420_070_400_000
DAY_MS = 86_400_000


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


async def run_against(
    sim: SimulatorHandle, tmp_path: Path, *, now: datetime, **flags: Any
) -> tuple[int, dict[str, Any]]:
    """One run (executing unless told otherwise); its exit code and schema-checked report."""
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
        credentials=DEFAULT_CLIENT_CREDENTIALS,
        now=lambda: now,
        handle_signals=False,
    )
    return code, validated(report)


def left_eligible(sim: SimulatorHandle, *, now: datetime) -> set[int]:
    """Finished tasks old enough that are still on the server."""
    return eligible(sim.state.projects[DEFAULT_PROJECT_ID].tasks, now=now, older_than=OLDER_THAN)


def requests_received(sim: SimulatorHandle) -> int:
    """Every API request that reached the simulator, refused ones included."""
    return sum(sim.state.requests.values()) + sum(sim.state.rejected.values())


# ------------------------------------------------------------------------------------------
# No silent miss: another actor deletes tasks while the run pages by offset


async def test_another_deleter_while_listing_leaves_no_eligible_task_behind(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """35 tasks deleted elsewhere while paging shift later pages: listed again, none missed."""
    faults = FaultConfig(other_deleter_per_page=5, other_deleter_budget=35)
    sim = await make_simulator(tasks_per_project=1000, faults=faults)
    assert left_eligible(sim, now=now)

    with structlog.testing.capture_logs() as events:
        code, report = await run_against(sim, tmp_path, now=now)

    assert len(sim.state.other_deletions) == 35, "the other deleter did not act"
    assert code == 0, report["summary"]
    assert left_eligible(sim, now=now) == set()
    # The first read disagreed with its counts; the second agreed, so the listing stands.
    disagreed = [e for e in events if e["event"] == "listing_disagrees_with_counts"]
    assert [e["attempt"] for e in disagreed] == [1]
    (target,) = report["summary"]["targets"]
    assert "unproven_listing" not in target


@pytest.mark.parametrize("execute", [True, False], ids=["execute", "dry-run"])
async def test_a_listing_never_shown_complete_is_worked_then_exits_1(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime, execute: bool
) -> None:
    """A deleter on every read: what was judged is deleted, the may-be-unseen told, exit 1."""
    population = PopulationConfig(status_weights=((3, 0.5), (5, 0.5)))
    # It cleans up paused tasks (which this run keeps), so it never runs out while we list.
    faults = FaultConfig(other_deleter_per_page=3, other_deleter_states=frozenset({3}))
    sim = await make_simulator(tasks_per_project=400, population=population, faults=faults)

    with structlog.testing.capture_logs() as events:
        code, report = await run_against(sim, tmp_path, now=now, execute=execute)

    assert code == 1, report["summary"]
    (target,) = report["summary"]["targets"]
    block = target["unproven_listing"]
    assert block["complete"] is False
    assert block["may_be_unseen"] > 0
    assert block["reads"] == 3
    assert "offset" not in block["note"]
    assert "offset_cap" not in target
    warned = [e for e in events if e["event"] == "listing_incomplete"]
    assert warned
    assert warned[-1]["reason"] == "listing not shown complete"
    assert warned[-1]["unseen"] == block["may_be_unseen"]
    outcomes = {t["outcome"] for t in report["tasks"]}
    if execute:
        # Everything it judged eligible is gone; the run just cannot vouch for the rest.
        assert outcomes <= {"deleted", "already_gone"}
        assert {t["id"] for t in report["tasks"]} >= {d.task_id for d in sim.state.deletions}
    else:
        assert outcomes == {"would_delete"}
        assert sim.state.deletions == []


# ------------------------------------------------------------------------------------------
# One odd task never stops a run


def _odd(task: Mapping[str, Any], *, now: datetime) -> bool:
    """A task whose name is no string, or whose start_time is no plausible epoch ms."""
    start = task.get("start_time") or 0
    now_ms = int(now.timestamp() * 1000)
    implausible = start > 0 and not EARLIEST_MS <= start <= now_ms + DAY_MS
    return not isinstance(task["name"], str) or implausible


async def test_odd_task_objects_are_kept_and_the_rest_deleted(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """Year 10000, INT64_MAX, seconds for ms, a null or numeric name: each kept, the run goes on."""
    sim = await make_simulator(tasks_per_project=400, population=PopulationConfig(odd_share=0.15))
    tasks = sim.state.projects[DEFAULT_PROJECT_ID].tasks
    odd = {task_id for task_id, task in tasks.items() if _odd(task, now=now)}
    bad_names = {task_id for task_id in odd if not isinstance(tasks[task_id]["name"], str)}
    seconds = {
        task_id for task_id in odd if 0 < (tasks[task_id].get("start_time") or 0) < EARLIEST_MS
    }
    assert bad_names
    assert seconds
    assert len(odd) > len(bad_names) + len(seconds)  # the far-future ones too
    expected = eligible(tasks, now=now, older_than=OLDER_THAN, keep=lambda t: _odd(t, now=now))

    code, report = await run_against(sim, tmp_path, now=now)

    assert code == 0, report["summary"]
    deleted = {d.task_id for d in sim.state.deletions}
    assert deleted == expected
    assert odd <= set(sim.state.projects[DEFAULT_PROJECT_ID].tasks)  # every odd one is still there
    (target,) = report["summary"]["targets"]
    assert target["not_selected"]["malformed"] == len(bad_names)
    assert {entry["id"] for entry in target["malformed"]} == bad_names
    assert all("name" in entry["problem"] for entry in target["malformed"])
    assert target["listed"] == 400


# ------------------------------------------------------------------------------------------
# Transient glitches are retried, not fatal


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.parametrize(
    "malformation", [Malformation.HTML_200, Malformation.TRUNCATED_JSON], ids=lambda m: m.value
)
async def test_broken_200_list_pages_are_retried(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime, malformation: Malformation
) -> None:
    """A fifth of the list answers are 200s with HTML or cut-short JSON: retried, all deleted."""
    faults = FaultConfig(malformed_rate=0.2, malformations=(malformation,))
    sim = await make_simulator(tasks_per_project=600, faults=faults)
    expected = left_eligible(sim, now=now)

    code, report = await run_against(sim, tmp_path, now=now)

    assert sim.state.rejected["malformed"] > 0
    assert code == 0, report["summary"]
    assert {d.task_id for d in sim.state.deletions} == expected
    assert (
        report["summary"]["requests_sent"]["by_kind"]["list"]
        == (
            sim.state.requests["list"]  # every list answer, the broken ones included
        )
    )


async def test_a_huge_retry_after_costs_the_capped_pause_only(
    make_simulator: SimulatorFactory,
    tmp_path: Path,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retry-After: 100000 on every 429: client and limiter wait the cap, then go on."""
    # The cap is a minute; a test cannot wait that long, so it is lowered for both at once.
    monkeypatch.setattr(errors_module, "MAX_RETRY_AFTER", 0.2, raising=False)
    faults = FaultConfig(rate_limit=20, retry_after_seconds=100_000)
    sim = await make_simulator(tasks_per_project=250, faults=faults)
    expected = left_eligible(sim, now=now)

    code, report = await run_against(sim, tmp_path, now=now, deadline="40s")

    assert sim.state.rejected["throttled"] > 0
    assert code == 0, report["summary"]
    assert report["summary"]["deadline_reached"] is False
    assert {d.task_id for d in sim.state.deletions} == expected


# ------------------------------------------------------------------------------------------
# requests_sent counts every send, and every send passes the rate limiter


async def test_every_send_is_counted_and_gated_including_aiohttps_resends(
    make_simulator: SimulatorFactory,
    tmp_path: Path,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under 3 % dropped connections, requests_sent and the limiter's admissions equal what the
    simulator received."""
    admitted = 0

    class CountingLimiter(AdaptiveRateLimiter):
        async def acquire(self) -> None:
            nonlocal admitted
            await super().acquire()
            admitted += 1

    monkeypatch.setattr(target_module, "AdaptiveRateLimiter", CountingLimiter)
    monkeypatch.setattr(
        target_module,
        "RetryPolicy",
        functools.partial(RetryPolicy, base_delay=0.005, max_delay=0.02, max_attempts=8),
    )
    sim = await make_simulator(tasks_per_project=600, faults=FaultConfig(drop_rate=0.03))

    code, report = await run_against(sim, tmp_path, now=now)

    assert code == 0, report["summary"]
    assert sim.state.rejected["dropped"] > 0
    received = requests_received(sim)
    assert report["summary"]["requests_sent"]["total"] == received
    assert admitted == received
