"""Properties of the scheduler over random task populations and API behaviours (hypothesis).

An in-memory OMS stands in for the client: each task is present or already gone, may be
refused as running (OMS.0063) a number of times before it becomes deletable, and each delete
may meet a final transient error (5xx, 429, transport, malformed answer, as left over after
the client's own retries). An authentication or permission failure, a signal or the deadline
may stop the run at a random moment. Whatever happens: only selected tasks are deleted, each
at most once and only when deletable; nothing starts after a stop; every job ends with
exactly one outcome that agrees with what the API answered.
"""

from __future__ import annotations

import asyncio
import copy
import io
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import logs
from worker.oms.errors import (
    AuthFailed,
    ErrorInfo,
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
from worker.oms.models import Task, TaskStatus
from worker.outcomes import Outcome
from worker.scheduler import Hooks, Job, Scheduler, SchedulerConfig
from worker.shutdown import FATAL, Shutdown


@pytest.fixture(autouse=True, scope="module")
def quiet_logs() -> Iterator[None]:
    """Only errors, to a buffer: thousands of per-task events would cost more than the runs."""
    logs.configure(fmt="json", level="error", stream=io.StringIO())
    yield
    logs.reset()


TRANSIENT_LEFTOVERS: tuple[type[OmsError], ...] = (
    ServerError,
    Throttled,
    TransportError,
    InvalidRequest,
    MalformedResponse,
)
FATAL_ERRORS: tuple[type[OmsError], ...] = (AuthFailed, PermissionDenied)


@dataclass(slots=True)
class TaskScript:
    """How OMS treats one selected task."""

    present: bool
    refusals: int  # OMS.0063 answers before the task becomes deletable
    leftovers: list[type[OmsError] | None]  # per delete call: a final error, or None (normal)
    status: int


@dataclass(slots=True)
class Population:
    """One example: the tasks, the run's configuration and what may stop it."""

    scripts: dict[int, TaskScript]
    concurrency: int
    max_attempts: int
    stop_running: bool
    fatal_at_call: int | None
    fatal_error: type[OmsError]
    signal_at_call: int | None
    deadline_in: float
    yields: list[int]


@dataclass(slots=True)
class Call:
    """One delete sent to the fake OMS."""

    task_id: int
    started: int
    answer: str = ""


@dataclass(slots=True)
class FakeOms:
    """OMS in memory; records every call with a global event sequence number."""

    scripts: dict[int, TaskScript]
    fatal_at_call: int | None
    fatal_error: type[OmsError]
    signal_at_call: int | None
    yields: list[int]
    shutdown: Shutdown
    events: int = 0
    calls: list[Call] = field(default_factory=list)
    stops: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    stop_event: int | None = None

    def _tick(self) -> int:
        self.events += 1
        return self.events

    async def delete_task(self, task_id: int) -> None:
        call = Call(task_id=task_id, started=self._tick())
        self.calls.append(call)
        for _ in range(self.yields[len(self.calls) % len(self.yields)]):
            await asyncio.sleep(0)
        try:
            self._answer(call)
        finally:
            if self.signal_at_call == len(self.calls) and self.stop_event is None:
                self.shutdown.on_signal("SIGTERM")
                self.stop_event = self._tick()

    def _answer(self, call: Call) -> None:
        script = self.scripts[call.task_id]
        info = ErrorInfo(method="DELETE", path=f"/v2/p/tasks/{call.task_id}", http_status=400)
        if self.fatal_at_call is not None and len(self.calls) >= self.fatal_at_call:
            call.answer = "fatal"
            if self.stop_event is None:
                self.stop_event = self._tick()
            raise self.fatal_error(info)
        leftover = script.leftovers.pop(0) if script.leftovers else None
        if leftover is not None:
            call.answer = "leftover"
            raise leftover(info)
        if not script.present:
            call.answer = "gone"
            raise TaskNotFound(info)
        if script.refusals > 0:
            script.refusals -= 1
            call.answer = "running"
            raise TaskRunning(info)
        script.present = False
        self.deleted.append(call.task_id)
        call.answer = "deleted"

    async def stop_task(self, task_id: int) -> None:
        self.stops.append(task_id)
        if self.scripts[task_id].refusals == 0:
            raise TaskNotMigrating(
                ErrorInfo(method="POST", path=f"/v2/p/tasks/{task_id}/stop", http_status=400)
            )


@st.composite
def populations(draw: st.DrawFn) -> Population:
    """Random tasks, answers and stops; mostly ordinary, sometimes hostile."""
    count = draw(st.integers(0, 25))
    ids = draw(st.lists(st.integers(1, 10**15), min_size=count, max_size=count, unique=True))
    stop_running = draw(st.booleans())
    leftover = st.sampled_from(TRANSIENT_LEFTOVERS)
    scripts = {
        task_id: TaskScript(
            present=draw(st.integers(0, 9)) > 0,
            refusals=draw(st.sampled_from([0, 0, 0, 1, 2, 5])),
            leftovers=draw(st.lists(st.none() | st.none() | st.none() | leftover, max_size=3)),
            status=draw(
                st.sampled_from([5, 4, 3, 2] if stop_running else [5, 4, 3]),
            ),
        )
        for task_id in ids
    }
    return Population(
        scripts=scripts,
        concurrency=draw(st.integers(1, 8)),
        max_attempts=draw(st.integers(1, 5)),
        stop_running=stop_running,
        fatal_at_call=draw(st.none() | st.none() | st.integers(1, 30)),
        fatal_error=draw(st.sampled_from(FATAL_ERRORS)),
        signal_at_call=draw(st.none() | st.none() | st.integers(1, 30)),
        deadline_in=draw(st.sampled_from([30.0, 30.0, 30.0, 0.01])),
        yields=draw(st.lists(st.integers(0, 3), min_size=1, max_size=5)),
    )


@dataclass(slots=True)
class Ran:
    """What one scheduler run did."""

    jobs: list[Job]
    api: FakeOms
    finishes: Counter[int]
    shutdown: Shutdown
    scheduler: Scheduler


async def _run(population: Population) -> Ran:
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    api = FakeOms(
        # A copy: the fake consumes its script, and a failing example must print as drawn.
        scripts=copy.deepcopy(population.scripts),
        fatal_at_call=population.fatal_at_call,
        fatal_error=population.fatal_error,
        signal_at_call=population.signal_at_call,
        yields=population.yields,
        shutdown=shutdown,
    )
    jobs = [
        Job(
            task=Task.model_validate({"id": task_id, "name": f"t{task_id}", "status": s.status}),
            project_id="p",
        )
        for task_id, s in population.scripts.items()
    ]
    finishes: Counter[int] = Counter()
    deadline = loop.time() + population.deadline_in
    scheduler = Scheduler(
        api=api,
        jobs=jobs,
        config=SchedulerConfig(
            concurrency=population.concurrency,
            max_attempts=population.max_attempts,
            requeue_delay=0.002,
            stop_running=population.stop_running,
            grace=5.0,
        ),
        shutdown=shutdown,
        deadline=deadline,
        rng=random.Random(0),
        hooks=Hooks(on_finish=lambda job: finishes.update([job.task.id])),
    )
    # The runner arms the deadline; the scheduler only reads it.
    timer = loop.call_at(deadline, shutdown.request, "deadline")
    try:
        await asyncio.wait_for(scheduler.run(), timeout=20)
    finally:
        timer.cancel()
    return Ran(jobs=jobs, api=api, finishes=finishes, shutdown=shutdown, scheduler=scheduler)


def _expected_outcome(script_answers: list[str], max_attempts: int) -> Outcome:
    """The outcome a job must get from the answers its deletes met (no stop, no deadline)."""
    if not script_answers:
        return Outcome.NOT_ATTEMPTED
    last = script_answers[-1]
    return {
        "deleted": Outcome.DELETED,
        "gone": Outcome.ALREADY_GONE,
        "leftover": Outcome.FAILED,
        "fatal": Outcome.FAILED,
        "running": Outcome.STILL_RUNNING,
    }[last]


@settings(max_examples=150, deadline=None)
@given(population=populations())
def test_every_job_one_consistent_outcome(population: Population) -> None:
    """Only selected, deletable tasks are deleted, once; every job ends with one true outcome."""
    original = population.scripts
    ran = asyncio.run(_run(population))
    api = ran.api
    selected = {job.task.id for job in ran.jobs}

    # (a) Deletes only of selected tasks, each at most once, and only when OMS allowed it.
    assert set(api.deleted) <= selected
    assert len(api.deleted) == len(set(api.deleted))
    for task_id in api.deleted:
        assert original[task_id].present
        answers = [c.answer for c in api.calls if c.task_id == task_id]
        assert answers.count("running") == original[task_id].refusals
        assert answers[-1] == "deleted", "a task was sent a delete after it was deleted"
    if not population.stop_running:
        assert api.stops == []
    for task_id in api.stops:
        assert population.scripts[task_id].status == TaskStatus.MIGRATING

    # Nothing starts after a stop (fatal answer or signal).
    if api.stop_event is not None:
        assert all(call.started < api.stop_event for call in api.calls)

    # (c) Every job ends with exactly one outcome, announced exactly once.
    assert all(job.outcome is not None for job in ran.jobs)
    assert ran.finishes == Counter(selected)
    for job in ran.jobs:
        answers = [c.answer for c in api.calls if c.task_id == job.task.id]
        assert job.attempts == len(answers) <= population.max_attempts
        outcome = job.outcome
        if outcome is Outcome.DELETED:
            assert answers[-1] == "deleted"
            assert job.last_error is None
        elif outcome is Outcome.ALREADY_GONE:
            assert answers[-1] == "gone"
        elif outcome is Outcome.NOT_ATTEMPTED:
            assert answers == []
            assert ran.shutdown.is_requested, "a job left untried although nothing stopped"
        elif outcome is Outcome.STILL_RUNNING:
            assert answers[-1:] == ["running"] or job.stop_sent
        else:
            assert outcome is Outcome.FAILED
            assert answers
            assert answers[-1] in {"leftover", "fatal"}
            assert job.last_error is not None
        if not ran.shutdown.is_requested:
            assert outcome is _expected_outcome(answers, population.max_attempts)
            if answers[-1:] == ["running"] and population.deadline_in > 1:
                # Refused to the end: attempts ran out (a near deadline may end it sooner).
                assert job.attempts == population.max_attempts

    # (d) The counts agree with the fake OMS's own record.
    outcomes = Counter(job.outcome for job in ran.jobs)
    assert outcomes[Outcome.DELETED] == len(api.deleted)
    assert sum(outcomes.values()) == len(ran.jobs)
    if api.stop_event is not None and any(c.answer == "fatal" for c in api.calls):
        assert ran.shutdown.reason in {FATAL, "SIGTERM", "deadline"}
        assert isinstance(ran.scheduler.fatal, FATAL_ERRORS)
