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
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from expectations import started, validated
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from worker import logs
from worker.oms.auth import AkSk
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
from worker.runner import run_async
from worker.scheduler import Hooks, Job, Scheduler, SchedulerConfig
from worker.settings import load_settings
from worker.shutdown import FATAL, Shutdown
from worker.simulator.config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
    SimulatorConfig,
    TimingConfig,
)
from worker.simulator.faults import FaultConfig
from worker.simulator.population import PopulationConfig
from worker.simulator.server import run_simulator


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
    timer = loop.call_at(deadline, shutdown.on_deadline)
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
        assert ran.shutdown.fatal is not None
        assert ran.shutdown.fatal.error is not None


# ------------------------------------------------------------------------------------------
# The whole run, over real HTTP against the simulator: fewer, slower examples.

SUCCEEDED, FAILED, PAUSED, MIGRATING, UNKNOWN_CODE = 5, 4, 3, 2, 9
DELETABLE_CODES = frozenset({SUCCEEDED, FAILED, PAUSED})
STATE_NAMES = {SUCCEEDED: "succeeded", FAILED: "failed", PAUSED: "paused", MIGRATING: "migrating"}
AGES = {"0s": timedelta(), "1d": timedelta(days=1), "30d": timedelta(days=30)}
EXCLUDES = ("*db-dumps*", "nightly-*", "*é*")


@dataclass(frozen=True, slots=True)
class RunCase:
    """One simulated account, one policy, one set of API misbehaviours."""

    tasks: int
    weights: tuple[tuple[int, float], ...]
    states: tuple[int, ...]
    older_than: str
    exclude: tuple[str, ...]
    protect: tuple[int, ...]  # indexes into the population, sorted by id
    error_rate: float
    drop_rate: float
    drop_after_processing: bool
    rate_limit: int | None
    retry_after: bool
    concurrency: int


@st.composite
def run_cases(draw: st.DrawFn) -> RunCase:
    """Accounts with finished, paused, migrating, unknown-state and undated tasks; faults."""
    states = draw(
        st.lists(st.sampled_from(sorted(STATE_NAMES)), min_size=1, max_size=3, unique=True)
    )
    return RunCase(
        tasks=draw(st.integers(10, 50)),
        weights=(
            (SUCCEEDED, draw(st.floats(0.2, 1.0))),
            (FAILED, draw(st.floats(0.0, 0.3))),
            (PAUSED, draw(st.floats(0.0, 0.3))),
            (MIGRATING, draw(st.floats(0.0, 0.3))),
            (UNKNOWN_CODE, draw(st.floats(0.0, 0.2))),
        ),
        states=tuple(sorted(states)),
        older_than=draw(st.sampled_from(sorted(AGES))),
        exclude=tuple(draw(st.lists(st.sampled_from(EXCLUDES), max_size=2))),
        protect=tuple(draw(st.lists(st.integers(0, 9), max_size=3))),
        error_rate=draw(st.sampled_from([0.0, 0.05])),
        drop_rate=draw(st.sampled_from([0.0, 0.02])),
        drop_after_processing=draw(st.booleans()),
        rate_limit=draw(st.sampled_from([None, None, 20])),
        retry_after=draw(st.booleans()),
        concurrency=draw(st.integers(1, 8)),
    )


async def _run_against_simulator(
    case: RunCase, directory: Path
) -> tuple[int, dict[str, Any], dict[str, Any], dict[int, dict[str, Any]], set[int]]:
    config = SimulatorConfig(
        tasks_per_project=case.tasks,
        seed=case.tasks,
        population=PopulationConfig(
            status_weights=case.weights,
            zero_start_time_share=0.05,
            absent_start_time_share=0.05,
        ),
        timing=TimingConfig(
            finish_after=(timedelta(hours=1), timedelta(hours=2)),
            pausing_delay=timedelta(milliseconds=30),
            sticky_pause_share=0.5,
            sticky_pause_attempts=2,
        ),
        faults=FaultConfig(
            error_rate=case.error_rate,
            drop_rate=case.drop_rate,
            drop_after_processing=case.drop_after_processing,
            rate_limit=case.rate_limit,
            retry_after=case.retry_after,
        ),
    )
    async with run_simulator(config) as sim:
        before = {
            task_id: dict(task)
            for task_id, task in sim.state.projects[DEFAULT_PROJECT_ID].tasks.items()
        }
        ordered = sorted(before)
        protected = {ordered[i] for i in case.protect if i < len(ordered)}
        now = datetime.now(UTC)
        report = directory / "report.json"
        flags: dict[str, Any] = {
            "endpoint": sim.url,
            "project_id": DEFAULT_PROJECT_ID,
            "report": str(report),
            "states": ",".join(STATE_NAMES[code] for code in case.states),
            "stop_running": MIGRATING in case.states,
            "older_than": case.older_than,
            "name_exclude": list(case.exclude),
            "protect_ids": [str(task_id) for task_id in sorted(protected)],
            "rate": "1000",
            "concurrency": str(case.concurrency),
            "requeue_delay": "20ms",
            "max_attempts": "30",
            "deadline": "30s",
            "execute": True,
        }
        code = await run_async(
            settings=load_settings(flags, environ={}),
            credentials=AkSk(
                access_key=DEFAULT_ACCESS_KEY, secret_key=SecretStr(DEFAULT_SECRET_KEY)
            ),
            now=lambda: now,
            handle_signals=False,
        )
        truth = sim.state.snapshot()
    written = validated(report)
    eligible = {
        task_id
        for task_id, raw in before.items()
        if raw["status"] in case.states
        and (start := started(raw)) is not None
        and now - start >= AGES[case.older_than]
        and task_id not in protected
        and not any(fnmatchcase(raw["name"], glob) for glob in case.exclude)
    }
    return code, written, truth, before, eligible


def _storm(*, retry_after: bool, drop_after_processing: bool) -> RunCase:
    """Every fault at once, so each run of the suite meets them whatever hypothesis draws."""
    return RunCase(
        tasks=45,
        weights=((SUCCEEDED, 0.5), (FAILED, 0.1), (PAUSED, 0.1), (MIGRATING, 0.2), (9, 0.1)),
        states=(MIGRATING, PAUSED, FAILED, SUCCEEDED),
        older_than="1d",
        exclude=("*db-dumps*",),
        protect=(0, 1, 2),
        error_rate=0.05,
        drop_rate=0.02,
        drop_after_processing=drop_after_processing,
        rate_limit=20,
        retry_after=retry_after,
        concurrency=8,
    )


@settings(max_examples=8, deadline=None)
@example(case=_storm(retry_after=True, drop_after_processing=False))
@example(case=_storm(retry_after=False, drop_after_processing=True))
@given(case=run_cases())
def test_run_over_http_matches_the_simulators_record(case: RunCase) -> None:
    """Whole runs under 5xx, drops, 429 and OMS.0063: deletions ⊆ selection, report == record."""
    with tempfile.TemporaryDirectory() as directory:
        code, report, truth, before, eligible = asyncio.run(
            _run_against_simulator(case, Path(directory))
        )
    deleted = {d["task_id"] for d in truth["deletions"]}
    outcome_of = {t["id"]: t["outcome"] for t in report["tasks"]}

    # (a)+(b) Only selected tasks were deleted; nothing active, unknown, undated, protected,
    # excluded or too young. A delete never met a task still migrating.
    assert deleted <= eligible
    for task_id in deleted:
        assert before[task_id]["status"] in DELETABLE_CODES | {MIGRATING}
    refused = {r["status"] for r in truth["refused_deletes"]}
    assert refused <= {PAUSED, 7}, f"deletes sent to tasks in states {refused}"
    if MIGRATING not in case.states:
        assert truth["stops"] == []
        assert refused == set()

    # (c) Every selected task has exactly one record with one outcome.
    assert len(report["tasks"]) == len(outcome_of) == len(eligible)
    assert set(outcome_of) == eligible

    # (d) The report agrees with the simulator's record.
    reported_deleted = {i for i, outcome in outcome_of.items() if outcome == "deleted"}
    reported_gone = {i for i, outcome in outcome_of.items() if outcome == "already_gone"}
    failed = {i for i, outcome in outcome_of.items() if outcome == "failed"}
    assert reported_deleted <= deleted
    assert reported_gone <= deleted, "already_gone for a task nobody deleted"
    # A delete whose answer was lost on its last allowed send is failed, yet happened.
    assert deleted <= reported_deleted | reported_gone | failed
    if not (case.drop_rate and case.drop_after_processing):
        assert reported_gone == set()
        assert deleted == reported_deleted
    summary = report["summary"]
    assert summary["deleted"] == len(reported_deleted)
    assert summary["selected"] == len(eligible)
    assert summary["listed"] == case.tasks
    sent = summary["requests_sent"]["by_kind"]
    seen = sum(truth["requests"].values()) + sum(truth["rejected"].values())
    # aiohttp may re-send a request whose pooled connection was dropped, below our counting.
    assert sum(sent.values()) <= seen
    if not case.drop_rate:
        assert sum(sent.values()) == seen
    assert report["exit_code"] == code
    done = all(outcome in {"deleted", "already_gone"} for outcome in outcome_of.values())
    assert (code == 0) == done
    assert code in {0, 1}
