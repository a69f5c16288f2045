"""Listing a target completely, refusing an incomplete listing, and telling the offset cap."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from worker.listing import LISTING_ATTEMPTS, is_offset_cap, list_all
from worker.oms.errors import (
    AuthFailed,
    ErrorInfo,
    InvalidRequest,
    MalformedResponse,
    OmsError,
    PermissionDenied,
    ServerError,
)
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
    assert set(ids) >= set(range(1, 151))  # every task present when paging began
    # The count rose between pages: read again, and the second read agreed.
    assert listing.attempts == 2
    assert not listing.unproven


async def test_count_above_what_pages_hold_is_unproven() -> None:
    """Pages that end before the reported count: read again, then unproven, 10 may be unseen."""
    lister = PagedTasks(list(range(1, 51)), inflate_count=10)
    listing = await list_all(lister, page_size=100)
    assert listing.unproven
    assert listing.may_be_unseen == 10
    assert listing.attempts == LISTING_ATTEMPTS
    assert listing.pages == LISTING_ATTEMPTS
    assert [t.id for t in listing.tasks] == list(range(1, 51))


def _refusal(error_type: type[OmsError], status: int, code: str | None) -> OmsError:
    return error_type(
        ErrorInfo(method="GET", path="/v2/p/tasks", http_status=status, error_code=code)
    )


@pytest.mark.parametrize(
    ("error", "offset", "capped"),
    [
        (_refusal(InvalidRequest, 400, "OMS.0064"), 100, True),
        (_refusal(InvalidRequest, 400, "OMS.0064"), 10_100, True),
        (_refusal(InvalidRequest, 400, "OMS.0064"), 1, True),
        # At offset 0 nothing was accepted yet: the filter or a bug, not the window.
        (_refusal(InvalidRequest, 400, "OMS.0064"), 0, False),
        # Another invalid-request code is not about the offset.
        (_refusal(InvalidRequest, 400, "OMS.9999"), 10_100, False),
        (_refusal(InvalidRequest, 404, "OMS.0064"), 10_100, False),
        (_refusal(PermissionDenied, 403, "OMS.0206"), 10_100, False),
        (_refusal(AuthFailed, 401, "APIG.0301"), 10_100, False),
        (_refusal(ServerError, 500, "OMS.0064"), 10_100, False),
        (_refusal(MalformedResponse, 400, None), 10_100, False),
    ],
    ids=[
        "0064-past-first-page",
        "0064-at-documented-cap",
        "0064-after-a-one-task-page",
        "0064-at-offset-0",
        "other-invalid-code",
        "0064-not-400",
        "permission",
        "auth",
        "server-error",
        "malformed",
    ],
)
def test_offset_cap_detection(error: OmsError, offset: int, capped: bool) -> None:
    """Only OMS.0064 (400) for a page past accepted ones is the offset window running out."""
    assert is_offset_cap(error, offset=offset) is capped


class CappedPages(PagedTasks):
    """Pages like OMS with an offset cap: a page past `max_offset` is refused with OMS.0064."""

    def __init__(self, ids: list[int], *, max_offset: int, code: str = "OMS.0064") -> None:
        super().__init__(ids)
        self.max_offset = max_offset
        self.code = code

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
            if offset > self.max_offset:
                raise _refusal(InvalidRequest, 400, self.code)
            tasks = [_task(i) for i in self.ids[offset : offset + page_size]]
            yield TaskPage(tasks=tasks, count=len(self.ids))
            offset += len(tasks)
            if len(tasks) < page_size or offset >= len(self.ids):
                return


async def test_capped_listing_keeps_the_window_and_counts_the_rest() -> None:
    """A listing stopped by the cap holds what the window showed and how many it missed."""
    listing = await list_all(CappedPages(list(range(1, 351)), max_offset=150), page_size=100)
    # Offsets 0 and 100 are accepted, 200 is past the cap.
    assert [t.id for t in listing.tasks] == list(range(1, 201))
    assert listing.capped
    assert listing.unseen == 150
    assert listing.reported_count == listing.total == 350


async def test_listing_within_the_cap_is_not_capped() -> None:
    """A cap the listing never reaches changes nothing."""
    listing = await list_all(CappedPages(list(range(1, 201)), max_offset=150), page_size=100)
    assert len(listing.tasks) == 200
    assert not listing.capped
    assert listing.unseen == 0


async def test_other_refusal_past_the_first_page_still_fails() -> None:
    """Another invalid-request code past the first page is not a cap: the listing fails."""
    lister = CappedPages(list(range(1, 351)), max_offset=150, code="OMS.9999")
    with pytest.raises(InvalidRequest):
        await list_all(lister, page_size=100)


class ShiftingTasks(PagedTasks):
    """Someone else deletes `per_page` tasks from the front after each page, `reads` times."""

    def __init__(self, ids: list[int], *, per_page: int, disturbed_reads: int) -> None:
        super().__init__(ids)
        self.per_page = per_page
        self.disturbed_reads = disturbed_reads
        self.reads = 0

    async def iter_pages(
        self,
        *,
        page_size: int = 100,
        status: TaskStatus | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> AsyncIterator[TaskPage]:
        self.reads += 1
        offset = 0
        while True:
            tasks = [_task(i) for i in self.ids[offset : offset + page_size]]
            yield TaskPage(tasks=tasks, count=len(self.ids))
            if self.reads <= self.disturbed_reads:
                del self.ids[: self.per_page]  # behind us: every later page shifts
            offset += len(tasks)
            if len(tasks) < page_size:
                return


async def test_tasks_shifted_past_the_listing_are_found_by_reading_again() -> None:
    """Deletions behind the offset hide later tasks from one read; the second read finds them."""
    lister = ShiftingTasks(list(range(1, 501)), per_page=7, disturbed_reads=1)
    listing = await list_all(lister, page_size=100)
    assert not listing.unproven
    assert listing.attempts == 2
    # Every task still there, and those gone since the first read too (kept: they were seen).
    assert {t.id for t in listing.tasks} == set(range(1, 501))


@pytest.mark.parametrize(("disturbed_reads", "unproven"), [(1, False), (2, False), (3, True)])
async def test_a_listing_disturbed_on_every_read_is_unproven(
    disturbed_reads: int, unproven: bool
) -> None:
    """Re-reads are bounded: disturbed on all LISTING_ATTEMPTS reads, the listing is unproven."""
    lister = ShiftingTasks(list(range(1, 501)), per_page=7, disturbed_reads=disturbed_reads)
    listing = await list_all(lister, page_size=100)
    assert listing.unproven is unproven
    assert lister.reads == min(disturbed_reads + 1, LISTING_ATTEMPTS)
    if unproven:
        # Five pages, each followed by 7 deletions: the counts fell by 28 before the last page.
        assert listing.may_be_unseen == 28
        assert listing.reported_count == 500 - 2 * 5 * 7  # the last read's largest count
    else:
        assert listing.may_be_unseen == 0


class PagesWithOddEntries:
    """Fixed pages holding malformed entries among sound tasks."""

    def __init__(self, pages: list[TaskPage]) -> None:
        self.pages = pages

    async def iter_pages(
        self,
        *,
        page_size: int = 100,
        status: TaskStatus | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> AsyncIterator[TaskPage]:
        for page in self.pages:
            yield page


async def test_malformed_entries_count_towards_completeness() -> None:
    """An unreadable entry held its place: a page of 2 tasks + 1 malformed matches count 3."""
    page = TaskPage.model_validate(
        {
            "tasks": [{"id": 1, "status": 5}, {"id": 2, "status": 5, "name": None}, 42],
            "count": 3,
        }
    )
    listing = await list_all(PagesWithOddEntries([page]), page_size=100)
    assert not listing.unproven
    assert [t.id for t in listing.tasks] == [1]
    assert [(m.id, "name" in m.problem) for m in listing.malformed] == [(2, True), (None, False)]
