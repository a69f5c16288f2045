"""Listing one target completely before anything is deleted.

Deleting while paging by offset shifts every later page, so the run reads every page
first and deletes afterwards. Someone else may be deleting (or creating) tasks while we page,
though, and then offsets shift under us: a task can slip from the page not yet read onto one
already read, and is never seen. What shows it is the API's own `count`: a listing is shown
complete only when every page reported the same count and the pages held exactly that many
distinct entries. A listing that disagrees with its counts (in either direction) is read
again, up to `LISTING_ATTEMPTS` times; if no attempt agrees, the listing is `unproven`: it
holds every task any attempt saw (each as last seen) and says how many tasks may have been
missed (`may_be_unseen`). What to do with it is the run's decision (see `runner`): it deletes
what it judged, lists again, and never calls such a target done.

A task entry the client cannot read (`models.MalformedTask`) still held its place on the
page: it counts towards completeness and is returned in `malformed`, to be kept and reported.

When only some states can be selected, `list_states` lists just those (the API's `status`
filter, one listing per state) and asks once for the target's total, which `--max-deletions`
percentages are taken of. On accounts holding mostly tasks the policy keeps, that saves most
list requests. A task that changes state between two of those listings can be missed (it is
then kept, the safe side) or seen twice (kept once).

OMS may cap `offset` (the docs say 2147483647 on most pages, 10000 on one). A page refused
for its offset (`is_offset_cap`) ends that listing early instead of failing it: the listing
is then `capped`, holds only the tasks the window showed, and says how many it could not
reach. What to do with a partial listing is the run's decision (see `runner`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from worker.oms.errors import INVALID_PARAMETERS, InvalidRequest, OmsError
from worker.oms.models import MalformedTask, Task, TaskPage, TaskStatus

log = structlog.get_logger("oms_cleanup.listing")

PAGE_SIZE = 100
# Reads of one listing before it is called unproven: the first plus two re-reads. A listing
# disturbed by a one-off cleanup elsewhere agrees on the second read; one disturbed on every
# read stays unproven however often it is read, so more reads only cost requests.
LISTING_ATTEMPTS = 3
# The states the API can filter by (the documented range of `status`).
FILTERABLE_STATES = frozenset(TaskStatus(code) for code in range(1, 8))


class PageSource(Protocol):
    """The one client call listing needs (`OmsClient.iter_pages`)."""

    def iter_pages(
        self,
        *,
        page_size: int = ...,
        status: TaskStatus | None = ...,
        group_id: str | None = ...,
        task_name: str | None = ...,
    ) -> AsyncIterator[TaskPage]: ...


class CountingPageSource(PageSource, Protocol):
    """A page source that also answers single list calls (`OmsClient.list_tasks`)."""

    async def list_tasks(
        self,
        *,
        limit: int = ...,
        offset: int = ...,
        status: TaskStatus | None = ...,
        group_id: str | None = ...,
        task_name: str | None = ...,
    ) -> TaskPage: ...


class IncompleteListing(Exception):
    """The pages read do not add up to the count the API reported (no longer raised by
    `list_all`/`list_states`, which re-read and then mark the listing `unproven`)."""


@dataclass(frozen=True, slots=True)
class Listing:
    """Every distinct task of a target (or of the listed states), in the order first seen."""

    tasks: Sequence[Task]
    pages: int
    reported_count: int
    # Tasks of the target in any state: `reported_count` unless only some states were listed.
    total: int = 0
    # The states listed; None when every task was.
    states: frozenset[TaskStatus] | None = None
    # A page was refused for its offset: the API holds tasks past the window this listing saw.
    capped: bool = False
    # Tasks the API counted that a capped listing did not show (0 when not capped).
    unseen: int = 0
    # Entries the client could not read: kept, never judged.
    malformed: Sequence[MalformedTask] = ()
    # No attempt's pages agreed with the counts OMS reported: tasks may have been missed.
    unproven: bool = False
    # How many tasks an unproven listing may have missed (0 when shown complete).
    may_be_unseen: int = 0
    # Listings read (the first plus re-reads), over every state listed.
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class _Read:
    """One listing (all tasks, or one state) as read, re-reads included."""

    pages: int
    count: int
    attempts: int = 1
    capped: bool = False
    unseen: int = 0
    unproven: bool = False
    may_be_unseen: int = 0


@dataclass(slots=True)
class _Found:
    """What the listings of one target have met so far, each entry as last seen."""

    tasks: dict[int, Task] = field(default_factory=dict)
    malformed: dict[int, MalformedTask] = field(default_factory=dict)
    # Malformed entries without a usable id cannot be matched between reads: the last read's.
    anonymous: list[MalformedTask] = field(default_factory=list)

    def all_malformed(self) -> list[MalformedTask]:
        return [*self.malformed.values(), *self.anonymous]


@dataclass(frozen=True, slots=True)
class _Pass:
    """One read of one listing: what it held and what the pages said."""

    pages: int
    counts: tuple[int, ...]
    found: _Found
    capped: bool

    @property
    def entries(self) -> int:
        """Distinct entries held: tasks, malformed ones by id, and those without an id."""
        f = self.found
        ids = f.tasks.keys() | f.malformed.keys()
        return len(ids) + len(f.anonymous)

    @property
    def count(self) -> int:
        return min(self.counts, default=0)

    def agrees(self) -> bool:
        """Every page said the same count, and the pages held exactly that many entries."""
        return len(set(self.counts)) <= 1 and self.entries == self.count

    def may_be_unseen(self) -> int:
        """Tasks this read may have missed: each change of the count can shift one past us."""
        if not self.counts:
            return 0
        most = max(self.counts)
        return max(0, most - self.entries, most - min(self.counts))


def is_offset_cap(error: OmsError, *, offset: int) -> bool:
    """Whether a refused page means "offset window exhausted" rather than "cannot list".

    Every page of one listing is the same request but for `offset` (same limit, filter and
    credentials), and the offset only moves past pages the API accepted. So OMS.0064 ("invalid
    request parameters") for a page at offset > 0 can only be about the offset, whatever the
    cap's value (the docs disagree on it; no threshold is assumed). At offset 0 the same answer
    is about the filter or a bug, and every other error means what it always meant: both stay
    fatal.
    """
    return (
        offset > 0
        and isinstance(error, InvalidRequest)
        and error.http_status == 400
        and error.error_code == INVALID_PARAMETERS
    )


def can_list_by_state(states: Collection[TaskStatus]) -> bool:
    """Whether the API can list exactly these states (it cannot filter by 0 or unknown)."""
    return bool(states) and all(state in FILTERABLE_STATES for state in states)


async def list_all(
    client: PageSource,
    *,
    group_id: str | None = None,
    page_size: int = PAGE_SIZE,
    attempts: int = LISTING_ATTEMPTS,
) -> Listing:
    """Read every page; read again while the pages disagree with what OMS reported."""
    found = _Found()
    read = await _read(
        client, found, status=None, group_id=group_id, page_size=page_size, attempts=attempts
    )
    return Listing(
        tasks=list(found.tasks.values()),
        pages=read.pages,
        reported_count=read.count,
        total=read.count,
        capped=read.capped,
        unseen=read.unseen,
        malformed=found.all_malformed(),
        unproven=read.unproven,
        may_be_unseen=read.may_be_unseen,
        attempts=read.attempts,
    )


async def list_states(
    client: CountingPageSource,
    *,
    states: Collection[TaskStatus],
    group_id: str | None = None,
    page_size: int = PAGE_SIZE,
    attempts: int = LISTING_ATTEMPTS,
) -> Listing:
    """Only the tasks in `states`, one filtered listing each, plus the target's total."""
    if not can_list_by_state(states):
        raise ValueError("the API filters by status codes 1-7 only")
    # One task is enough: the answer's `count` is the total matching (here: any state).
    total = (await client.list_tasks(limit=1, group_id=group_id)).count
    pages = 1
    found = _Found()
    reported = 0
    reads: list[_Read] = []
    for state in sorted(states):
        read = await _read(
            client,
            found,
            status=state,
            group_id=group_id,
            page_size=page_size,
            attempts=attempts,
        )
        reads.append(read)
        pages += read.pages
        reported += read.count
    return Listing(
        tasks=list(found.tasks.values()),
        pages=pages,
        reported_count=reported,
        total=total,
        states=frozenset(states),
        capped=any(read.capped for read in reads),
        unseen=sum(read.unseen for read in reads),
        malformed=found.all_malformed(),
        unproven=any(read.unproven for read in reads),
        may_be_unseen=sum(read.may_be_unseen for read in reads),
        attempts=sum(read.attempts for read in reads),
    )


async def _read(
    client: PageSource,
    found: _Found,
    *,
    status: TaskStatus | None,
    group_id: str | None,
    page_size: int,
    attempts: int,
) -> _Read:
    """Add one listing's entries to `found`, re-reading (bounded) until its pages agree."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    pages = 0
    what = "tasks" if status is None else f"{status.label} tasks"
    for attempt in range(1, attempts + 1):
        read = await _read_once(client, status=status, group_id=group_id, page_size=page_size)
        pages += read.pages
        # A later read's view of a task replaces an earlier one's (the order first seen stays);
        # a task only an earlier read met is kept too: it may have slipped past this one.
        found.tasks.update(read.found.tasks)
        found.malformed.update(read.found.malformed)
        if read.found.anonymous or attempt == 1:
            found.anonymous = list(read.found.anonymous)
        if read.capped:
            count = read.count
            return _Read(
                pages=pages,
                count=count,
                attempts=attempt,
                capped=True,
                unseen=max(0, count - read.entries),
            )
        if read.agrees():
            return _Read(pages=pages, count=read.count, attempts=attempt)
        log.warning(
            "listing_disagrees_with_counts",
            listing=what,
            attempt=attempt,
            of=attempts,
            entries=read.entries,
            smallest_count=min(read.counts, default=0),
            largest_count=max(read.counts, default=0),
            may_be_unseen=read.may_be_unseen(),
        )
    return _Read(
        pages=pages,
        count=max(read.counts, default=0),
        attempts=attempts,
        unproven=True,
        may_be_unseen=read.may_be_unseen(),
    )


async def _read_once(
    client: PageSource, *, status: TaskStatus | None, group_id: str | None, page_size: int
) -> _Pass:
    """Read one listing once. An offset-cap refusal ends it early (`capped`); any other
    error is raised."""
    pages = 0
    # Where the next page starts: the client pages with offset += entries on the page.
    offset = 0
    counts: list[int] = []
    found = _Found()
    capped = False
    try:
        async for page in client.iter_pages(page_size=page_size, status=status, group_id=group_id):
            pages += 1
            offset += page.size
            counts.append(page.count)
            for task in page.tasks:
                # A task pushed onto the next page by a new one is met twice: keep the first.
                found.tasks.setdefault(task.id, task)
            for entry in page.malformed:
                if entry.id is None:
                    found.anonymous.append(entry)
                else:
                    found.malformed.setdefault(entry.id, entry)
    except OmsError as error:
        if not is_offset_cap(error, offset=offset):
            raise
        capped = True
    return _Pass(pages=pages, counts=tuple(counts), found=found, capped=capped)
