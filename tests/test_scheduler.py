"""The worker pool: outcomes, requeue, concurrency bound, fatal errors and shutdown."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from worker.oms.errors import (
    AuthFailed,
    ErrorInfo,
    OmsError,
    ServerError,
    TaskNotFound,
    TaskNotMigrating,
    TaskRunning,
)
from worker.oms.models import Task
from worker.outcomes import Outcome
from worker.scheduler import Job, Scheduler, SchedulerConfig
from worker.shutdown import Shutdown


def _info(task_id: int) -> ErrorInfo:
    return ErrorInfo(method="DELETE", path=f"/v2/p/tasks/{task_id}", http_status=400)


class FakeApi:
    """In-memory OMS: scripted answers per task, then success."""

    def __init__(self, script: dict[int, list[type[OmsError]]] | None = None) -> None:
        self.script = script or {}
        self.deleted: list[int] = []
        self.stopped: list[int] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.delay = 0.0

    async def delete_task(self, task_id: int) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            answers = self.script.get(task_id)
            if answers:
                raise answers.pop(0)(_info(task_id))
            self.deleted.append(task_id)
        finally:
            self.in_flight -= 1

    async def stop_task(self, task_id: int) -> None:
        self.stopped.append(task_id)


def _jobs(n: int, status: int = 5) -> list[Job]:
    return [
        Job(task=Task.model_validate({"id": i, "name": f"t{i}", "status": status}), project_id="p")
        for i in range(1, n + 1)
    ]


def _config(**overrides: object) -> SchedulerConfig:
    values: dict[str, object] = {
        "concurrency": 4,
        "max_attempts": 3,
        "requeue_delay": 0.01,
        "grace": 1.0,
    }
    values.update(overrides)
    return SchedulerConfig(**values)  # type: ignore[arg-type]


async def _run(
    api: FakeApi, jobs: list[Job], deadline_in: float = 30.0, **config: object
) -> tuple[Scheduler, Shutdown]:
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    deadline = loop.time() + deadline_in
    scheduler = Scheduler(
        api=api,
        jobs=jobs,
        config=_config(**config),
        shutdown=shutdown,
        deadline=deadline,
        rng=random.Random(7),
    )
    timer = loop.call_at(deadline, shutdown.on_deadline)  # the runner's job in real runs
    await scheduler.run()
    timer.cancel()
    return scheduler, shutdown


async def test_every_job_deleted_once_within_concurrency() -> None:
    """All jobs end deleted, each delete sent once, never more in flight than allowed."""
    api = FakeApi()
    api.delay = 0.001
    jobs = _jobs(50)
    await _run(api, jobs, concurrency=4)
    assert Counter(j.outcome for j in jobs) == {Outcome.DELETED: 50}
    assert sorted(api.deleted) == list(range(1, 51))
    assert api.peak_in_flight == 4


async def test_running_task_requeued_then_deleted() -> None:
    """A task refused as running twice is deleted on its third attempt; others go on."""
    api = FakeApi({3: [TaskRunning, TaskRunning]})
    jobs = _jobs(5)
    await _run(api, jobs)
    job = jobs[2]
    assert job.outcome is Outcome.DELETED
    assert job.attempts == 3
    assert job.last_error is None
    assert api.deleted[-1] == 3  # the others did not wait for it


async def test_running_task_out_of_attempts_is_still_running() -> None:
    """When attempts run out a refused task ends still_running with its last error."""
    api = FakeApi({1: [TaskRunning] * 10})
    jobs = _jobs(1)
    await _run(api, jobs, max_attempts=3)
    assert jobs[0].outcome is Outcome.STILL_RUNNING
    assert jobs[0].attempts == 3
    assert jobs[0].last_error is not None
    assert jobs[0].last_error.http_status == 400


async def test_deadline_ends_requeued_tasks_as_still_running() -> None:
    """Once the deadline passes no new request starts; the waiting task is still_running."""
    api = FakeApi({1: [TaskRunning] * 100})
    jobs = _jobs(1)
    await _run(api, jobs, deadline_in=0.3, max_attempts=1000, requeue_delay=0.05)
    assert jobs[0].outcome is Outcome.STILL_RUNNING
    assert 2 <= jobs[0].attempts < 1000


async def test_deadline_stops_new_requests() -> None:
    """At the deadline queued jobs are not attempted and in-flight ones finish."""
    api = FakeApi()
    api.delay = 0.05
    jobs = _jobs(100)
    _, shutdown = await _run(api, jobs, deadline_in=0.12, concurrency=2)
    outcomes = Counter(j.outcome for j in jobs)
    assert shutdown.deadline_reached
    assert outcomes[Outcome.DELETED] == len(api.deleted) > 0
    assert outcomes[Outcome.NOT_ATTEMPTED] == 100 - len(api.deleted)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [(TaskNotFound, Outcome.ALREADY_GONE), (ServerError, Outcome.FAILED)],
)
async def test_final_errors(error: type[OmsError], outcome: Outcome) -> None:
    """Not found counts as already gone; an error left after client retries is failed."""
    api = FakeApi({1: [error]})
    jobs = _jobs(2)
    await _run(api, jobs)
    assert jobs[0].outcome is outcome
    assert jobs[1].outcome is Outcome.DELETED


async def test_auth_failure_stops_the_run() -> None:
    """AuthFailed is fatal: nothing more is sent and the rest is not attempted."""
    api = FakeApi({1: [AuthFailed]})
    jobs = _jobs(20)
    _, shutdown = await _run(api, jobs, concurrency=1)
    assert shutdown.fatal is not None
    assert shutdown.fatal.error == AuthFailed(_info(1)).info
    assert shutdown.reason == "fatal"
    assert api.deleted == []
    assert Counter(j.outcome for j in jobs) == {Outcome.FAILED: 1, Outcome.NOT_ATTEMPTED: 19}


async def test_signal_drains_queue_and_lets_in_flight_finish() -> None:
    """A graceful stop lets in-flight deletes finish and marks queued jobs not_attempted."""
    api = FakeApi()
    api.delay = 0.05
    jobs = _jobs(40)
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    scheduler = Scheduler(
        api=api,
        jobs=jobs,
        config=_config(concurrency=4),
        shutdown=shutdown,
        deadline=loop.time() + 30,
    )
    loop.call_later(0.02, shutdown.on_signal, "SIGTERM")
    await scheduler.run()
    outcomes = Counter(j.outcome for j in jobs)
    assert outcomes[Outcome.DELETED] == len(api.deleted) == 4
    assert outcomes[Outcome.NOT_ATTEMPTED] == 36
    assert shutdown.signal == "SIGTERM"


async def test_second_signal_cancels_in_flight() -> None:
    """A second signal cuts in-flight requests short; they are reported failed, not lost."""
    api = FakeApi()
    api.delay = 10.0
    jobs = _jobs(3)
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    scheduler = Scheduler(
        api=api,
        jobs=jobs,
        config=_config(concurrency=3, grace=30.0),
        shutdown=shutdown,
        deadline=loop.time() + 60,
    )
    loop.call_later(0.02, shutdown.on_signal, "SIGINT")
    loop.call_later(0.04, shutdown.on_signal, "SIGINT")
    await asyncio.wait_for(scheduler.run(), timeout=5)
    assert all(j.outcome is Outcome.FAILED for j in jobs)
    assert all(j.last_error and "cancelled" in (j.last_error.error_msg or "") for j in jobs)
    assert api.deleted == []


async def test_stop_running_stops_then_deletes() -> None:
    """With stop_running a migrating task is stopped first and deleted afterwards."""
    api = FakeApi({1: [TaskRunning]})
    jobs = _jobs(1, status=2)
    await _run(api, jobs, stop_running=True)
    assert api.stopped == [1]
    assert jobs[0].outcome is Outcome.DELETED
    assert jobs[0].attempts == 2


async def test_without_stop_running_migrating_task_is_not_stopped() -> None:
    """Without stop_running nothing is ever stopped."""
    api = FakeApi({1: [TaskRunning] * 5})
    jobs = _jobs(1, status=2)
    await _run(api, jobs, max_attempts=2)
    assert api.stopped == []
    assert jobs[0].outcome is Outcome.STILL_RUNNING


async def test_stop_on_task_no_longer_migrating_goes_on_to_delete() -> None:
    """OMS.0066 on stop is harmless: the task is deleted."""

    class NotMigrating(FakeApi):
        async def stop_task(self, task_id: int) -> None:
            raise TaskNotMigrating(_info(task_id))

    api = NotMigrating()
    jobs = _jobs(1, status=2)
    await _run(api, jobs, stop_running=True)
    assert jobs[0].outcome is Outcome.DELETED
