"""One cleanup run end to end: list each target, select, guard, delete, report, exit code.

The order is the safety argument, per target: a target is listed completely before anything
in it is deleted (a listing that cannot complete stops the run), its selection is checked
against `--max-deletions` before its first delete, and nothing is deleted without
`--execute`. Each target starts deleting as soon as its own listing is complete, except
when the run needs every listing first: an interactive confirmation is asked once for the
whole selection, and an absolute `--max-deletions` caps the run's total. A percentage cap
is taken of each target's own listing, and a target over it deletes nothing while the
others go on (exit 3). The report is written on every path out of here.

How the run stops is recorded in one place, `Shutdown` (signal, deadline, a fatal answer);
every send passes a `stopping.StopGate`, so after a stop nothing new leaves the process.
How it ended is gathered once, at the end, into an `exit_codes.RunEnd`, and the pure
`exit_codes.exit_code` picks the code.

One exception to "completely": OMS may cap the listing offset (see `listing.is_offset_cap`).
A capped listing holds a consistent window of tasks, each judged as usual. The target deletes
what that window selected, then lists again from offset 0: the deleted tasks are gone, so
the window reaches further. Passes go on while a target's listing is capped and its last
pass selected something new; a task met again is neither counted nor selected twice. Every
pass reads all its pages before it deletes, `--max-deletions` keeps the limit worked out
before the first delete (of every task the API counted) for the total of all passes, and a
run that ends with tasks out of reach says so in the report and exits 1.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from worker import logs, metrics
from worker.exit_codes import EXIT_USAGE, RunEnd, exit_code
from worker.freshness import Refresher
from worker.listing import IncompleteListing, Listing, can_list_by_state, list_all, list_states
from worker.oms.auth import Credentials
from worker.oms.errors import ErrorInfo, OmsError
from worker.outcomes import DONE_OUTCOMES, Outcome
from worker.policy import Policy
from worker.progress import Progress, ProgressLine
from worker.report import (
    CapCheck,
    TaskRecord,
    build_report,
    check_writable,
    write_report,
)
from worker.scheduler import Hooks, Job, Scheduler, SchedulerConfig
from worker.settings import RunSettings, masked_settings
from worker.shutdown import FatalStop, Shutdown, route_process_signals, signals_handled
from worker.stopping import Stopped, until_stopped
from worker.target import ListingState, TargetRun, open_target

log = structlog.get_logger("oms_cleanup.run")

PROG = "oms-cleanup"

Confirm = Callable[[int, Sequence[str]], bool]


def run(*, settings: RunSettings, credentials: Credentials, confirm: Confirm | None) -> int:
    """Run one cleanup in a fresh event loop; returns the process exit code."""
    shutdown = Shutdown()
    route_process_signals(shutdown)
    return asyncio.run(
        run_async(settings=settings, credentials=credentials, confirm=confirm, shutdown=shutdown)
    )


async def run_async(
    *,
    settings: RunSettings,
    credentials: Credentials,
    confirm: Confirm | None = None,
    shutdown: Shutdown | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    handle_signals: bool = True,
    rng: random.Random | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The run itself, for callers that already have a loop (the demo, tests).

    With `settings.list_by_status` only the states the policy can select are listed (see
    `listing.list_states`): `listed` and `not_selected` then cover those states only, which
    the report's settings note, and `--max-deletions` percentages are taken of every task.
    """
    shutdown = shutdown or Shutdown()
    # The signal handlers cover the report and metrics too: a SIGTERM while the report is
    # being written must not kill the process with the default action.
    with signals_handled(shutdown) if handle_signals else nullcontext():
        return await _Run(
            settings=settings,
            credentials=credentials,
            confirm=confirm,
            shutdown=shutdown,
            now=now,
            rng=rng,
            stderr=stderr or sys.stderr,
        ).execute()


@dataclass(slots=True, kw_only=True)
class _Run:
    """One run's moving parts; `execute` is the whole run."""

    settings: RunSettings
    credentials: Credentials
    confirm: Confirm | None
    shutdown: Shutdown
    now: Callable[[], datetime]
    rng: random.Random | None
    stderr: TextIO
    runs: list[TargetRun] | None = None
    # A --max-deletions cap was exceeded or the confirmation declined somewhere.
    safety_abort: bool = False
    # The deadline on the loop's clock.
    deadline: float = 0.0

    async def execute(self) -> int:
        settings = self.settings
        # Proved before the first request: a run must not delete and then lose its report.
        try:
            check_writable(settings.report)
        except OSError as error:
            reason = error.strerror or str(error)
            log.error("report_unwritable", report=str(settings.report), error=reason)
            self.stderr.write(
                f"{PROG}: error: report {settings.report} cannot be written ({reason}); "
                "nothing was sent\n"
            )
            return EXIT_USAGE
        run_id = uuid.uuid4().hex
        started_at = self.now()
        logs.bind_run(run_id)
        log.info(
            "run_started",
            dry_run=not settings.execute,
            targets=[t.project_id for t in settings.targets],
        )
        if settings.dropped_targets:
            # Flags replaced the config file's [[targets]]: legal, but easy to do by accident.
            log.warning("targets_replaced", dropped=masked_settings(settings)["dropped_targets"])
        self.runs = []
        progress = Progress()
        line = ProgressLine(progress)
        try:
            async with AsyncExitStack() as stack:
                for target in settings.targets:
                    self.runs.append(
                        await open_target(
                            stack,
                            target,
                            settings=settings,
                            credentials=self.credentials,
                            stopped=self.shutdown.requested,
                        )
                    )
                loop = asyncio.get_running_loop()
                self.deadline = loop.time() + settings.deadline.total_seconds()
                timer = loop.call_at(self.deadline, self.shutdown.on_deadline)
                stack.callback(timer.cancel)
                stack.callback(line.close)
                await _Work(self, progress=progress, line=line).all_targets()
        except BaseException:
            await self._conclude(run_id=run_id, started_at=started_at, crashed=True)
            raise
        return await self._conclude(run_id=run_id, started_at=started_at, crashed=False)

    def _end(self, *, crashed: bool) -> RunEnd:
        runs = self.runs or []
        dry_run = not self.settings.execute
        done = DONE_OUTCOMES | {Outcome.WOULD_DELETE} if dry_run else DONE_OUTCOMES
        jobs_left = any((job.outcome or Outcome.NOT_ATTEMPTED) not in done for job in _jobs(runs))
        listings_left = any(
            r.listing_state is not ListingState.COMPLETE or r.out_of_reach for r in runs
        )
        return RunEnd(
            signal=self.shutdown.signal,
            fatal=crashed or self.shutdown.fatal is not None,
            safety_abort=self.safety_abort,
            tasks_left=jobs_left or listings_left,
        )

    async def _conclude(self, *, run_id: str, started_at: datetime, crashed: bool) -> int:
        """Report, metrics, the final event; the exit code. Never raises for the report."""
        settings = self.settings
        runs = self.runs or []
        dry_run = not settings.execute
        _log_unreached(runs, dry_run=dry_run)
        end = self._end(crashed=crashed)
        code = exit_code(end)
        report: dict[str, Any] | None = None
        problem: str | None = None
        try:
            report = build_report(
                run_id=run_id,
                started_at=started_at,
                finished_at=self.now(),
                dry_run=dry_run,
                exit_code=code,
                interrupted=self.shutdown.signal,
                settings=_report_settings(settings, credentials=self.credentials, runs=runs),
                targets=[r.summary(dry_run=dry_run) for r in runs],
                records=[_record(job) for job in _jobs(runs)],
                records_by_target=[[_record(job) for job in r.jobs] for r in runs],
                deadline_reached=self.shutdown.deadline_reached,
            )
            write_report(settings.report, report)
        except Exception as error:  # whatever failed, the run must still end
            problem = getattr(error, "strerror", None) or str(error) or type(error).__name__
            code = exit_code(replace(end, report_written=False))
            if report is not None:
                report["exit_code"] = code  # what the metrics then publish
        if report is not None:
            # urllib under the hood: off the loop, and it never raises (failures are logged).
            await asyncio.to_thread(
                metrics.publish,
                report,
                pushgateway=settings.pushgateway,
                textfile=settings.metrics_textfile,
            )
        counts = _counts(runs) if report is None else report["summary"]
        if problem is not None:
            log.error(
                "report_unwritten",
                report=str(settings.report),
                error=problem,
                exit_code=code,
                summary=counts,
            )
            self.stderr.write(
                f"{PROG}: error: the report {settings.report} could not be written ({problem}); "
                f"its summary is in the log event report_unwritten (exit {code})\n"
            )
        log.info(
            "run_finished",
            exit_code=code,
            report=str(settings.report),
            deadline_reached=self.shutdown.deadline_reached,
            **{k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)},
        )
        return code


class _Work:
    """Listing, guarding and deleting, target by target."""

    def __init__(self, run: _Run, *, progress: Progress, line: ProgressLine) -> None:
        self.run = run
        self.settings = run.settings
        self.shutdown = run.shutdown
        self.runs: list[TargetRun] = run.runs or []
        self.progress = progress
        self.line = line
        self.policy = Policy.from_settings(run.settings)
        self.cap = run.settings.max_deletions
        self.dry_run = not run.settings.execute
        # Prompts from several targets' later passes take turns on the one terminal.
        self.prompting = asyncio.Lock()
        self.config = SchedulerConfig(
            concurrency=self.settings.concurrency,
            max_attempts=self.settings.max_attempts,
            requeue_delay=self.settings.requeue_delay.total_seconds(),
            stop_running=self.settings.stop_running,
            grace=self.settings.shutdown_grace.total_seconds(),
        )

    async def all_targets(self) -> None:
        if self.shutdown.is_requested:  # a signal before the run began: send nothing
            log.warning("run_stopped", reason=self.shutdown.reason, during="start")
            return
        absolute = self.cap is not None and self.cap.count is not None
        # A prompt for the whole selection, or a cap on the run's total, needs every listing.
        if absolute or (self.run.confirm is not None and not self.dry_run):
            await self._together()
        else:
            await asyncio.gather(*(self._one_target(r) for r in self.runs))

    async def _together(self) -> None:
        listed = await asyncio.gather(*(self._list(r) for r in self.runs))
        if not all(listed):
            log.warning("run_stopped", reason=self.shutdown.reason, during="listing")
            return
        if self.cap is not None and self.cap.count is not None:
            if not self._run_cap_holds():
                return
            going = list(self.runs)
        else:
            # A percentage stays each target's own, even when the prompt waits for them all.
            going = [r for r in self.runs if self._target_cap_holds(r, r.jobs)]
        if self.dry_run:
            for r in going:
                _would_delete(r.jobs)
            return
        fresh = _jobs(going)
        if fresh and not await self._confirmed(fresh):
            return
        await asyncio.gather(*(self._delete_in_passes(r) for r in going))

    async def _one_target(self, target: TargetRun) -> None:
        if not await self._list(target) or not self._target_cap_holds(target, target.jobs):
            return
        if self.dry_run:
            _would_delete(target.jobs)
            return
        await self._delete_in_passes(target)

    async def _list(self, target: TargetRun) -> bool:
        """One listing pass of one target, judged; False when it did not complete."""
        logs.bind_target(target.label)
        target.pass_start = len(target.jobs)
        target.fresh = 0
        if self.shutdown.is_requested:
            target.listing_state = ListingState.STOPPED
            return False
        target.listing_state = ListingState.LISTING
        # Pages are read after this moment: the age of every judgement this pass makes.
        listed_at = asyncio.get_running_loop().time()
        by_status = self.settings.list_by_status and can_list_by_state(self.policy.states)
        listing: Listing
        try:
            if by_status:
                reading = list_states(
                    target.client, states=self.policy.states, group_id=self.settings.group_id
                )
            else:
                reading = list_all(target.client, group_id=self.settings.group_id)
            # Cut off at a stop: a listing nobody will act on needs no grace.
            listing = await until_stopped(reading, self.shutdown.requested)
        except Stopped:
            target.listing_state = ListingState.STOPPED
            log.warning("listing_stopped", target=target.label, reason=self.shutdown.reason)
            return False
        except OmsError as error:
            self._listing_failed(target, f"listing {target.label} failed: {error}", error.info)
            return False
        except IncompleteListing as error:
            info = ErrorInfo(
                method="GET",
                path=f"/v2/{target.target.project_id}/tasks",
                error_msg=f"listing is incomplete: {error}",
            )
            self._listing_failed(target, f"listing {target.label} is incomplete: {error}", info)
            return False
        target.absorb(listing, policy=self.policy, now=self.run.now())
        for job in target.jobs[target.pass_start :]:
            job.judged_at = listed_at
        target.listing_state = ListingState.COMPLETE
        self.progress.listed = sum(r.listed for r in self.runs)
        self.progress.selected = sum(len(r.jobs) for r in self.runs)
        return True

    def _listing_failed(self, target: TargetRun, message: str, info: ErrorInfo) -> None:
        target.listing_state = ListingState.FAILED
        target.error = info
        log.error("run_aborted", reason=message, target=target.label)
        self.shutdown.on_fatal(FatalStop(target=target.label, message=message, error=info))

    def _run_cap_holds(self) -> bool:
        """An absolute --max-deletions, over the run's total; True when within it."""
        cap = self.cap
        if cap is None:
            return True
        base = sum(r.total for r in self.runs)
        limit = cap.limit(base)
        selected = len(_jobs(self.runs))
        for r in self.runs:
            r.cap = CapCheck(cap=str(cap), applies_to="run", base=base, limit=limit)
        if selected <= limit:
            return True
        self._refuse(
            self.runs,
            f"{selected} tasks selected, more than --max-deletions allows ({limit} of {base} "
            "listed in all targets); nothing was deleted",
        )
        return False

    def _target_cap_holds(self, target: TargetRun, fresh: list[Job]) -> bool:
        """A percentage --max-deletions, of this target's own listing; True when within it."""
        cap = self.cap
        if cap is None:
            return True
        if target.cap is None:  # worked out on the first pass, held for every later one
            base = target.total
            target.cap = CapCheck(
                cap=str(cap), applies_to="target", base=base, limit=cap.limit(base)
            )
        limit = target.cap.limit
        whole_run = target.cap.applies_to == "run"
        selected = len(_jobs(self.runs)) if whole_run else len(target.jobs)
        if selected <= limit:
            return True
        where = "the run" if target.cap.applies_to == "run" else target.label
        for job in fresh:
            job.outcome = Outcome.NOT_ATTEMPTED
        target.cap = replace(target.cap, exceeded=True)
        self.run.safety_abort = True
        log.error(
            "run_aborted" if target.cap.applies_to == "run" else "target_refused",
            target=target.label,
            reason=(
                f"{selected} tasks selected in {where} over {target.passes} listing pass(es), "
                f"more than --max-deletions allows ({limit} of {target.cap.base}); "
                f"{len(fresh)} not deleted"
            ),
        )
        return False

    def _refuse(self, runs: list[TargetRun], reason: str) -> None:
        for r in runs:
            for job in r.jobs:
                job.outcome = Outcome.NOT_ATTEMPTED
            if r.cap is not None:
                r.cap = replace(r.cap, exceeded=True)
        self.run.safety_abort = True
        log.error("run_aborted", reason=reason)

    async def _confirmed(self, fresh: list[Job]) -> bool:
        confirm = self.run.confirm
        if confirm is None:
            return True
        projects = sorted({job.project_id for job in fresh})
        async with self.prompting:
            answer = await _ask(confirm, len(fresh), projects, shutdown=self.shutdown)
        if answer is None:
            log.warning("run_stopped_at_confirmation", reason=self.shutdown.reason)
            return False
        if not answer:
            log.warning("run_declined", selected=len(fresh))
            self.run.safety_abort = True
        return answer

    async def _delete_in_passes(self, target: TargetRun) -> None:
        """Delete the target's selection; while its listing left tasks out of reach and the
        last pass selected something new (the offset cap, an unproven listing), go on."""
        while True:
            await self._delete(target)
            if self.shutdown.is_requested or not (target.out_of_reach and target.fresh):
                return
            log.info(
                "listing_again",
                target=target.label,
                deleted_so_far=sum(job.outcome in DONE_OUTCOMES for job in target.jobs),
            )
            if not await self._list(target):
                return
            fresh = target.jobs[target.pass_start :]
            if not self._target_cap_holds(target, fresh):
                return
            if fresh and not await self._confirmed(fresh):
                return

    async def _delete(self, target: TargetRun) -> None:
        progress, line = self.progress, self.line

        def finished(job: Job) -> None:
            if job.outcome in (Outcome.DELETED, Outcome.ALREADY_GONE):
                progress.deleted += 1
            elif job.outcome is Outcome.FAILED:
                progress.failed += 1
            line.refresh()

        def requeued(job: Job, delay: float) -> None:
            progress.requeued += 1
            line.refresh()

        logs.bind_target(target.label)
        scheduler = Scheduler(
            api=target.client,
            jobs=target.jobs,
            config=self.config,
            shutdown=self.shutdown,
            deadline=self.run.deadline,
            rng=self.run.rng,
            hooks=Hooks(on_finish=finished, on_requeue=requeued),
            target=target.label,
            now=self.run.now,
            judge=Refresher(
                source=target.client,
                jobs=target.jobs,
                policy=self.policy,
                max_staleness=self.settings.max_staleness.total_seconds(),
                # A request may wait this long at the limiter (a slot per worker ahead of it).
                headroom=self.settings.concurrency / self.settings.rate,
                not_selected=target.not_selected,
                now=self.run.now,
                clock=asyncio.get_running_loop().time,
            ),
        )
        await scheduler.run()
        if self.shutdown.fatal is not None and self.shutdown.fatal.target == target.label:
            target.error = self.shutdown.fatal.error


async def _ask(
    confirm: Confirm, count: int, projects: list[str], *, shutdown: Shutdown
) -> bool | None:
    """Ask on the terminal; None when a signal or the deadline came first.

    The prompt blocks on stdin, so it runs in a daemon thread: the loop stays free to
    handle SIGINT/SIGTERM, and an unanswered prompt cannot keep the process alive.
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bool] = loop.create_future()

    def settle(result: bool) -> None:
        if not answer.done():
            answer.set_result(result)

    def ask() -> None:
        try:
            result = confirm(count, projects)
        except (EOFError, OSError):
            result = False
        loop.call_soon_threadsafe(settle, result)

    async def stopped() -> bool:
        return await shutdown.requested.wait()

    threading.Thread(target=ask, name="confirm", daemon=True).start()
    stop = asyncio.create_task(stopped())
    try:
        await asyncio.wait([answer, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    return answer.result() if answer.done() else None


def _log_unreached(runs: list[TargetRun], *, dry_run: bool) -> bool:
    """Warn for each target whose last listing left tasks out of reach; whether there was any."""
    capped = [r for r in runs if r.out_of_reach]
    for run in capped:
        log.warning(
            "listing_incomplete",
            target=run.label,
            reason=run.unreached_reason,
            passes=run.passes,
            unseen=run.unreached,
            dry_run=dry_run,
        )
    return bool(capped)


def _jobs(runs: Sequence[TargetRun]) -> list[Job]:
    return [job for r in runs for job in r.jobs]


def _would_delete(jobs: Sequence[Job]) -> None:
    for job in jobs:
        job.outcome = Outcome.WOULD_DELETE
        _log_would_delete(job)


def _counts(runs: Sequence[TargetRun]) -> dict[str, Any]:
    """The summary's counts without a report (when even building it failed)."""
    jobs = _jobs(runs)
    counts: dict[str, Any] = {
        "listed": sum(r.listed for r in runs),
        "selected": len(jobs),
        "not_selected": sum(sum(r.not_selected.values()) for r in runs),
    }
    for outcome in Outcome:
        counts[outcome.value] = sum(
            (job.outcome or Outcome.NOT_ATTEMPTED) is outcome for job in jobs
        )
    return counts


def _report_settings(
    settings: RunSettings, *, credentials: Credentials, runs: list[TargetRun]
) -> dict[str, object]:
    """The masked settings, plus a note when only some states were listed."""
    shown: dict[str, object] = dict(masked_settings(settings, credentials=credentials))
    filtered = [run for run in runs if run.listed_states is not None]
    if filtered:
        states = sorted({state.label for run in filtered for state in run.listed_states or ()})
        shown["listing"] = {
            "by_status": states,
            "tasks_in_targets": sum(run.total for run in runs),
            "note": "only tasks in these states were listed: listed and not_selected count "
            "those; --max-deletions percentages are of tasks_in_targets",
        }
    return shown


def _record(job: Job) -> TaskRecord:
    task = job.task
    return TaskRecord(
        id=task.id,
        name=task.name,
        project_id=job.project_id,
        status=job.status.label,
        start_time=task.start_time,
        outcome=job.outcome or Outcome.NOT_ATTEMPTED,
        attempts=job.attempts,
        last_error=job.last_error,
        stopped_at=job.stopped_at,
    )


def _log_would_delete(job: Job) -> None:
    log.info(
        "task_outcome",
        task_id=job.task.id,
        task_name=job.task.name,
        project_id=job.project_id,
        outcome=Outcome.WOULD_DELETE.value,
        attempt=0,
        dry_run=True,
    )
