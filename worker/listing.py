"""Listing one target completely before anything is deleted.

Deleting while paging by offset shifts every later page, so the run reads every page
first and deletes afterwards. The listing is checked for completeness: when it holds
fewer distinct tasks than the API said matched when paging began, it is refused
(fail closed). Tasks created while paging only push others onto later pages (seen twice,
kept once), so they do not trip the check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.oms.models import Task, TaskPage, TaskStatus

PAGE_SIZE = 100


class TaskLister(Protocol):
    """The one client call listing needs."""

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
    """Every distinct task of a target, in the order first seen."""

    tasks: Sequence[Task]
    pages: int
    reported_count: int


async def list_all(
    client: TaskLister, *, group_id: str | None = None, page_size: int = PAGE_SIZE
) -> Listing:
    """Read every page (offset += page length, stop on a short page or past `count`)."""
    seen: dict[int, Task] = {}
    offset = 0
    pages = 0
    count = 0
    smallest_count: int | None = None
    while True:
        page = await client.list_tasks(limit=page_size, offset=offset, group_id=group_id)
        pages += 1
        count = page.count
        smallest_count = count if smallest_count is None else min(smallest_count, count)
        for task in page.tasks:
            # Tasks created while we page push older ones onto the next page: keep the first.
            seen.setdefault(task.id, task)
        offset += len(page.tasks)
        if len(page.tasks) < page_size or offset >= count:
            break
    if smallest_count is not None and len(seen) < smallest_count:
        raise IncompleteListing(
            f"listing returned {len(seen)} distinct tasks but the API reported {smallest_count}"
        )
    return Listing(tasks=list(seen.values()), pages=pages, reported_count=count)
