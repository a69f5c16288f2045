"""Listing one target completely before anything is deleted.

Deleting while paging by offset shifts every later page, so the run reads every page
first and deletes afterwards. The listing is checked for completeness: when it holds
fewer distinct tasks than the API said matched when paging began, it is refused
(fail closed). Tasks created while paging only push others onto later pages (seen twice,
kept once), so they do not trip the check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.oms.models import Task, TaskPage, TaskStatus

PAGE_SIZE = 100


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


class IncompleteListing(Exception):
    """The pages read do not add up to the count the API reported."""


@dataclass(frozen=True, slots=True)
class Listing:
    """Every distinct task of a target, in the order first seen."""

    tasks: Sequence[Task]
    pages: int
    reported_count: int


async def list_all(
    client: PageSource, *, group_id: str | None = None, page_size: int = PAGE_SIZE
) -> Listing:
    """Read every page and check that they add up to what OMS reported."""
    seen: dict[int, Task] = {}
    pages = 0
    smallest_count: int | None = None
    async for page in client.iter_pages(page_size=page_size, group_id=group_id):
        pages += 1
        smallest_count = page.count if smallest_count is None else min(smallest_count, page.count)
        for task in page.tasks:
            # Tasks created while we page push older ones onto the next page: keep the first.
            seen.setdefault(task.id, task)
    count = smallest_count or 0
    if len(seen) < count:
        raise IncompleteListing(
            f"listing returned {len(seen)} distinct tasks but the API reported {count}"
        )
    return Listing(tasks=list(seen.values()), pages=pages, reported_count=count)
