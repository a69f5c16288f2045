"""One cleanup run end to end: list every target, select, guard, delete, report, exit code.

The order is the safety argument: every target is listed completely before anything is
deleted (a listing that cannot complete aborts the run), the selection is checked against
`--max-deletions` before the first delete, and nothing is deleted without `--execute`.
The report is written on every path out of here, interruptions included.

One exception to "completely": OMS may cap the listing offset (see `listing.is_offset_cap`).
A capped listing holds a consistent window of tasks, each judged as usual. The run deletes
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
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, nullcontext
from datetime import UTC, datetime

import structlog

from worker import logs, metrics
from worker.exit_codes import EXIT_FATAL, EXIT_OK, EXIT_SAFETY_ABORT, EXIT_TASKS_LEFT
from worker.listing import IncompleteListing, Listing, can_list_by_state, list_all, list_states
from worker.oms.auth import Credentials
from worker.oms.errors import OmsError
from worker.outcomes import Outcome
from worker.policy import Policy
from worker.progress import Progress, ProgressLine
from worker.report import TaskRecord, build_report, write_report
from worker.scheduler import Hooks, Job, Scheduler, SchedulerConfig
from worker.settings import RunSettings, masked_settings
from worker.shutdown import DEADLINE, Shutdown, route_process_signals, signals_handled
from worker.target import TargetRun, open_target

log = structlog.get_logger("oms_cleanup.run")


Confirm = Callable[[int, Sequence[str]], bool]


class _Abort(Exception):
    """Ends the run before any delete, with an exit code and a one-line reason."""

    def __init__(self, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


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
        return await _run(
            settings=settings,
            credentials=credentials,
            confirm=confirm,
            shutdown=shutdown,
            now=now,
            rng=rng,
        )


async def _run(
    *,
    settings: RunSettings,
    credentials: Credentials,
    confirm: Confirm | None,
    shutdown: Shutdown,
    now: Callable[[], datetime],
    rng: random.Random | None,
) -> int:
    run_id = uuid.uuid4().hex
    started_at = now()
    logs.bind_run(run_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.deadline.total_seconds()
    dry_run = not settings.execute
    progress = Progress()
    line = ProgressLine(progress)
    runs: list[TargetRun] = []
    deadline_reached = False
    exit_code = EXIT_FATAL
    log.info(
        "run_started",
        dry_run=dry_run,
        targets=[t.project_id for t in settings.targets],
    )
    if settings.dropped_targets:
        # Flags replaced the config file's [[targets]]: legal, but easy to do by accident.
        log.warning("targets_replaced", dropped=masked_settings(settings)["dropped_targets"])
    try:
        async with AsyncExitStack() as stack:
            runs = [
                await open_target(stack, target, settings=settings, credentials=credentials)
                for target in settings.targets
            ]
            timer = loop.call_at(deadline, shutdown.request, DEADLINE)
            stack.callback(timer.cancel)
            stack.callback(line.close)
            try:
                await _list_and_select(
                    runs,
                    settings=settings,
                    now=now(),
                    shutdown=shutdown,
                )
                progress.listed = sum(r.listed for r in runs)
                progress.selected = sum(len(r.jobs) for r in runs)
                limit = _guard(runs, settings=settings)
            except _Abort as abort:
                log.error("run_aborted", reason=str(abort), exit_code=abort.exit_code)
                exit_code = shutdown.signal_exit_code or abort.exit_code
                return exit_code
            if dry_run:
                for job in (job for r in runs for job in r.jobs):
                    job.outcome = Outcome.WOULD_DELETE
                    _log_would_delete(job)
                # More tasks exist than the preview judged: not a clean "that is everything".
                exit_code = EXIT_TASKS_LEFT if _log_unreached(runs, dry_run=True) else EXIT_OK
                return exit_code
            exit_code = await _delete_in_passes(
                runs,
                settings=settings,
                confirm=confirm,
                shutdown=shutdown,
                now=now,
                limit=limit,
                delete=lambda: _delete(
                    runs,
                    settings=settings,
                    shutdown=shutdown,
                    deadline=deadline,
                    rng=rng,
                    progress=progress,
                    line=line,
                ),
                progress=progress,
            )
            deadline_reached = shutdown.reason == DEADLINE
            return exit_code
    finally:
        finished_at = now()
        report = build_report(
            run_id=run_id,
            started_at=started_at,
            finished_at=finished_at,
            dry_run=dry_run,
            exit_code=exit_code,
            interrupted=shutdown.signal,
            settings=_report_settings(settings, credentials=credentials, runs=runs),
            targets=[r.summary(dry_run=dry_run) for r in runs],
            records=[_record(job) for r in runs for job in r.jobs],
            deadline_reached=deadline_reached,
        )
        write_report(settings.report, report)
        # urllib under the hood: off the loop, and it never raises (failures are logged).
        await asyncio.to_thread(
            metrics.publish,
            report,
            pushgateway=settings.pushgateway,
            textfile=settings.metrics_textfile,
        )
        log.info(
            "run_finished",
            exit_code=exit_code,
            report=str(settings.report),
            **{k: v for k, v in report["summary"].items() if isinstance(v, int)},
        )


async def _list_and_select(
    runs: list[TargetRun],
    *,
    settings: RunSettings,
    now: datetime,
    shutdown: Shutdown,
) -> None:
    """List every target (concurrently) and select; any failure aborts before deleting.

    Called again for later passes with the targets still capped: only tasks no earlier pass
    judged are counted and selected, and the targets' `--max-deletions` base stays the first's.
    """
    policy = Policy.from_settings(settings)
    # Tasks in other states can never be selected, so they need not be listed.
    by_status = settings.list_by_status and can_list_by_state(policy.states)

    async def one(run: TargetRun) -> None:
        logs.bind_target(run.label)
        listing: Listing
        try:
            if by_status:
                listing = await list_states(
                    run.client, states=policy.states, group_id=settings.group_id
                )
            else:
                listing = await list_all(run.client, group_id=settings.group_id)
        except OmsError as error:
            run.error = error.info
            raise _Abort(EXIT_FATAL, f"listing {run.label} failed: {error}") from error
        except IncompleteListing as error:
            raise _Abort(EXIT_FATAL, f"listing {run.label} is incomplete: {error}") from error
        run.absorb(listing, policy=policy, now=now)

    if shutdown.is_requested:  # a signal before the run began: send nothing
        raise _Abort(EXIT_FATAL, f"stopped ({shutdown.reason}) before listing began")

    for run in runs:
        run.pass_start = len(run.jobs)
        run.fresh = 0

    async def every_target() -> None:
        listings = [asyncio.create_task(one(run)) for run in runs]
        try:
            await asyncio.gather(*listings)
        finally:
            # gather leaves the siblings of a failed listing running: they would go on
            # paging (and retrying on closed sessions) after the run has ended.
            for listing in listings:
                listing.cancel()
            await asyncio.gather(*listings, return_exceptions=True)

    async def stop_requested() -> None:
        await shutdown.requested.wait()

    listing = asyncio.create_task(every_target())
    stop = asyncio.create_task(stop_requested())
    try:
        done, _ = await asyncio.wait([listing, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if listing not in done:
        listing.cancel()
        await asyncio.gather(listing, return_exceptions=True)
        for run in runs:
            del run.jobs[run.pass_start :]
        raise _Abort(EXIT_FATAL, f"stopped ({shutdown.reason}) before every target was listed")
    listing.result()


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


def _guard(runs: list[TargetRun], *, settings: RunSettings) -> int | None:
    """`--max-deletions`: refuse the whole run when more are selected than allowed.

    Returns the limit (None without `--max-deletions`), which later passes are held to.
    """
    if settings.max_deletions is None:
        return None
    listed = sum(r.total for r in runs)
    selected = sum(len(r.jobs) for r in runs)
    limit = settings.max_deletions.limit(listed)
    if selected > limit:
        for run in runs:
            for job in run.jobs:
                job.outcome = Outcome.NOT_ATTEMPTED
        raise _Abort(
            EXIT_SAFETY_ABORT,
            f"{selected} tasks selected, more than --max-deletions allows ({limit} of {listed} "
            "listed); nothing was deleted",
        )
    return limit


async def _delete_in_passes(
    runs: list[TargetRun],
    *,
    settings: RunSettings,
    confirm: Confirm | None,
    shutdown: Shutdown,
    now: Callable[[], datetime],
    limit: int | None,
    delete: Callable[[], Awaitable[OmsError | None]],
    progress: Progress,
) -> int:
    """Delete the selection; while a capped listing's window moved, list again and go on.

    Returns the exit code. Each pass asks for confirmation of its own selection, and a pass
    whose selection would take the run's total past `limit` deletes nothing (exit 3).
    """
    fresh = [job for r in runs for job in r.jobs]
    while True:
        if fresh and confirm is not None:
            projects = sorted({job.project_id for job in fresh})
            answer = await _ask(confirm, len(fresh), projects, shutdown=shutdown)
            if answer is None:
                log.warning("run_stopped_at_confirmation", reason=shutdown.reason)
                return shutdown.signal_exit_code or EXIT_TASKS_LEFT
            if not answer:
                log.warning("run_declined", selected=len(fresh))
                return EXIT_SAFETY_ABORT
        fatal = await delete()
        jobs = [job for r in runs for job in r.jobs]
        again = [r for r in runs if r.capped and r.fresh]
        if fatal is not None or shutdown.is_requested or not again:
            unreached = _log_unreached(runs, dry_run=False)
            return _exit_code(jobs, shutdown=shutdown, fatal=fatal, unreached=unreached)
        log.info("listing_again", targets=[r.label for r in again], deleted_so_far=_done(jobs))
        try:
            await _list_and_select(
                again,
                settings=settings,
                now=now(),
                shutdown=shutdown,
            )
        except _Abort as abort:
            log.error("run_aborted", reason=str(abort), exit_code=abort.exit_code)
            _log_unreached(runs, dry_run=False)
            if shutdown.is_requested:  # a signal or the deadline, not a broken listing
                return _exit_code(jobs, shutdown=shutdown, fatal=None, unreached=True)
            return abort.exit_code
        fresh = [job for r in again for job in r.jobs[r.pass_start :]]
        progress.listed = sum(r.listed for r in runs)
        selected = sum(len(r.jobs) for r in runs)
        progress.selected = selected
        if limit is not None and selected > limit:
            for job in fresh:
                job.outcome = Outcome.NOT_ATTEMPTED
            reason = (
                f"{selected} tasks selected over {max(r.passes for r in runs)} listing passes, "
                f"more than --max-deletions allows ({limit}); this pass's {len(fresh)} were not "
                f"deleted ({_done(jobs)} deleted in earlier passes)"
            )
            log.error("run_aborted", reason=reason, exit_code=EXIT_SAFETY_ABORT)
            _log_unreached(runs, dry_run=False)
            return EXIT_SAFETY_ABORT


def _done(jobs: list[Job]) -> int:
    return sum(job.outcome in (Outcome.DELETED, Outcome.ALREADY_GONE) for job in jobs)


def _log_unreached(runs: list[TargetRun], *, dry_run: bool) -> bool:
    """Warn for each target whose last listing was capped; whether there was any."""
    capped = [r for r in runs if r.capped]
    for run in capped:
        log.warning(
            "listing_incomplete",
            target=run.label,
            reason="offset cap",
            passes=run.passes,
            unseen=run.unseen,
            dry_run=dry_run,
        )
    return bool(capped)


async def _delete(
    runs: list[TargetRun],
    *,
    settings: RunSettings,
    shutdown: Shutdown,
    deadline: float,
    rng: random.Random | None,
    progress: Progress,
    line: ProgressLine,
) -> OmsError | None:
    """One scheduler per target, all at once; returns the fatal error that stopped them."""
    config = SchedulerConfig(
        concurrency=settings.concurrency,
        max_attempts=settings.max_attempts,
        requeue_delay=settings.requeue_delay.total_seconds(),
        stop_running=settings.stop_running,
        grace=settings.shutdown_grace.total_seconds(),
    )

    def finished(job: Job) -> None:
        if job.outcome in (Outcome.DELETED, Outcome.ALREADY_GONE):
            progress.deleted += 1
        elif job.outcome is Outcome.FAILED:
            progress.failed += 1
        line.refresh()

    def requeued(job: Job, delay: float) -> None:
        progress.requeued += 1
        line.refresh()

    schedulers = [
        Scheduler(
            api=run.client,
            jobs=run.jobs,
            config=config,
            shutdown=shutdown,
            deadline=deadline,
            rng=rng,
            hooks=Hooks(on_finish=finished, on_requeue=requeued),
        )
        for run in runs
    ]

    async def one(run: TargetRun, scheduler: Scheduler) -> None:
        logs.bind_target(run.label)
        await scheduler.run()

    await asyncio.gather(*(one(r, s) for r, s in zip(runs, schedulers, strict=True)))
    return next((s.fatal for s in schedulers if s.fatal is not None), None)


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


def _exit_code(
    jobs: list[Job], *, shutdown: Shutdown, fatal: OmsError | None, unreached: bool = False
) -> int:
    if shutdown.signal_exit_code is not None:
        return shutdown.signal_exit_code
    if fatal is not None:
        return EXIT_FATAL
    if unreached:  # tasks beyond the offset cap were never seen: some may be eligible
        return EXIT_TASKS_LEFT
    done = {Outcome.DELETED, Outcome.ALREADY_GONE}
    return EXIT_OK if all(job.outcome in done for job in jobs) else EXIT_TASKS_LEFT


def _record(job: Job) -> TaskRecord:
    task = job.task
    return TaskRecord(
        id=task.id,
        name=task.name,
        project_id=job.project_id,
        status=task.status.label,
        start_time=task.start_time,
        outcome=job.outcome or Outcome.NOT_ATTEMPTED,
        attempts=job.attempts,
        last_error=job.last_error,
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
