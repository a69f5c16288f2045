"""Listing one target completely before anything is deleted.

Deleting while paging by offset shifts every later page, so the run reads every page
first and deletes afterwards. The listing is checked for completeness: when it holds
fewer distinct tasks than the API said matched when paging began, it is refused
(fail closed). Tasks created while paging only push others onto later pages (seen twice,
kept once), so they do not trip the check.

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
from dataclasses import dataclass
from typing import Protocol

from worker.oms.errors import INVALID_PARAMETERS, InvalidRequest, OmsError
from worker.oms.models import Task, TaskPage, TaskStatus

PAGE_SIZE = 100
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
    """The pages read do not add up to the count the API reported."""


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


@dataclass(frozen=True, slots=True)
class _Read:
    """One listing (all tasks, or one state) as read."""

    pages: int
    count: int
    capped: bool = False
    unseen: int = 0


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
    client: PageSource, *, group_id: str | None = None, page_size: int = PAGE_SIZE
) -> Listing:
    """Read every page and check that they add up to what OMS reported."""
    seen: dict[int, Task] = {}
    read = await _read(client, seen, status=None, group_id=group_id, page_size=page_size)
    return Listing(
        tasks=list(seen.values()),
        pages=read.pages,
        reported_count=read.count,
        total=read.count,
        capped=read.capped,
        unseen=read.unseen,
    )


async def list_states(
    client: CountingPageSource,
    *,
    states: Collection[TaskStatus],
    group_id: str | None = None,
    page_size: int = PAGE_SIZE,
) -> Listing:
    """Only the tasks in `states`, one filtered listing each, plus the target's total."""
    if not can_list_by_state(states):
        raise ValueError("the API filters by status codes 1-7 only")
    # One task is enough: the answer's `count` is the total matching (here: any state).
    total = (await client.list_tasks(limit=1, group_id=group_id)).count
    pages = 1
    seen: dict[int, Task] = {}
    reported = 0
    reads: list[_Read] = []
    for state in sorted(states):
        read = await _read(client, seen, status=state, group_id=group_id, page_size=page_size)
        reads.append(read)
        pages += read.pages
        reported += read.count
    return Listing(
        tasks=list(seen.values()),
        pages=pages,
        reported_count=reported,
        total=total,
        states=frozenset(states),
        capped=any(read.capped for read in reads),
        unseen=sum(read.unseen for read in reads),
    )


async def _read(
    client: PageSource,
    seen: dict[int, Task],
    *,
    status: TaskStatus | None,
    group_id: str | None,
    page_size: int,
) -> _Read:
    """Add one listing's tasks to `seen`. Refuses an incomplete one, unless the cap ended it."""
    pages = 0
    # Where the next page starts: the client pages with offset += len(tasks).
    offset = 0
    smallest_count: int | None = None
    found: set[int] = set()
    try:
        async for page in client.iter_pages(page_size=page_size, status=status, group_id=group_id):
            pages += 1
            offset += len(page.tasks)
            smallest_count = (
                page.count if smallest_count is None else min(smallest_count, page.count)
            )
            for task in page.tasks:
                found.add(task.id)
                # Tasks created while we page push older ones onto the next page: keep the first.
                seen.setdefault(task.id, task)
    except OmsError as error:
        if not is_offset_cap(error, offset=offset):
            raise
        count = smallest_count or 0
        return _Read(pages=pages, count=count, capped=True, unseen=max(0, count - len(found)))
    count = smallest_count or 0
    if len(found) < count:
        what = "tasks" if status is None else f"{status.label} tasks"
        raise IncompleteListing(
            f"listing returned {len(found)} distinct {what} but the API reported {count}"
        )
    return _Read(pages=pages, count=count)
