"""Whole runs against a simulator whose tasks change after listing: every delete acts on a fresh
judgement, and a task the policy no longer selects as it is now ends `changed`, not deleted.

The simulator's own record (deletions, refusals, changes, each with its time) is the truth.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import SimulatorFactory
from expectations import eligible, started
from test_runner import population, run_against

from worker.simulator.config import ChangeConfig
from worker.simulator.faults import FaultConfig
from worker.simulator.population import PopulationConfig
from worker.simulator.state import FAILED, RENAMED, RESTARTED, RETRIED, SUCCEEDED

FINISHED_MIX = PopulationConfig(
    status_weights=((FAILED, 0.6), (SUCCEEDED, 0.4)),
    zero_start_time_share=0.0,
    absent_start_time_share=0.0,
)


def _at(record: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(record["at"]))


def _changed_first(
    truth: dict[str, Any], *, planned: set[tuple[str, int]], max_staleness: timedelta
) -> set[tuple[str, int]]:
    """Assert no changed task was deleted on a judgement older than the bound; return the
    tasks that changed before any delete reached them."""
    changes = {(c["project_id"], c["task_id"]): _at(c) for c in truth["changes"]}
    deletions = {(d["project_id"], d["task_id"]): _at(d) for d in truth["deletions"]}
    assert set(changes) <= planned
    # The judgement, read before the change, is at most max_staleness old when sent; the
    # slack covers the request's way to the server.
    slack = timedelta(milliseconds=250)
    for key, changed_at in changes.items():
        if key in deletions:
            assert deletions[key] < changed_at + max_staleness + slack, key
    return {key for key in changes if key not in deletions}


async def test_failed_tasks_retried_after_listing_are_not_deleted(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Failed tasks a person retried (OMS.0063, then succeeded) end `changed`, not deleted."""
    now = datetime.now(UTC)
    # The migration succeeds 60 ms after the retry: on the old code the second requeued delete
    # (50 ms base delay, doubling) finds it succeeded and deletes it.
    sim = await make_simulator(
        tasks_per_project=30,
        population=FINISHED_MIX,
        changes=ChangeConfig(retried=5, retry_runs=timedelta(milliseconds=60)),
    )
    expected = eligible(
        population(sim), now=now, older_than=timedelta(days=1), codes=frozenset({FAILED})
    )
    retried = {key for key, kind in sim.state.planned_changes.items() if kind == RETRIED}
    assert len(retried) == 5
    assert retried <= expected

    run = await run_against(
        sim,
        tmp_path,
        now=now,
        older_than="1d",
        states="failed",
        requeue_delay="50ms",
        execute=True,
    )

    assert run.exit_code == 0
    assert {(c["project_id"], c["task_id"]) for c in run.truth["changes"]} == retried
    assert run.deleted_by_simulator == run.outcomes("deleted") == expected - retried
    assert run.outcomes("changed") == retried
    assert run.report["summary"]["changed"] == 5
    records = {(t["project_id"], t["id"]): t for t in run.report["tasks"]}
    refused = [(r["project_id"], r["task_id"]) for r in run.truth["refused_deletes"]]
    for key in retried:
        record = records[key]
        # Read again after the refusal: the state last seen, never the listed "failed".
        assert record["status"] in {"migrating", "succeeded"}
        assert record["attempts"] == 1
        assert record["last_error"]["error_code"] == "OMS.0063"
        assert refused.count(key) == 1  # no second delete on the stale judgement
    # One GET per refused task (a re-list of failed tasks would not show migrating ones); the
    # rest went on without reading anything again.
    assert run.truth["requests"]["show"] == 5
    assert run.truth["requests"]["list"] == 1


async def test_no_delete_is_sent_on_a_judgement_older_than_max_staleness(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Tasks renamed into an exclusion or restarted mid-run: never deleted on a stale judgement.

    The run is slow (20 requests/s, ~2 s of deletes) and --max-staleness short (200 ms), so
    most tasks are read again before their delete; a changed task is deleted only when the
    judgement its delete was sent on predates the change by less than the bound.
    """
    now = datetime.now(UTC)
    sim = await make_simulator(
        tasks_per_project=40,
        population=FINISHED_MIX,
        changes=ChangeConfig(renamed=4, restarted=3, after=timedelta(milliseconds=300)),
    )
    before = population(sim)
    expected = eligible(before, now=now, older_than=timedelta(days=1))
    planned = dict(sim.state.planned_changes)
    assert set(planned) <= expected
    max_staleness = timedelta(milliseconds=200)

    run = await run_against(
        sim,
        tmp_path,
        now=now,
        older_than="1d",
        name_exclude=["*-keep"],
        rate="20",
        concurrency="2",
        max_staleness="200ms",
        execute=True,
    )

    assert run.exit_code == 0
    # Some tasks were deleted before they changed (legitimately); others changed first.
    changed_first = _changed_first(run.truth, planned=set(planned), max_staleness=max_staleness)
    assert changed_first, "no task changed before its delete: the run was too fast"
    assert run.outcomes("changed") == changed_first
    assert run.deleted_by_simulator == run.outcomes("deleted") == expected - changed_first
    records = {(t["project_id"], t["id"]): t for t in run.report["tasks"]}
    for key in changed_first:
        record = records[key]
        if planned[key] == RENAMED:
            assert record["name"] == f"{before[key]['name']}-keep"  # as last seen
        else:
            assert planned[key] == RESTARTED
            restarted_at = started(sim.state.projects[key[0]].tasks[key[1]])
            assert restarted_at is not None
            assert restarted_at > now  # young again: too young for the policy
            assert datetime.fromisoformat(record["start_time"]) == restarted_at
    assert run.report["summary"]["changed"] == len(changed_first)
    # Read again by re-listing (by state: failed, succeeded), not task by task.
    assert run.truth["requests"]["list"] > 1
    assert (
        run.report["summary"]["requests_sent"]["by_kind"]["list"] == run.truth["requests"]["list"]
    )


async def test_default_staleness_costs_nothing_on_a_quick_run(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """A run that finishes well inside --max-staleness sends no extra request to refresh."""
    now = datetime.now(UTC)
    sim = await make_simulator(tasks_per_project=150, population=FINISHED_MIX)
    expected = eligible(population(sim), now=now, older_than=timedelta(days=1))

    run = await run_against(sim, tmp_path, now=now, older_than="1d", execute=True)

    assert run.exit_code == 0
    assert run.deleted_by_simulator == expected
    assert run.truth["requests"]["list"] == 2
    assert run.truth["requests"]["show"] == 0
    assert run.report["settings"]["max_staleness"] == "10m"


async def test_a_429_pause_longer_than_max_staleness_sends_no_stale_delete(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """The gateway throttles with Retry-After 2 s, longer than --max-staleness (1.5 s): deletes
    held through the pause go back to be judged again; none reaches a task on a stale one."""
    now = datetime.now(UTC)
    sim = await make_simulator(
        tasks_per_project=40,
        population=FINISHED_MIX,
        changes=ChangeConfig(renamed=4, restarted=3, after=timedelta(milliseconds=300)),
        faults=FaultConfig(rate_limit=4, retry_after_seconds=2),
    )
    planned = dict(sim.state.planned_changes)
    max_staleness = timedelta(milliseconds=1500)

    run = await run_against(
        sim,
        tmp_path,
        now=now,
        older_than="1d",
        name_exclude=["*-keep"],
        rate="20",
        concurrency="2",
        max_staleness="1500ms",
        deadline="60s",
        execute=True,
    )

    assert run.truth["requests"]["delete"] > 0
    assert sum(run.truth["rejected"].values()) > 0, "the gateway never throttled"
    changed_first = _changed_first(run.truth, planned=set(planned), max_staleness=max_staleness)
    # A task that changed before any delete reached it is `changed` (or, where every fresh
    # judgement expired at the limiter, left unsent): never deleted.
    assert not changed_first & run.outcomes("deleted")
