"""Listing a target completely, and refusing an incomplete listing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from worker.listing import IncompleteListing, list_all
from worker.oms.models import Task, TaskPage, TaskStatus


def _task(task_id: int) -> Task:
    return Task.model_validate({"id": task_id, "name": f"t{task_id}", "status": 5})


class PagedTasks:
    """In-memory pages by offset like OMS; `after_first_page` lets a test change the listing."""

    def __init__(self, ids: list[int], *, inflate_count: int = 0) -> None:
        self.ids = ids
        self.inflate_count = inflate_count
        self.pages_served = 0

    def after_first_page(self) -> None:
        """Hook for tests: called once the first page has been served."""

    async def iter_pages(
        self,
        *,
        page_size: int = 100,
        status: TaskStatus | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> AsyncIterator[TaskPage]:
        offset = 0
        while True:
            tasks = [_task(i) for i in self.ids[offset : offset + page_size]]
            yield TaskPage(tasks=tasks, count=len(self.ids) + self.inflate_count)
            self.pages_served += 1
            if self.pages_served == 1:
                self.after_first_page()
            offset += len(tasks)
            if len(tasks) < page_size:
                return


@pytest.mark.parametrize(("total", "pages"), [(0, 1), (1, 1), (100, 2), (101, 2), (1050, 11)])
async def test_reads_every_page(total: int, pages: int) -> None:
    """Every task is read once, and the reported count is kept."""
    lister = PagedTasks(list(range(1, total + 1)))
    listing = await list_all(lister, page_size=100)
    assert [t.id for t in listing.tasks] == list(range(1, total + 1))
    assert listing.pages == pages
    assert listing.reported_count == total


async def test_insertions_while_paging_are_deduplicated() -> None:
    """A task pushed onto the next page by a new one is kept once; none present is lost."""

    class Growing(PagedTasks):
        def after_first_page(self) -> None:
            self.ids.insert(0, 9999)  # newest first: shifts every later page by one

    listing = await list_all(Growing(list(range(1, 151))), page_size=100)
    ids = [t.id for t in listing.tasks]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(range(1, 151))  # every task present when paging began


async def test_count_above_what_pages_hold_is_refused() -> None:
    """Pages that end before the reported count make the listing incomplete (fail closed)."""
    lister = PagedTasks(list(range(1, 51)), inflate_count=10)
    with pytest.raises(IncompleteListing, match="50 distinct tasks but the API reported 60"):
        await list_all(lister, page_size=100)
