"""Fresh judgements: the pure decisions (tables) and the per-target refresher against a fake OMS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.freshness import (
    Method,
    Refresher,
    choose_refresh,
    needs_refresh,
    rejudge,
    relist_pages,
)
from worker.oms.errors import ErrorInfo, ServerError, TaskNotFound, TaskRunning, Throttled
from worker.oms.models import Task, TaskPage, TaskStatus
from worker.outcomes import Outcome
from worker.policy import Policy, SkipReason
from worker.scheduler import MAX_JUDGEMENTS, Job, Scheduler, SchedulerConfig
from worker.shutdown import Shutdown
from worker.stopping import StopGate

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
OLD = int((NOW - timedelta(days=60)).timestamp() * 1000)
FAILED = frozenset({TaskStatus.FAILED})


@pytest.mark.parametrize(
    ("judged_at", "now", "max_staleness", "refused", "headroom", "expected"),
    [
        (100.0, 100.0, 600.0, False, 0.0, False),  # just judged
        (100.0, 699.9, 600.0, False, 0.0, False),  # a hair younger than the bound
        (100.0, 700.0, 600.0, False, 0.0, True),  # exactly at the bound: not younger
        (100.0, 5000.0, 600.0, False, 0.0, True),  # long stale
        (100.0, 699.0, 600.0, False, 1.5, True),  # the limiter wait would take it past
        (100.0, 699.0, 600.0, False, 1.0, True),  # ... exactly to the bound
        (100.0, 698.0, 600.0, False, 1.0, False),  # ... still inside it
        (100.0, 100.0, 600.0, True, 0.0, True),  # refused as running: always read again
        (None, 100.0, 600.0, False, 0.0, True),  # judged at an unknown time: stale
        (100.0, 100.0, 0.5, False, 1.0, True),  # headroom beyond the bound: every attempt reads
    ],
)
def test_needs_refresh(
    judged_at: float | None,
    now: float,
    max_staleness: float,
    refused: bool,
    headroom: float,
    expected: bool,
) -> None:
    """Read again when refused since judged, of unknown age, or stale by the time it is sent."""
    assert (
        needs_refresh(
            judged_at=judged_at,
            now=now,
            max_staleness=max_staleness,
            refused_since_judged=refused,
            headroom=headroom,
        )
        is expected
    )


def _task(**fields: Any) -> Task:
    data: dict[str, Any] = {"id": 7, "name": "nightly-copy", "status": 4, "start_time": OLD}
    data.update(fields)
    return Task.model_validate(data)


def _policy(**fields: Any) -> Policy:
    values: dict[str, Any] = {"states": FAILED, "older_than": timedelta(days=30)}
    values.update(fields)
    return Policy(**values)


STOP_POLICY = _policy(
    states=frozenset({TaskStatus.MIGRATING, TaskStatus.SUCCEEDED}), stop_running=True
)


@pytest.mark.parametrize(
    ("task", "policy", "stopped", "expected"),
    [
        (_task(), _policy(), False, None),  # still failed and old: still selected
        (_task(status=2), _policy(), False, SkipReason.ACTIVE_STATE),  # retried: migrating
        (_task(status=5), _policy(), False, SkipReason.STATE),  # the retry succeeded
        (_task(status=9), _policy(), False, SkipReason.UNKNOWN_STATE),
        (
            _task(name="nightly-copy-keep"),
            _policy(name_exclude=("*-keep",)),
            False,
            SkipReason.EXCLUDED_NAME,
        ),  # renamed into an exclusion
        (
            _task(start_time=int(NOW.timestamp() * 1000)),
            _policy(),
            False,
            SkipReason.TOO_YOUNG,
        ),  # restarted: young again
        (_task(start_time=0), _policy(), False, SkipReason.AGE_UNKNOWN),
        (_task(), _policy(protect_ids=frozenset({7})), False, SkipReason.PROTECTED),
        # Paused by this run's own stop, on its way to the delete it was selected for.
        (_task(status=7), STOP_POLICY, True, None),
        (_task(status=3), STOP_POLICY, True, None),
        (_task(status=2), STOP_POLICY, True, None),
        # ... but not when someone else paused it, nor when it finished in a kept state.
        (_task(status=3), STOP_POLICY, False, SkipReason.STATE),
        (_task(status=4), STOP_POLICY, True, SkipReason.STATE),
        # A stopped task keeps no protection from being stopped: a rename still counts.
        (
            _task(status=3, name="x-keep"),
            _policy(states=STOP_POLICY.states, stop_running=True, name_exclude=("*-keep",)),
            True,
            SkipReason.EXCLUDED_NAME,
        ),
    ],
)
def test_rejudge(task: Task, policy: Policy, stopped: bool, expected: SkipReason | None) -> None:
    """The policy's word on the task as it is now; this run's own stop does not count."""
    assert rejudge(task, policy=policy, now=NOW, stopped_by_run=stopped) == expected


@pytest.mark.parametrize(
    ("due", "pages", "expected"),
    [
        (1, 1, Method.GET),
        (3, 40, Method.GET),
        (40, 40, Method.GET),  # a tie: GETs answer for exactly the due jobs
        (41, 40, Method.RELIST),
        (8000, 81, Method.RELIST),
        (0, 1, Method.GET),
    ],
)
def test_choose_refresh(due: int, pages: int, expected: Method) -> None:
    """The refresh that sends fewer requests."""
    assert choose_refresh(due=due, relist_pages=pages) is expected


@pytest.mark.parametrize(
    ("pending", "not_selected", "states", "expected"),
    [
        (0, {}, None, 1),
        (100, {}, None, 1),
        (101, {}, None, 2),
        (50, {"state": 1000, "too_young": 60}, None, 12),  # everything comes back unfiltered
        (50, {"state": 1000, "too_young": 60}, FAILED, 2),  # by state: other states do not
        (0, {"active_state": 5, "unknown_state": 5}, FAILED | {TaskStatus.SUCCEEDED}, 2),
    ],
)
def test_relist_pages(
    pending: int,
    not_selected: dict[str, int],
    states: frozenset[TaskStatus] | None,
    expected: int,
) -> None:
    """Pages of a re-list: pending jobs plus the kept tasks it returns, a page per listing."""
    assert relist_pages(pending=pending, not_selected=not_selected, states=states) == expected


class FakeSource:
    """Pages and single tasks from a dict that a test changes at will; counts its requests."""

    def __init__(self, tasks: dict[int, dict[str, Any]]) -> None:
        self.tasks = tasks
        self.pages = 0
        self.gets = 0
        self.listed_states: list[TaskStatus | None] = []
        # Ids a re-list does not show (as if they slipped between pages).
        self.hidden: set[int] = set()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_listing = False

    async def iter_pages(
        self,
        *,
        page_size: int = 100,
        status: TaskStatus | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> AsyncIterator[TaskPage]:
        self.listed_states.append(status)
        matching = [
            Task.model_validate(t)
            for i, t in sorted(self.tasks.items())
            if i not in self.hidden and (status is None or t["status"] == int(status))
        ]
        for start in range(0, max(1, len(matching)), page_size):
            await self.gate.wait()
            self.pages += 1
            if self.fail_listing:
                raise ServerError(ErrorInfo(method="GET", path="/tasks", http_status=503))
            yield TaskPage(tasks=matching[start : start + page_size], count=len(matching))

    async def show_task(self, task_id: int) -> Task:
        self.gets += 1
        if task_id not in self.tasks:
            raise TaskNotFound(ErrorInfo(method="GET", path=f"/tasks/{task_id}"))
        return Task.model_validate(self.tasks[task_id])


class Clock:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def _setup(
    count: int, *, not_selected: dict[str, int] | None = None
) -> tuple[FakeSource, list[Job], Clock, Refresher]:
    raw = {
        i: {"id": i, "name": f"t{i}", "status": 4, "start_time": OLD} for i in range(1, count + 1)
    }
    source = FakeSource(raw)
    jobs = [
        Job(task=Task.model_validate(t), project_id="p", judged_at=1000.0) for t in raw.values()
    ]
    clock = Clock()
    refresher = Refresher(
        source=source,
        jobs=jobs,
        policy=_policy(),
        max_staleness=600.0,
        headroom=1.0,
        not_selected={"state": 5000} if not_selected is None else not_selected,
        now=lambda: NOW,
        clock=clock,
    )
    return source, jobs, clock, refresher


async def test_fresh_judgement_sends_nothing() -> None:
    """A job judged a moment ago goes on without a request."""
    source, jobs, _, refresher = _setup(3)
    assert [await refresher.judge(job) for job in jobs] == [None, None, None]
    assert source.pages == source.gets == 0


async def test_refused_task_is_read_again_and_changed() -> None:
    """After OMS.0063 the task is read (one GET); retried by a person, it ends `changed`."""
    source, jobs, _, refresher = _setup(300)
    job = jobs[0]
    job.attempts, job.refused_as_running = 1, True
    source.tasks[1]["status"] = 2  # a person retried it: migrating
    assert await refresher.judge(job) is Outcome.CHANGED
    assert source.gets == 1
    assert source.pages == 0
    assert job.task.status is TaskStatus.MIGRATING  # the state last seen
    # The refusal has been accounted for: asking again reads nothing more.
    assert await refresher.judge(job) is Outcome.CHANGED
    assert source.gets == 1


async def test_refused_task_still_selected_goes_on() -> None:
    """Read after a refusal and still failed: the delete may be tried again."""
    source, jobs, _, refresher = _setup(3)
    jobs[1].attempts, jobs[1].refused_as_running = 1, True
    assert await refresher.judge(jobs[1]) is None
    assert source.gets == 1


async def test_task_gone_on_get_is_already_gone() -> None:
    """A 404 OMS.1009 on the GET means someone else deleted it."""
    source, jobs, clock, refresher = _setup(1)
    del source.tasks[1]
    clock.value += 1000
    assert await refresher.judge(jobs[0]) is Outcome.ALREADY_GONE


async def test_stale_jobs_share_one_relist() -> None:
    """250 stale jobs asked for at once: one re-list (by state) serves all, no GET."""
    source, jobs, clock, refresher = _setup(250)
    source.tasks[5]["name"] = "t5-renamed"
    source.tasks[6]["status"] = 5
    clock.value += 600
    source.gate.clear()
    judging = [asyncio.create_task(refresher.judge(job)) for job in jobs]
    await asyncio.sleep(0)
    source.gate.set()
    verdicts = await asyncio.gather(*judging)
    assert refresher.relists == 1
    assert source.listed_states == [TaskStatus.FAILED]
    assert source.pages == 3
    # Task 6 succeeded meanwhile: not among the failed tasks re-listed, so read by GET.
    assert source.gets == 1
    assert verdicts[5] is Outcome.CHANGED
    assert verdicts.count(Outcome.CHANGED) == 1
    assert jobs[4].task.name == "t5-renamed"  # what was read is what the report shows
    assert all(job.judged_at == 1600.0 for job in jobs)


async def test_task_missing_from_relist_falls_back_to_get() -> None:
    """A task the re-list did not show is read by GET, never deleted on the old judgement."""
    source, jobs, clock, refresher = _setup(250)
    source.hidden = {10, 11}
    source.tasks[11]["status"] = 2
    clock.value += 700
    verdicts = [await refresher.judge(job) for job in jobs]
    assert refresher.relists == 1
    assert source.gets == 2
    assert verdicts[9] is None
    assert verdicts[10] is Outcome.CHANGED


async def test_failed_relist_falls_back_to_get() -> None:
    """A re-list that fails part way still refreshes nothing wrongly; the rest are read by GET."""
    source, jobs, clock, refresher = _setup(150)
    source.fail_listing = True
    clock.value += 700
    assert await refresher.judge(jobs[0]) is None
    assert refresher.relists == 1
    assert source.gets == 1


async def test_jobs_missed_by_a_relist_are_not_relisted_again() -> None:
    """Many tasks hidden from a re-list: each is read by GET, no second re-list."""
    source, jobs, clock, refresher = _setup(400)
    source.hidden = set(range(1, 201))
    clock.value += 700
    for job in jobs:
        await refresher.judge(job)
    assert refresher.relists == 1
    assert source.gets == 200


async def test_finished_jobs_are_not_counted_or_refreshed() -> None:
    """Only pending jobs make a re-list worth it; finished ones are left as they are."""
    # 10 pending jobs against a 51-page re-list (kept failed tasks too young): GET each.
    source, jobs, clock, refresher = _setup(300, not_selected={"too_young": 5000})
    for job in jobs[:290]:
        job.outcome = Outcome.DELETED
    clock.value += 700
    for job in jobs[290:]:
        await refresher.judge(job)
    assert refresher.relists == 0
    assert source.gets == 10
    assert all(job.judged_at == 1000.0 for job in jobs[:290])


class RefusingApi:
    """Deletes that answer OMS.0063 for the ids in `running`, else succeed; stops succeed."""

    def __init__(self, running: set[int]) -> None:
        self.running = running
        self.deletes: list[int] = []

    async def delete_task(self, task_id: int) -> None:
        self.deletes.append(task_id)
        if task_id in self.running:
            raise TaskRunning(ErrorInfo(method="DELETE", path=f"/tasks/{task_id}", http_status=400))

    async def stop_task(self, task_id: int) -> None:
        return None


async def _schedule(
    refresher: Refresher, jobs: list[Job], api: RefusingApi, shutdown: Shutdown | None = None
) -> None:
    config = SchedulerConfig(concurrency=4, max_attempts=5, requeue_delay=0.01, grace=1.0)
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(
        api=api,
        jobs=jobs,
        config=config,
        shutdown=shutdown or Shutdown(),
        deadline=loop.time() + 30,
        judge=refresher,
    )
    await scheduler.run()


async def test_scheduler_ends_a_retried_task_changed_without_a_second_delete() -> None:
    """Refused, read again, retried by a person meanwhile: `changed`, one delete only."""
    source, jobs, _, refresher = _setup(6)
    source.tasks[2]["status"] = 2
    source.tasks[3]["status"] = 2
    api = RefusingApi(running={2, 3})
    await _schedule(refresher, jobs, api)
    assert sorted(api.deletes) == [1, 2, 3, 4, 5, 6]
    assert [job.outcome for job in jobs] == [
        Outcome.DELETED,
        Outcome.CHANGED,
        Outcome.CHANGED,
        Outcome.DELETED,
        Outcome.DELETED,
        Outcome.DELETED,
    ]
    assert jobs[1].task.status is TaskStatus.MIGRATING
    assert source.gets == 2


async def test_scheduler_retries_a_refused_task_still_selected() -> None:
    """Refused, read again, still failed (OMS was slow to let go): deleted on the next try."""
    source, jobs, _, refresher = _setup(2)
    api = RefusingApi(running={1})

    async def settle() -> None:
        await asyncio.sleep(0.05)
        api.running.clear()

    settling = asyncio.create_task(settle())
    await _schedule(refresher, jobs, api)
    await settling
    assert [job.outcome for job in jobs] == [Outcome.DELETED, Outcome.DELETED]
    assert jobs[0].attempts >= 2
    assert source.gets == jobs[0].attempts - 1  # read again before every retry


async def test_scheduler_sends_nothing_for_stale_jobs_after_a_stop_during_refresh() -> None:
    """A stop while tasks are being read again: their deletes are never sent."""
    source, jobs, clock, refresher = _setup(250)
    clock.value += 700
    source.gate.clear()
    api = RefusingApi(running=set())
    shutdown = Shutdown()
    running = asyncio.create_task(_schedule(refresher, jobs, api, shutdown))
    await asyncio.sleep(0.01)
    shutdown.on_deadline()
    source.gate.set()
    await running
    assert api.deletes == []
    assert {job.outcome for job in jobs} == {Outcome.NOT_ATTEMPTED}


class OpenGate:
    """A rate limiter that admits everything at once."""

    async def acquire(self) -> None:
        return None

    def on_throttled(self, error: Throttled) -> None:
        return None

    def on_success(self) -> None:
        return None


async def test_a_read_before_a_stopped_delete_does_not_count_as_the_delete_leaving() -> None:
    """The GET went out, then the stop held the delete back: not "may have reached OMS"."""
    stopped = asyncio.Event()
    source, jobs, clock, refresher = _setup(1)
    # The gate reads judgement expiries on the refresher's clock, as the run's share the loop's.
    gate = StopGate(OpenGate(), stopped=stopped, clock=clock)
    job = jobs[0]
    real_show = source.show_task

    async def show_then_stop(task_id: int) -> Task:
        await gate.acquire()
        task = await real_show(task_id)
        stopped.set()  # the run stops just after the read came back
        return task

    class GatedApi(RefusingApi):
        async def delete_task(self, task_id: int) -> None:
            await gate.acquire()
            await super().delete_task(task_id)

    source.show_task = show_then_stop  # type: ignore[method-assign]
    # Refused once: the next attempt reads the task first.
    api = GatedApi(running={1})
    config = SchedulerConfig(concurrency=1, max_attempts=5, requeue_delay=0.01, grace=1.0)
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(
        api=api,
        jobs=jobs,
        config=config,
        shutdown=Shutdown(),
        deadline=loop.time() + 30,
        judge=refresher,
    )
    await scheduler.run()
    assert api.deletes == [1]  # the first, refused; the second never left
    assert source.gets == 1
    assert job.outcome is Outcome.STILL_RUNNING
    assert job.last_error is not None
    assert job.last_error.http_status == 400  # still the refusal, not a cut-off request
    assert "may have reached" not in (job.last_error.error_msg or "")


class PausingSlot:
    """A rate limiter whose next `pauses` slots each come `pause` seconds later on `clock`,
    calling `during` while paused (the world changing meanwhile)."""

    def __init__(self, clock: Clock, *, pause: float, pauses: int, during: Any = None) -> None:
        self.clock = clock
        self.pause = pause
        self.pauses = pauses
        self.during = during

    async def acquire(self) -> None:
        if self.pauses > 0:
            self.pauses -= 1
            self.clock.value += self.pause
            if self.during is not None:
                self.during()

    def on_throttled(self, error: Throttled) -> None:
        return None

    def on_success(self) -> None:
        return None


class PacedApi(RefusingApi):
    """Deletes that pass `gate` first, as the client's do; counts only those that left."""

    def __init__(self, gate: StopGate) -> None:
        super().__init__(running=set())
        self.gate = gate

    async def delete_task(self, task_id: int) -> None:
        await self.gate.acquire()
        await super().delete_task(task_id)


async def _schedule_paced(slot: PausingSlot, refresher: Refresher, jobs: list[Job]) -> PacedApi:
    """Schedule `jobs` with deletes paced by `slot`, on the refresher's clock."""
    api = PacedApi(StopGate(slot, stopped=asyncio.Event(), clock=slot.clock))
    await _schedule(refresher, jobs, api)
    return api


async def test_a_delete_held_past_the_bound_is_judged_again_then_sent() -> None:
    """A 700 s pause at the limiter outlives the 600 s judgement: read again, then deleted."""
    source, jobs, clock, refresher = _setup(1)
    api = await _schedule_paced(PausingSlot(clock, pause=700, pauses=1), refresher, jobs)
    assert api.deletes == [1]
    assert source.gets == 1
    assert jobs[0].outcome is Outcome.DELETED
    assert jobs[0].attempts == 1  # the refused slot sent nothing


async def test_a_task_that_changed_during_the_pause_is_changed_not_deleted() -> None:
    """Retried by a person while the delete waited out a long pause: `changed`, never sent."""
    source, jobs, clock, refresher = _setup(1)

    def retried() -> None:
        source.tasks[1]["status"] = int(TaskStatus.SUCCEEDED)

    slot = PausingSlot(clock, pause=700, pauses=1, during=retried)
    api = await _schedule_paced(slot, refresher, jobs)
    assert api.deletes == []
    assert jobs[0].outcome is Outcome.CHANGED
    assert jobs[0].task.status is TaskStatus.SUCCEEDED


async def test_a_limiter_that_never_comes_in_time_sends_nothing() -> None:
    """Every fresh judgement expires at the limiter: bounded, the job ends unsent."""
    source, jobs, clock, refresher = _setup(1)
    slot = PausingSlot(clock, pause=700, pauses=MAX_JUDGEMENTS)
    api = await _schedule_paced(slot, refresher, jobs)
    assert api.deletes == []
    assert source.gets == MAX_JUDGEMENTS - 1
    assert jobs[0].outcome is Outcome.NOT_ATTEMPTED
    assert jobs[0].last_error is not None
    assert "--max-staleness" in (jobs[0].last_error.error_msg or "")
