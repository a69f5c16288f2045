"""Every delete acts on a fresh judgement: re-reading a selected task's state before it is deleted.

A run judges its tasks when it lists them, but deletes them minutes later (at 20 requests/s a
20,000-task run deletes its last task ~15 minutes after listing it), and a person may retry,
rename or restart a task meanwhile. So before each delete (or stop) attempt the scheduler asks
the target's `Refresher` whether the job's judgement may still be acted on:

- a judgement older than `max_staleness` (less `headroom`, the time a request may wait at the
  rate limiter after the check) is read again before anything is sent;
- a task refused as running (OMS.0063) since it was last judged is read again, whatever its age:
  the refusal says its state is not what the listing showed.

Reading again is cheap: when many jobs are due at once (they were listed together, so they go
stale together) one re-listing (by the policy's states, with the API's `status` filter, where
it can) refreshes them all, and every worker waiting meanwhile is served by that one re-list
(single flight). When only a few are due (a refused task coming back), a `GET` per task is
cheaper. A re-list is not proof of anything for a task it did not show: this run (and others)
delete while it pages by offset, so tasks slip between pages. Those fall back to a `GET`, and a
404 (OMS.1009) there means the task is already gone.

The decisions are pure and table-tested: `needs_refresh` (when to read again), `rejudge` (what
the policy says of the state read), `choose_refresh` (re-list or GET). `Refresher` does the I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from worker.listing import PAGE_SIZE, can_list_by_state
from worker.oms.errors import OmsError, TaskNotFound
from worker.oms.models import ACTIVE_STATES, Task, TaskPage, TaskStatus
from worker.outcomes import Outcome
from worker.policy import Policy, SkipReason, select
from worker.scheduler import Job
from worker.stopping import SendMark, tracking_sends

log = structlog.get_logger("oms_cleanup.freshness")

# The states a stop sent by this run moves a migrating task through on its way to deletion.
_STOPPED_STATES = frozenset({TaskStatus.PAUSING, TaskStatus.PAUSED})
# Kept for these reasons, a task is in a state the policy does not select: a re-list by the
# policy's states does not return it.
_OUT_OF_STATE = frozenset({SkipReason.STATE, SkipReason.ACTIVE_STATE, SkipReason.UNKNOWN_STATE})


class Method(enum.Enum):
    """How a refresh reads tasks again."""

    GET = "get"
    RELIST = "relist"


def needs_refresh(
    *,
    judged_at: float | None,
    now: float,
    max_staleness: float,
    refused_since_judged: bool,
    headroom: float = 0.0,
) -> bool:
    """Whether a job's judgement must be read again before its next delete or stop is sent.

    `judged_at` and `now` are on one monotonic clock (seconds); None is a judgement of unknown
    age. `headroom` is how long the request may still wait (at the rate limiter) after this
    check: the judgement must still be younger than `max_staleness` when it is sent.
    """
    if refused_since_judged or judged_at is None:
        return True
    return now - judged_at + headroom >= max_staleness


def rejudge(
    task: Task, *, policy: Policy, now: datetime, stopped_by_run: bool
) -> SkipReason | None:
    """What the policy says of a task's current state: None to go on deleting, else why not.

    A task this run stopped is pausing or paused because of that stop, on its way to the delete
    the policy chose it for: it is judged in the state it was selected in (migrating).
    """
    if stopped_by_run and task.status in _STOPPED_STATES and TaskStatus.MIGRATING in policy.states:
        policy = dataclasses.replace(policy, states=policy.states | _STOPPED_STATES)
    return select(task, policy=policy, now=now)


def choose_refresh(*, due: int, relist_pages: int) -> Method:
    """GET each due job, or re-list: whichever sends fewer requests (GET on a tie)."""
    return Method.RELIST if relist_pages < due else Method.GET


def relist_pages(
    *, pending: int, not_selected: Mapping[str, int], states: Collection[TaskStatus] | None
) -> int:
    """The pages a re-list is expected to take: the pending jobs plus the kept tasks it returns.

    `states` is None for a re-list of every task. By states, the tasks kept for their state are
    not returned; one page per state at least.
    """
    kept = sum(
        count
        for reason, count in not_selected.items()
        if states is None or reason not in _OUT_OF_STATE
    )
    listings = 1 if states is None else len(states)
    return max(listings, math.ceil((pending + kept) / PAGE_SIZE))


class TaskSource(Protocol):
    """The client calls a refresh makes (`OmsClient`)."""

    def iter_pages(
        self,
        *,
        page_size: int = ...,
        status: TaskStatus | None = ...,
        group_id: str | None = ...,
        task_name: str | None = ...,
    ) -> AsyncIterator[TaskPage]: ...

    async def show_task(self, task_id: int) -> Task: ...


@dataclass(slots=True)
class _Judged:
    """What the refresher last concluded of a job, and after which delete attempt."""

    attempts: int
    verdict: SkipReason | Outcome | None = None  # None: still selected


class Refresher:
    """One target's refresher: the scheduler awaits `judge(job)` before each delete or stop.

    Every request goes through `source` (the target's client), so through the same rate limiter
    and stop handling as the deletes.
    """

    def __init__(
        self,
        *,
        source: TaskSource,
        jobs: Sequence[Job],
        policy: Policy,
        max_staleness: float,
        headroom: float,
        not_selected: Mapping[str, int],
        now: Callable[[], datetime],
        clock: Callable[[], float],
    ) -> None:
        self._source = source
        self._jobs = jobs
        self._policy = policy
        self._max_staleness = max_staleness
        self._headroom = headroom
        self._not_selected = dict(not_selected)
        self._now = now
        self._clock = clock
        # Re-list by the policy's states where the API can filter by them, else everything.
        self._states: tuple[TaskStatus, ...] | None = (
            tuple(sorted(policy.states)) if can_list_by_state(policy.states) else None
        )
        self._lists_active = self._states is None or bool(policy.states & ACTIVE_STATES)
        self._judged: dict[Job, _Judged] = {}
        self._relist: asyncio.Task[None] | None = None
        self._relist_started: float | None = None
        self.relists = 0
        self.gets = 0

    async def judge(self, job: Job) -> Outcome | None:
        """None to go on and send the job's request; otherwise the outcome it ends with.

        `Outcome.CHANGED` when the policy no longer selects the task as it is now,
        `Outcome.ALREADY_GONE` when it no longer exists. Raises the OmsError of a failed GET.
        The job's task is replaced by what was read, so the report shows the state last seen.
        """
        if self._due(job):
            await self._refresh(job)
        return self._verdict(job)

    def send_by(self, job: Job) -> float | None:
        """Loop time after which the job's judgement is too old to send its request on."""
        return None if job.judged_at is None else job.judged_at + self._max_staleness

    def _refused_since_judged(self, job: Job) -> bool:
        judged = self._judged.get(job)
        return job.refused_as_running and job.attempts > (judged.attempts if judged else 0)

    def _due(self, job: Job) -> bool:
        return needs_refresh(
            judged_at=job.judged_at,
            now=self._clock(),
            max_staleness=self._max_staleness,
            refused_since_judged=self._refused_since_judged(job),
            headroom=self._headroom,
        )

    def _relist_shows(self, job: Job) -> bool:
        """Whether a re-list can be expected to show this due job."""
        started = self._relist_started
        if started is not None and (job.judged_at or 0.0) < started:
            return False  # a re-list already missed it: listing again would likely miss it too
        # A task refused as running is in an active state: a re-list of only finished states
        # would not show it.
        return not self._refused_since_judged(job) or self._lists_active

    def _verdict(self, job: Job) -> Outcome | None:
        judged = self._judged.get(job)
        verdict = None if judged is None else judged.verdict
        if verdict is None:
            return None
        if isinstance(verdict, Outcome):
            return verdict
        log.info("task_changed", reason=str(verdict), status=job.task.status.label, **_ids(job))
        return Outcome.CHANGED

    async def _refresh(self, job: Job) -> None:
        if self._relist is None and self._worth_relisting():
            self._relist = asyncio.create_task(self._run_relist())
            # Its waiters may all be cancelled (a stop): its error must not go unretrieved.
            self._relist.add_done_callback(_retrieve)
        if self._relist is not None:
            # Many workers wait on one re-list; none of them may cancel it for the others.
            await asyncio.shield(self._relist)
            if not self._due(job):
                return
        # Few jobs due, or not shown by the re-list (offsets shift while tasks are deleted), or
        # refused again while it ran: read this one task.
        await self._get(job)

    def _worth_relisting(self) -> bool:
        pending = [job for job in self._jobs if job.outcome is None]
        due = sum(1 for job in pending if self._due(job) and self._relist_shows(job))
        pages = relist_pages(
            pending=len(pending), not_selected=self._not_selected, states=self._states
        )
        return choose_refresh(due=due, relist_pages=pages) is Method.RELIST

    async def _run_relist(self) -> None:
        started = self._clock()
        self._relist_started = started
        self.relists += 1
        pending = {job.task.id: job for job in self._jobs if job.outcome is None}
        attempts = {job.task.id: job.attempts for job in pending.values()}
        now = self._now()
        # Its own mark (the task runs in a copy of one worker's context): its requests are not
        # that worker's delete, whose report depends on whether the delete left.
        with tracking_sends() as reads:
            await self._relist_pages(pending, attempts, reads=reads, started=started, now=now)
        log.info("tasks_relisted", shown=len(attempts) - len(pending), not_shown=len(pending))

    async def _relist_pages(
        self,
        pending: dict[int, Job],
        attempts: dict[int, int],
        *,
        reads: SendMark,
        started: float,
        now: datetime,
    ) -> None:
        try:
            for state in self._states or (None,):
                async for page in self._source.iter_pages(
                    page_size=PAGE_SIZE, status=state, group_id=self._policy.group_id
                ):
                    for task in page.tasks:
                        job = pending.pop(task.id, None)
                        if job is not None:
                            # Seen no earlier than the first page left (conservative for
                            # later pages); without a gate, when the re-list began.
                            at = reads.first_sent_at or started
                            self._update(job, task, at=at, attempts=attempts[task.id], now=now)
        except OmsError as error:
            # Whatever the re-list did not show falls back to a GET (which meets the error too
            # if it persists: the scheduler decides what it means).
            log.warning("relist_failed", error_code=error.error_code, http_status=error.http_status)
        finally:
            self._relist = None

    async def _get(self, job: Job) -> None:
        started = self._clock()
        attempts = job.attempts
        self.gets += 1
        try:
            with tracking_sends() as read:  # a read, not the job's delete (see _run_relist)
                task = await self._source.show_task(job.task.id)
        except TaskNotFound:
            job.judged_at = read.first_sent_at or started
            self._judged[job] = _Judged(attempts=attempts, verdict=Outcome.ALREADY_GONE)
            return
        # What OMS answered is at least as fresh as the moment the GET left.
        self._update(
            job, task, at=read.first_sent_at or started, attempts=attempts, now=self._now()
        )

    def _update(self, job: Job, task: Task, *, at: float, attempts: int, now: datetime) -> None:
        job.task = task
        job.seen_status = task.status  # the state last seen is what was just read
        job.judged_at = at
        verdict = rejudge(task, policy=self._policy, now=now, stopped_by_run=job.stop_sent)
        self._judged[job] = _Judged(attempts=attempts, verdict=verdict)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _ids(job: Job) -> dict[str, object]:
    return {"task_id": job.task.id, "task_name": job.task.name, "project_id": job.project_id}
