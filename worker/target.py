"""One target of a run: its client and rate limiter, and what its listings selected.

A target is listed in one pass, or in several when OMS caps the listing offset (see
runner.py); `TargetRun.absorb` judges each pass's tasks so that a task met again is
neither counted nor selected twice.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from worker.listing import Listing
from worker.oms.auth import Credentials
from worker.oms.client import ClientConfig, OmsClient
from worker.oms.endpoint import resolve_endpoint
from worker.oms.errors import ErrorInfo
from worker.oms.models import MalformedTask, TaskStatus
from worker.oms.retry import RetryPolicy
from worker.policy import Policy, SkipReason, select
from worker.ratelimit import AdaptiveRateLimiter
from worker.report import (
    MALFORMED_SHOWN,
    CapCheck,
    OffsetCap,
    TargetSummary,
    UnprovenListing,
)
from worker.scheduler import Job
from worker.settings import RunSettings, Target
from worker.stopping import StopGate, stop_aware_sleep

log = structlog.get_logger("oms_cleanup.run")


class ListingState(enum.StrEnum):
    """How far the target's listing got, as the report's `listing` says."""

    NOT_STARTED = "not_started"
    LISTING = "listing"
    COMPLETE = "complete"
    # The run stopped (signal, deadline, another target's fatal error) while it was listing.
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(slots=True)
class TargetRun:
    """One target of a run: its client and limiter, and what its listings yielded."""

    target: Target
    label: str
    client: OmsClient
    limiter: AdaptiveRateLimiter
    listed: int = 0
    # Tasks of the target in any state; more than `listed` when only some states were listed.
    total: int = 0
    listed_states: frozenset[TaskStatus] | None = None
    not_selected: Counter[str] = field(default_factory=Counter)
    jobs: list[Job] = field(default_factory=list)
    error: ErrorInfo | None = None
    # Ids judged in any pass: a task met again later is neither counted nor selected twice.
    seen: set[int] = field(default_factory=set)
    passes: int = 0
    # Where this pass's jobs begin in `jobs`, and how many it added.
    pass_start: int = 0
    fresh: int = 0
    # The last listing was cut short by the offset cap, leaving `unseen` tasks beyond it.
    capped: bool = False
    unseen: int = 0
    cap_hit: bool = False
    listing_state: ListingState = ListingState.NOT_STARTED
    # The --max-deletions check that applied to this target (None without the option).
    cap: CapCheck | None = None
    # Task entries OMS sent that could not be read: kept, counted under `malformed`.
    malformed: list[MalformedTask] = field(default_factory=list)
    malformed_ids: set[int] = field(default_factory=set)
    # The last listing could not be shown complete (its pages disagreed with OMS's counts on
    # every read): up to `may_be_unseen` tasks may have been missed. Like the cap, it leaves
    # tasks out of reach: the run lists again after deleting and never calls the target done.
    unproven: bool = False
    may_be_unseen: int = 0
    unproven_hit: bool = False
    listing_attempts: int = 0

    @property
    def out_of_reach(self) -> bool:
        """The last listing did not reach every task (the offset cap, or an unproven one)."""
        return self.capped or self.unproven

    @property
    def unreached(self) -> int:
        """Tasks the last listing may not have reached."""
        return (self.unseen if self.capped else 0) + (self.may_be_unseen if self.unproven else 0)

    @property
    def unreached_reason(self) -> str:
        """Why tasks stayed out of reach, for the log."""
        reasons = [
            *(["offset cap"] if self.capped else []),
            *(["listing not shown complete"] if self.unproven else []),
        ]
        return " and ".join(reasons) or "none"

    def absorb(self, listing: Listing, *, policy: Policy, now: datetime) -> None:
        """Judge one listing pass: count each task once, select or keep it, log the pass."""
        self.passes += 1
        self.capped = listing.capped
        self.cap_hit = self.cap_hit or listing.capped
        self.unseen = listing.unseen
        self.unproven = listing.unproven
        self.unproven_hit = self.unproven_hit or listing.unproven
        self.may_be_unseen = listing.may_be_unseen
        self.listing_attempts = listing.attempts
        if self.passes == 1:
            self.listed_states = listing.states
            # Unfiltered, the distinct tasks seen are the base (as many as reported, or more;
            # a capped listing saw fewer, and the API's count is the base).
            self.total = (
                max(len(listing.tasks) + len(listing.malformed), listing.reported_count)
                if listing.states is None
                else listing.total
            )
        fresh = 0
        for task in listing.tasks:
            if task.id in self.seen or task.id in self.malformed_ids:
                continue
            self.seen.add(task.id)
            self.listed += 1
            reason = select(task, policy=policy, now=now)
            if reason is None:
                self.jobs.append(Job(task=task, project_id=self.target.project_id))
                fresh += 1
            else:
                self.not_selected[str(reason)] += 1
        for entry in listing.malformed:
            # Met again in a later pass: once. Entries without an id cannot be matched, so
            # only the first pass counts those.
            if entry.id is None and self.passes > 1:
                continue
            if entry.id is not None and (entry.id in self.malformed_ids or entry.id in self.seen):
                continue
            if entry.id is not None:
                self.malformed_ids.add(entry.id)
            self.listed += 1
            self.not_selected[str(SkipReason.MALFORMED)] += 1
            self.malformed.append(entry)
            log.warning("task_malformed", task_id=entry.id, problem=entry.problem)
        self.fresh = fresh
        log.info(
            "target_listed",
            listing_pass=self.passes,
            capped=listing.capped,
            unseen=listing.unseen,
            unproven=listing.unproven,
            may_be_unseen=listing.may_be_unseen,
            malformed=len(self.malformed),
            new_selected=fresh,
            listed=self.listed,
            total=self.total,
            listed_states=None
            if listing.states is None
            else sorted(state.label for state in listing.states),
            pages=listing.pages,
            selected=len(self.jobs),
            not_selected=dict(self.not_selected),
        )

    def summary(self, *, dry_run: bool) -> TargetSummary:
        stats = self.client.stats
        return TargetSummary(
            label=self.label,
            project_id=self.target.project_id,
            region=self.target.region,
            endpoint=str(self.client.config.endpoint),
            listed=self.listed,
            not_selected=dict(self.not_selected),
            requests={
                "list": stats.list,
                "show": stats.show,
                "delete": stats.delete,
                "stop": stats.stop,
            },
            error=self.error,
            offset_cap=self._offset_cap(dry_run=dry_run) if self.cap_hit else None,
            # A stopped listing's tasks were never judged: 'listing' says why listed is short.
            listing=str(
                ListingState.STOPPED
                if self.listing_state is ListingState.LISTING
                else self.listing_state
            ),
            max_deletions=self.cap,
            malformed=tuple(self.malformed[:MALFORMED_SHOWN]),
            unproven_listing=self._unproven_listing(dry_run=dry_run) if self.unproven_hit else None,
        )

    def _unproven_listing(self, *, dry_run: bool) -> UnprovenListing:
        if not self.unproven:
            note = (
                "a listing's pages disagreed with the counts OMS reported (tasks were deleted "
                f"or created meanwhile); pass {self.passes} was shown complete"
            )
        elif dry_run:
            note = (
                f"the pages disagreed with the counts OMS reported on each of "
                f"{self.listing_attempts} reads (tasks deleted or created meanwhile): up to "
                f"{self.may_be_unseen} tasks may have been missed; a dry run judged what it saw"
            )
        else:
            note = (
                f"the pages disagreed with the counts OMS reported on each of "
                f"{self.listing_attempts} reads of pass {self.passes} (tasks deleted or created "
                f"meanwhile): the run deleted what it judged, but up to {self.may_be_unseen} "
                "tasks may have been missed, neither judged nor deleted"
            )
        return UnprovenListing(
            passes=self.passes,
            complete=not self.unproven,
            may_be_unseen=self.may_be_unseen if self.unproven else 0,
            reads=self.listing_attempts,
            note=note,
        )

    def _offset_cap(self, *, dry_run: bool) -> OffsetCap:
        if not self.capped:
            note = (
                f"OMS caps the listing offset: the run listed again after each pass's "
                f"deletions, and pass {self.passes} reached every task"
            )
        elif dry_run:
            note = (
                "OMS caps the listing offset: a dry run deletes nothing, so it judged only the "
                f"first window; {self.unseen} more tasks exist that it did not see"
            )
        else:
            note = (
                f"OMS caps the listing offset; after {self.passes} pass(es) the run could not "
                f"list further (nothing new to delete in the window, or the run stopped): "
                f"{self.unseen} tasks were not seen, neither judged nor deleted"
            )
        return OffsetCap(
            passes=self.passes, complete=not self.capped, unseen=self.unseen, note=note
        )


async def open_target(
    stack: AsyncExitStack,
    target: Target,
    *,
    settings: RunSettings,
    credentials: Credentials,
    stopped: asyncio.Event,
) -> TargetRun:
    """Open the target's client (closed with `stack`) behind its own rate limiter.

    Every send and every retry back-off ends at once with `stopping.Stopped` once `stopped`
    is set: after a stop no new request leaves, whatever was waiting for its turn.
    """
    endpoint = resolve_endpoint(
        region=target.region,
        endpoint=target.endpoint,
        allow_insecure_http=settings.allow_insecure_http,
    )
    limiter = AdaptiveRateLimiter(settings.rate)
    config = ClientConfig(
        endpoint=endpoint,
        project_id=target.project_id,
        connect_timeout=settings.connect_timeout.total_seconds(),
        total_timeout=settings.request_timeout.total_seconds(),
        max_connections=settings.concurrency,
        ca_bundle=settings.ca_bundle,
        retry=RetryPolicy(),
    )
    client = await stack.enter_async_context(
        OmsClient(
            config,
            credentials=credentials,
            gate=StopGate(limiter, stopped=stopped),
            sleep=stop_aware_sleep(stopped),
        )
    )
    label = f"{target.region or endpoint.host}/{target.project_id}"
    return TargetRun(target=target, label=label, client=client, limiter=limiter)
