"""TargetRun.absorb: malformed entries and unproven listings, counted once over passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import yarl

from worker.listing import Listing
from worker.oms.client import ClientConfig, OmsClient
from worker.oms.models import MalformedTask, Task, TaskStatus
from worker.policy import Policy
from worker.ratelimit import AdaptiveRateLimiter
from worker.settings import Target
from worker.simulator.config import DEFAULT_CLIENT_CREDENTIALS, DEFAULT_PROJECT_ID
from worker.target import TargetRun

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
OLD = int((NOW - timedelta(days=40)).timestamp() * 1000)
POLICY = Policy(states=frozenset({TaskStatus.SUCCEEDED}), older_than=timedelta(days=30))


def _run() -> TargetRun:
    config = ClientConfig(endpoint=yarl.URL("http://127.0.0.1:1"), project_id=DEFAULT_PROJECT_ID)
    return TargetRun(
        target=Target(endpoint="http://127.0.0.1:1", project_id=DEFAULT_PROJECT_ID),
        label="t",
        client=OmsClient(config, credentials=DEFAULT_CLIENT_CREDENTIALS),
        limiter=AdaptiveRateLimiter(10),
    )


def _task(task_id: int) -> Task:
    return Task.model_validate({"id": task_id, "status": 5, "start_time": OLD})


def _listing(
    *,
    tasks: list[Task],
    malformed: list[MalformedTask],
    unproven: bool = False,
    may_be_unseen: int = 0,
    attempts: int = 1,
) -> Listing:
    return Listing(
        tasks=tasks,
        pages=1,
        reported_count=len(tasks) + len(malformed),
        malformed=malformed,
        unproven=unproven,
        may_be_unseen=may_be_unseen,
        attempts=attempts,
    )


async def test_malformed_entries_are_counted_once_over_passes() -> None:
    """A malformed entry met again in a later pass, or later readable, is not counted twice."""
    run = _run()
    first = [MalformedTask(id=3, problem="name: bad"), MalformedTask(id=None, problem="x")]
    run.absorb(_listing(tasks=[_task(1)], malformed=first), policy=POLICY, now=NOW)
    # The second pass meets id 3 again (now readable) and the id-less entry again.
    second = [MalformedTask(id=None, problem="x"), MalformedTask(id=4, problem="status: bad")]
    run.absorb(_listing(tasks=[_task(1), _task(3)], malformed=second), policy=POLICY, now=NOW)
    assert run.not_selected["malformed"] == 3
    assert [entry.id for entry in run.malformed] == [3, None, 4]
    assert [job.task.id for job in run.jobs] == [1]
    assert run.listed == 4
    summary = run.summary(dry_run=False)
    assert [entry.id for entry in summary.malformed] == [3, None, 4]


async def test_an_unproven_listing_leaves_tasks_out_of_reach_until_a_pass_is_shown_complete() -> (
    None
):
    """Unproven: out of reach with its may-be-unseen count and its own block; then complete."""
    run = _run()
    run.absorb(
        _listing(tasks=[_task(1)], malformed=[], unproven=True, may_be_unseen=7, attempts=3),
        policy=POLICY,
        now=NOW,
    )
    assert run.out_of_reach
    assert (run.unreached, run.unreached_reason) == (7, "listing not shown complete")
    block = run.summary(dry_run=False).unproven_listing
    assert block is not None
    assert (block.complete, block.may_be_unseen, block.reads) == (False, 7, 3)
    assert "offset" not in block.note
    assert run.summary(dry_run=False).offset_cap is None
    run.absorb(_listing(tasks=[_task(2)], malformed=[]), policy=POLICY, now=NOW)
    assert not run.out_of_reach
    block = run.summary(dry_run=False).unproven_listing
    assert block is not None
    assert (block.complete, block.may_be_unseen, block.passes) == (True, 0, 2)
