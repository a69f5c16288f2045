"""Runs against a simulator that caps the listing offset: passes, honest reports, exit codes.

The simulator refuses a page past `max_offset` with 400 OMS.0064, as one page of the OMS
docs says the real API does at 10,000. With `max_offset=1000` and pages of 100, one listing
sees 1,100 tasks; the population is 2,500, so every run here needs more than one window.
Expected selections come from the simulator's raw tasks (`expectations.eligible`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SimulatorFactory
from expectations import eligible, validated

from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_PROJECT_ID,
)
from worker.simulator.server import SimulatorHandle
from worker.simulator.state import FAILED

TASKS = 2_500
MAX_OFFSET = 1_000
# Pages at offsets 0, 100, ..., 1000 are accepted: eleven pages of 100.
WINDOW = MAX_OFFSET + 100


@dataclass(frozen=True, slots=True)
class Capped:
    """One run's exit code, validated report and the simulator's record."""

    exit_code: int
    report: dict[str, Any]
    truth: dict[str, Any]

    def ids(self, *outcomes: str) -> set[int]:
        """Ids of the report's tasks with one of these outcomes."""
        return {t["id"] for t in self.report["tasks"] if t["outcome"] in outcomes}

    @property
    def deleted_by_simulator(self) -> set[int]:
        """Ids of every delete the simulator applied."""
        return {d["task_id"] for d in self.truth["deletions"]}

    @property
    def target(self) -> dict[str, Any]:
        """The report's only target block."""
        (block,) = self.report["summary"]["targets"]
        assert isinstance(block, dict)
        return block


@pytest.fixture
def now() -> datetime:
    """The moment selection is judged at."""
    return datetime.now(UTC)


async def _capped_simulator(make_simulator: SimulatorFactory) -> SimulatorHandle:
    return await make_simulator(tasks_per_project=TASKS, max_offset=MAX_OFFSET)


def _tasks(sim: SimulatorHandle) -> dict[int, dict[str, Any]]:
    """Copies of the simulator's tasks now, by id."""
    return {i: dict(t) for i, t in sim.state.projects[DEFAULT_PROJECT_ID].tasks.items()}


def _first_window(sim: SimulatorHandle) -> set[int]:
    """Ids of the tasks a listing from offset 0 reaches now."""
    return {key[1] for key in sim.state.projects[DEFAULT_PROJECT_ID].order[:WINDOW]}


async def _run(sim: SimulatorHandle, tmp_path: Path, *, now: datetime, **flags: Any) -> Capped:
    report = tmp_path / "report.json"
    settings = load_settings(
        {
            "endpoint": sim.url,
            "project_id": DEFAULT_PROJECT_ID,
            "report": str(report),
            "rate": "2000",
            "concurrency": "16",
            **flags,
        },
        environ={},
    )
    code = await run_async(
        settings=settings,
        credentials=DEFAULT_CLIENT_CREDENTIALS,
        now=lambda: now,
        handle_signals=False,
    )
    return Capped(exit_code=code, report=validated(report), truth=sim.state.snapshot())


async def test_passes_delete_every_eligible_task(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """Deleting frees the window: later passes reach every task and delete all eligible ones."""
    sim = await _capped_simulator(make_simulator)
    tasks = _tasks(sim)
    # Every finished task is eligible, so what stays is too few to fill a window.
    expected = eligible(tasks, now=now, older_than=timedelta(0))
    assert len(tasks) - len(expected) < WINDOW, "population leaves no room for passes"
    assert len(expected) > WINDOW

    run = await _run(sim, tmp_path, now=now, older_than="0s", execute=True)

    assert run.exit_code == 0
    assert run.ids("deleted") == expected == run.deleted_by_simulator
    assert run.report["summary"]["selected"] == len(expected)
    assert run.report["summary"]["listed"] == TASKS  # each task counted once over the passes
    cap = run.target["offset_cap"]
    assert cap["complete"] is True
    assert cap["unseen"] == 0
    assert cap["passes"] >= 2


async def test_kept_tasks_filling_the_window_end_the_passes(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """When kept tasks fill the window, the run stops, says how many it never saw, exits 1."""
    sim = await _capped_simulator(make_simulator)
    tasks = _tasks(sim)
    failed = eligible(tasks, now=now, older_than=timedelta(0), codes=frozenset({FAILED}))
    assert len(tasks) - len(failed) > WINDOW, "the kept tasks must be able to fill a window"

    run = await _run(sim, tmp_path, now=now, older_than="0s", states="failed", execute=True)

    assert run.exit_code == 1
    deleted = run.ids("deleted")
    assert deleted == run.deleted_by_simulator
    assert deleted <= failed
    assert {t["outcome"] for t in run.report["tasks"]} == {"deleted"}
    left = _tasks(sim)
    # The final window holds no failed task (nothing new to delete), the rest was never seen.
    assert not {i for i in _first_window(sim) if left[i]["status"] == FAILED}
    cap = run.target["offset_cap"]
    assert cap["complete"] is False
    assert cap["unseen"] == len(left) - WINDOW > 0
    assert str(cap["unseen"]) in cap["note"]
    assert run.report["summary"]["listed"] == len(deleted) + WINDOW


async def test_nothing_selected_in_the_first_window_is_one_pass(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """A first window with nothing to delete cannot move: one pass, nothing deleted, exit 1."""
    sim = await _capped_simulator(make_simulator)

    run = await _run(sim, tmp_path, now=now, older_than="3650d", execute=True)

    assert run.exit_code == 1
    assert run.truth["deletions"] == []
    assert run.truth["requests"]["list"] == WINDOW // 100 + 1  # eleven pages and the refused one
    assert run.target["offset_cap"] == {
        "passes": 1,
        "complete": False,
        "unseen": TASKS - WINDOW,
        "note": run.target["offset_cap"]["note"],
    }


async def test_dry_run_reports_the_first_window_and_the_cap(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """A dry run judges the first window only, deletes nothing and exits 1 naming the unseen."""
    sim = await _capped_simulator(make_simulator)
    window = _first_window(sim)
    expected = eligible(_tasks(sim), now=now, older_than=timedelta(0))

    run = await _run(sim, tmp_path, now=now, older_than="0s")

    assert run.exit_code == 1
    assert run.truth["requests"]["delete"] == 0
    assert run.ids("would_delete") == expected & window
    assert run.report["summary"]["listed"] == WINDOW
    cap = run.target["offset_cap"]
    assert cap["complete"] is False
    assert cap["passes"] == 1
    assert cap["unseen"] == TASKS - WINDOW
    assert "dry run" in cap["note"]


async def test_max_deletions_holds_across_passes(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """A later pass that would take the total past --max-deletions deletes nothing: exit 3."""
    sim = await _capped_simulator(make_simulator)
    expected = eligible(_tasks(sim), now=now, older_than=timedelta(0))
    first = expected & _first_window(sim)
    # The first pass fits; the whole eligible set (reached by later passes) does not.
    limit = len(first) + 10
    assert limit < len(expected)

    run = await _run(
        sim, tmp_path, now=now, older_than="0s", execute=True, max_deletions=str(limit)
    )

    assert run.exit_code == 3
    assert run.ids("deleted") == first == run.deleted_by_simulator
    assert len(run.deleted_by_simulator) <= limit
    stopped = run.ids("not_attempted")
    assert stopped
    assert not stopped & first
    assert run.report["summary"]["selected"] == len(first) + len(stopped) > limit


async def test_max_deletions_base_is_the_apis_count(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """A percentage limit is taken of every task the API counted, not of the first window."""
    sim = await _capped_simulator(make_simulator)
    first = eligible(_tasks(sim), now=now, older_than=timedelta(0)) & _first_window(sim)
    # Of the window's 1,100 this would be refused; of the 2,500 counted it is allowed.
    percent = 100 * len(first) // TASKS + 1
    assert len(first) > percent * WINDOW // 100

    run = await _run(sim, tmp_path, now=now, older_than="0s", max_deletions=f"{percent}%")

    assert run.exit_code == 1  # a dry run over a capped listing
    assert run.ids("would_delete") == first


async def test_listing_by_status_with_the_cap(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """Listing by status under the cap deletes every eligible task over the passes."""
    sim = await make_simulator(tasks_per_project=TASKS, max_offset=200)
    tasks = _tasks(sim)
    failed = eligible(tasks, now=now, older_than=timedelta(0), codes=frozenset({FAILED}))
    assert len(failed) > 300, "the failed tasks must not fit in one window"
    failed_state = sum(1 for task in tasks.values() if task["status"] == FAILED)

    run = await _run(
        sim,
        tmp_path,
        now=now,
        older_than="0s",
        states="failed",
        list_by_status=True,
        execute=True,
    )

    assert run.exit_code == 0
    assert run.ids("deleted") == failed == run.deleted_by_simulator
    # Only failed tasks are listed (those without a start time are listed and kept).
    assert run.report["summary"]["listed"] == failed_state
    cap = run.target["offset_cap"]
    assert cap["complete"] is True
    assert cap["passes"] >= 2
