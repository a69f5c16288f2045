"""Deleting one target's selected tasks: a queue, a bounded pool of workers, a delay queue.

Shape (after arq): jobs wait in a ready queue; `concurrency` workers take them one at a
time; a delete refused because the task is running goes back after a growing, jittered
delay (`loop.call_later`) while the other jobs go on. What each answer means is decided
in one place, `outcomes.decide`. The deadline only informs those decisions; enforcing it
is the run's job (it records the stop in `Shutdown`). Once a stop is recorded no new request
leaves (the client's gate raises `stopping.Stopped` instead of sending), queued and delayed
jobs are finished as not attempted / still running, and requests already on the wire get a
grace period before they are cancelled. Whether a delete was on the wire is known exactly
(`stopping.tracking_sends`): one that never left is `not_attempted`, never `failed`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog

from worker.oms.errors import ErrorInfo, OmsError, TaskNotMigrating, TaskRunning
from worker.oms.models import Task, TaskStatus
from worker.outcomes import Fatal, Finish, Outcome, Requeue, decide
from worker.shutdown import FatalStop, Shutdown
from worker.stopping import JudgementExpired, SendMark, Stopped, tracking_sends

log = structlog.get_logger("oms_cleanup.scheduler")

# How often a job is judged again when each fresh judgement expires before its send leaves
# (a limiter paused by 429s for longer than --max-staleness); then it ends unsent.
MAX_JUDGEMENTS = 3


class TaskApi(Protocol):
    """The client calls a scheduler makes."""

    async def delete_task(self, task_id: int) -> None: ...

    async def stop_task(self, task_id: int) -> None: ...


class Judge(Protocol):
    """Consulted before each delete or stop (`freshness.Refresher`): None to go on, else the
    outcome the job ends with without a request (its task no longer selected, or gone)."""

    async def judge(self, job: Job) -> Outcome | None: ...

    def send_by(self, job: Job) -> float | None:
        """Loop time after which the job's judgement is too old to send its request on."""
        ...


@dataclass(slots=True, eq=False)
class Job:
    """One selected task on its way to an outcome."""

    task: Task
    project_id: str
    attempts: int = 0
    stop_sent: bool = False
    refused_as_running: bool = False
    outcome: Outcome | None = None
    last_error: ErrorInfo | None = None
    # Loop time at which `task` was read (listed or refreshed); None when unknown (stale).
    judged_at: float | None = None
    # When this run paused the task (--stop-running), and the state OMS then put it in.
    stopped_at: datetime | None = None
    seen_status: TaskStatus | None = None

    @property
    def status(self) -> TaskStatus:
        """The state the task was last known to be in: as listed, or as this run left it."""
        return self.seen_status if self.seen_status is not None else self.task.status

    def log_fields(self) -> dict[str, object]:
        """What every event about this task carries: which task, which try, what OMS said."""
        error = self.last_error
        return {
            "task_id": self.task.id,
            "task_name": self.task.name,
            "project_id": self.project_id,
            "attempt": self.attempts,
            "error_code": error.error_code if error else None,
            "http_status": error.http_status if error else None,
            "request_id": error.request_id if error else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    """How hard and how long to try."""

    concurrency: int
    max_attempts: int
    requeue_delay: float
    stop_running: bool = False
    # In-flight requests get this long to finish after a stop before they are cancelled.
    grace: float = 10.0


@dataclass(slots=True)
class Hooks:
    """Callbacks for progress displays; every outcome is also logged here, as it happens."""

    on_finish: Callable[[Job], None] = field(default=lambda job: None)
    on_requeue: Callable[[Job, float], None] = field(default=lambda job, delay: None)


class Scheduler:
    """Drives the jobs of one target to their outcomes."""

    def __init__(
        self,
        *,
        api: TaskApi,
        jobs: Sequence[Job],
        config: SchedulerConfig,
        shutdown: Shutdown,
        deadline: float,
        rng: random.Random | None = None,
        hooks: Hooks | None = None,
        target: str = "",
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        judge: Judge | None = None,
    ) -> None:
        self._api = api
        self._judge = judge
        self._jobs = jobs
        self._config = config
        self._shutdown = shutdown
        self._deadline = deadline
        self._rng = rng or random.Random()
        self._hooks = hooks or Hooks()
        self._target = target
        self._now = now
        self._ready: asyncio.Queue[Job | None] = asyncio.Queue()
        self._delayed: dict[Job, asyncio.TimerHandle] = {}
        self._pending = 0
        self._workers = 0

    async def run(self) -> None:
        """Return when every job has an outcome (or the run was stopped and wound down)."""
        for job in self._jobs:
            if job.outcome is None:
                self._ready.put_nowait(job)
                self._pending += 1
        if self._pending == 0:
            return
        self._workers = min(self._config.concurrency, self._pending)
        workers = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        watcher = asyncio.create_task(self._watch_shutdown(workers))
        try:
            await asyncio.gather(*workers, return_exceptions=True)
        finally:
            watcher.cancel()
            self._finish_leftovers()

    async def _work(self) -> None:
        while (job := await self._ready.get()) is not None:
            if self._shutdown.is_requested:
                self._finish_unstarted(job)
                continue
            with tracking_sends() as mark:
                try:
                    await self._process(job, mark)
                except Stopped:
                    self._finish_interrupted(job, mark)
                except asyncio.CancelledError:
                    self._finish_interrupted(job, mark)
                    raise

    def _finish_interrupted(self, job: Job, mark: SendMark) -> None:
        """The stop caught the job mid-call: a send that never left changes nothing."""
        if not mark.may_have_left:
            self._finish_unstarted(job)
            return
        # Cut off on the wire (or in a retry after it): OMS may have applied it.
        pausing = mark.call == "stop"
        job.last_error = ErrorInfo(
            method="POST" if pausing else "DELETE",
            path=f"/v2/{job.project_id}/tasks/{job.task.id}{'/stop' if pausing else ''}",
            error_msg="cancelled at shutdown; the request may have reached OMS",
        )
        # A stop that may have landed leaves a task that may be pausing: not deleted either way.
        self._finish(job, Outcome.STILL_RUNNING if pausing else Outcome.FAILED)

    async def _watch_shutdown(self, workers: list[asyncio.Task[None]]) -> None:
        await self._shutdown.requested.wait()
        for job, handle in list(self._delayed.items()):
            handle.cancel()
            self._finish_unstarted(job)
        self._delayed.clear()
        while not self._ready.empty():
            queued = self._ready.get_nowait()
            if queued is not None:
                self._finish_unstarted(queued)
        self._release_workers()
        # In-flight requests may finish within the grace period, unless told to stop now.
        all_done = asyncio.create_task(asyncio.wait(workers))
        immediate = asyncio.create_task(self._shutdown.immediate.wait())
        try:
            await asyncio.wait(
                [all_done, immediate],
                timeout=self._config.grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            all_done.cancel()
            immediate.cancel()
        for worker in workers:
            worker.cancel()

    async def _process(self, job: Job, mark: SendMark) -> None:
        """Judge the job again where due, then send its request on that judgement.

        A send the gate refused because the judgement expired while it waited goes back
        through the judge, a bounded number of times; then the job ends unsent.
        """
        for _ in range(MAX_JUDGEMENTS):
            if self._judge is not None:
                if not await self._rejudged(job, self._judge):
                    return
                mark.send_by = self._judge.send_by(job)
            # Each try counts its own sends: an earlier one is already in `job.attempts`.
            mark.sent = False
            try:
                await self._send(job, mark)
            except JudgementExpired:
                log.info("judgement_expired", **job.log_fields())
                continue
            return
        stop = mark.call == "stop"
        job.last_error = ErrorInfo(
            method="POST" if stop else "DELETE",
            path=f"/v2/{job.project_id}/tasks/{job.task.id}{'/stop' if stop else ''}",
            error_msg=f"judged again {MAX_JUDGEMENTS} times, each older than --max-staleness "
            "by the time a send slot came; not sent",
        )
        self._finish_unstarted(job)

    async def _send(self, job: Job, mark: SendMark) -> None:
        task = job.task
        if self._config.stop_running and task.status is TaskStatus.MIGRATING and not job.stop_sent:
            mark.call = "stop"
            await self._stop_first(job)
            return
        mark.call = "delete"
        try:
            await self._api.delete_task(task.id)
        except OmsError as error:
            job.attempts += 1
            job.last_error = error.info
            job.refused_as_running = isinstance(error, TaskRunning)
            self._act(job, error)
        except (Stopped, JudgementExpired, asyncio.CancelledError):
            # An attempt is a delete that left the process, not one the gate held back.
            if mark.may_have_left:
                job.attempts += 1
            raise
        else:
            job.attempts += 1
            job.last_error = None
            job.refused_as_running = False
            self._finish(job, Outcome.DELETED)

    async def _rejudged(self, job: Job, judge: Judge) -> bool:
        """Whether the job still goes on to its request after its judgement was checked."""
        try:
            verdict = await judge.judge(job)
        except Stopped:  # the stop came while the task was read again: no delete left
            self._finish_unstarted(job)
            return False
        except asyncio.CancelledError:
            self._finish_unstarted(job)
            raise
        except OmsError as error:
            job.last_error = error.info
            self._act(job, error)
            return False
        if verdict is not None:
            self._finish(job, verdict)
            return False
        if self._shutdown.is_requested:  # stopped while the task was read again
            self._finish_unstarted(job)
            return False
        return True

    async def _stop_first(self, job: Job) -> None:
        """Pause a migrating task, then come back to delete it once it had time to stop."""
        try:
            await self._api.stop_task(job.task.id)
        except TaskNotMigrating:
            pass  # it stopped or finished on its own: the delete will tell
        except OmsError as error:
            job.last_error = error.info
            self._act(job, error)
            return
        job.stop_sent = True
        job.stopped_at = self._now()
        # OMS accepted the stop: the migration is pausing, no longer migrating.
        job.seen_status = TaskStatus.PAUSING
        log.info("task_stopped", stopped_at=job.stopped_at.isoformat(), **job.log_fields())
        self._requeue(job, self._config.requeue_delay)

    def _act(self, job: Job, error: OmsError) -> None:
        loop = asyncio.get_running_loop()
        action = decide(
            error,
            attempt=job.attempts,
            max_attempts=self._config.max_attempts,
            requeue_base=self._config.requeue_delay,
            now=loop.time(),
            deadline=self._deadline,
            rng=self._rng,
        )
        if isinstance(action, Requeue):
            self._requeue(job, action.delay)
        elif isinstance(action, Finish):
            self._finish(job, action.outcome)
        elif isinstance(action, Fatal):
            log.error(
                "run_fatal",
                error_type=type(error).__name__,
                error_code=error.error_code,
                http_status=error.http_status,
                request_id=error.request_id,
            )
            self._shutdown.on_fatal(
                FatalStop(target=self._target, message=str(action.error), error=action.error.info)
            )
            self._finish(job, Outcome.FAILED)

    def _requeue(self, job: Job, delay: float) -> None:
        if self._shutdown.is_requested:
            self._finish_unstarted(job)
            return
        loop = asyncio.get_running_loop()
        self._delayed[job] = loop.call_later(delay, self._release, job)
        log.info("task_requeued", delay_seconds=round(delay, 3), **job.log_fields())
        self._hooks.on_requeue(job, delay)

    def _release(self, job: Job) -> None:
        self._delayed.pop(job, None)
        self._ready.put_nowait(job)

    def _finish_unstarted(self, job: Job) -> None:
        """A job the run will not try (again): refused as running, or never tried at all."""
        if job.refused_as_running or job.stop_sent:
            self._finish(job, Outcome.STILL_RUNNING)
        elif job.attempts == 0:
            self._finish(job, Outcome.NOT_ATTEMPTED)
        else:
            self._finish(job, Outcome.FAILED)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        if job.outcome is not None:
            return
        job.outcome = outcome
        self._pending -= 1
        log.info("task_outcome", outcome=outcome.value, **job.log_fields())
        self._hooks.on_finish(job)
        if self._pending == 0:
            self._release_workers()

    def _release_workers(self) -> None:
        for _ in range(self._workers):
            self._ready.put_nowait(None)

    def _finish_leftovers(self) -> None:
        for job in self._jobs:
            if job.outcome is None:
                self._finish_unstarted(job)
