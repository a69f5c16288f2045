"""Listing a target completely, and refusing an incomplete listing."""

from __future__ import annotations

import pytest

from worker.listing import IncompleteListing, list_all
from worker.oms.models import Task, TaskPage, TaskStatus


def _task(task_id: int) -> Task:
    return Task.model_validate({"id": task_id, "name": f"t{task_id}", "status": 5})


class PagedTasks:
    """An in-memory lister that pages by offset like OMS."""

    def __init__(self, ids: list[int], *, inflate_count: int = 0) -> None:
        self.ids = ids
        self.inflate_count = inflate_count
        self.calls: list[tuple[int, int]] = []

    async def list_tasks(
        self,
        *,
        limit: int = 10,
        offset: int = 0,
        status: TaskStatus | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> TaskPage:
        self.calls.append((limit, offset))
        page = [_task(i) for i in self.ids[offset : offset + limit]]
        return TaskPage(tasks=page, count=len(self.ids) + self.inflate_count)


@pytest.mark.parametrize(("total", "pages"), [(0, 1), (1, 1), (100, 1), (101, 2), (1050, 11)])
async def test_reads_every_page(total: int, pages: int) -> None:
    """Every task is read once, in as many pages as the count needs."""
    lister = PagedTasks(list(range(1, total + 1)))
    listing = await list_all(lister, page_size=100)
    assert [t.id for t in listing.tasks] == list(range(1, total + 1))
    assert listing.pages == pages
    assert listing.reported_count == total


async def test_insertions_while_paging_are_deduplicated() -> None:
    """A task pushed onto the next page by a new one is kept once."""

    class Growing(PagedTasks):
        async def list_tasks(
            self,
            *,
            limit: int = 10,
            offset: int = 0,
            status: TaskStatus | None = None,
            group_id: str | None = None,
            task_name: str | None = None,
        ) -> TaskPage:
            page = await super().list_tasks(limit=limit, offset=offset)
            if len(self.calls) == 1:
                self.ids.insert(0, 9999)  # newest first: shifts every later page by one
            return page

    lister = Growing(list(range(1, 151)))
    listing = await list_all(lister, page_size=100)
    ids = [t.id for t in listing.tasks]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(range(1, 151))  # every task present when paging began


async def test_count_above_what_pages_hold_is_refused() -> None:
    """Pages that end before the reported count make the listing incomplete (fail closed)."""
    lister = PagedTasks(list(range(1, 51)), inflate_count=10)
    with pytest.raises(IncompleteListing, match="50 distinct tasks but the API reported 60"):
        await list_all(lister, page_size=100)
