"""Listing only the selectable states: fewer list requests, the same deletions, honest counts.

Each comparison runs the same cleanup twice against two simulators with the same seed (the
same tasks): once listing everything, once listing by status. The expectations come from the
simulator's own population, not from the code under test.
"""

from __future__ import annotations

import asyncio
import io
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import SimulatorFactory

from worker.cli import run_cli
from worker.listing import can_list_by_state
from worker.oms.models import TaskStatus
from worker.report import load_report
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
)
from worker.simulator.server import SimulatorHandle

TASKS = 600
FAILED = 4


async def _run(
    sim: SimulatorHandle, report: Path, *, by_status: bool, **flags: Any
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(exit code, report, simulator record) of one run against `sim`."""
    settings = load_settings(
        {
            "endpoint": sim.url,
            "project_id": DEFAULT_PROJECT_ID,
            "older_than": "1d",
            "rate": "2000",
            "concurrency": "16",
            "yes": True,
            "report": str(report),
            "list_by_status": by_status,
            **flags,
        },
        environ={},
    )
    code = await run_async(
        settings=settings, credentials=DEFAULT_CLIENT_CREDENTIALS, handle_signals=False
    )
    return code, load_report(report), sim.state.snapshot()


def _deleted(truth: dict[str, Any]) -> set[int]:
    return {record["task_id"] for record in truth["deletions"]}


def _failed_count(sim: SimulatorHandle) -> int:
    tasks = sim.state.projects[DEFAULT_PROJECT_ID].tasks.values()
    return sum(1 for task in tasks if task["status"] == FAILED)


@pytest.mark.parametrize(
    ("states", "filterable"),
    [
        ({TaskStatus.FAILED}, True),
        ({TaskStatus.SUCCEEDED, TaskStatus.PAUSED}, True),
        ({TaskStatus.WAITING, TaskStatus.PAUSING}, True),
        ({TaskStatus.NOT_STARTED}, False),  # the API filters by 1-7 only
        ({TaskStatus.FAILED, TaskStatus.NOT_STARTED}, False),
        ({TaskStatus.UNKNOWN}, False),
        (set(), False),
    ],
)
def test_which_policies_can_list_by_state(states: set[TaskStatus], filterable: bool) -> None:
    """Only states the `status` filter accepts can be listed one by one."""
    assert can_list_by_state(states) is filterable


async def test_saves_list_requests_and_deletes_the_same_tasks(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Failed-only on a mostly-succeeded account: a fraction of the pages, the same deletions."""
    plain = await make_simulator(tasks_per_project=TASKS)
    filtered = await make_simulator(tasks_per_project=TASKS)
    failed = _failed_count(plain)
    assert failed == _failed_count(filtered)
    assert 0 < failed < TASKS / 4

    code_all, report_all, truth_all = await _run(
        plain, tmp_path / "all.json", by_status=False, states="failed", execute=True
    )
    code_by, report_by, truth_by = await _run(
        filtered, tmp_path / "by.json", by_status=True, states="failed", execute=True
    )

    assert code_all == code_by == 0
    assert _deleted(truth_by) == _deleted(truth_all)
    assert len(_deleted(truth_by)) > 0
    assert truth_all["requests"]["list"] == math.ceil(TASKS / 100)
    # One call for the total, then the failed tasks' pages.
    assert truth_by["requests"]["list"] == 1 + math.ceil(failed / 100)
    assert report_all["summary"]["listed"] == TASKS
    assert report_by["summary"]["listed"] == failed
    assert "listing" not in report_all["settings"]
    assert report_by["settings"]["listing"]["by_status"] == ["failed"]
    assert report_by["settings"]["listing"]["tasks_in_targets"] == TASKS
    # Kept tasks are counted among the listed ones only: no state reason, nothing unknown.
    assert set(report_by["summary"]["not_selected"]) <= {"age_unknown", "too_young", "protected"}


@pytest.mark.parametrize(("cap", "exit_code"), [("20%", 0), ("5%", 3)])
async def test_max_deletions_percent_is_of_every_task(
    make_simulator: SimulatorFactory, tmp_path: Path, cap: str, exit_code: int
) -> None:
    """A percentage cap is taken of the account's tasks, not of the few that were listed."""
    sim = await make_simulator(tasks_per_project=TASKS)
    failed = _failed_count(sim)
    # 20 % of all tasks admits every failed one; 20 % of the failed ones alone would not.
    assert failed <= 0.2 * TASKS
    assert failed > 0.05 * TASKS
    code, _, truth = await _run(
        sim, tmp_path / "r.json", by_status=True, states="failed", execute=True, max_deletions=cap
    )
    assert code == exit_code
    assert (len(_deleted(truth)) > 0) is (exit_code == 0)


async def test_unfilterable_policy_lists_everything(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """A policy selecting 'not started' (code 0, not filterable) falls back to one full listing."""
    sim = await make_simulator(tasks_per_project=TASKS)
    code, report, truth = await _run(
        sim,
        tmp_path / "r.json",
        by_status=True,
        states="failed,not_started",
        stop_running=True,
    )
    assert code == 0
    assert truth["requests"]["list"] == math.ceil(TASKS / 100)
    assert report["summary"]["listed"] == TASKS
    assert "listing" not in report["settings"]


async def test_flag_turns_it_on_from_the_command_line(
    make_simulator: SimulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--list-by-status` on the command line lists by status filter (status= in the query)."""
    sim = await make_simulator(tasks_per_project=TASKS)
    monkeypatch.setenv("OMS_CLEANUP_AK", DEFAULT_ACCESS_KEY)
    monkeypatch.setenv("OMS_CLEANUP_SK", DEFAULT_SECRET_KEY)
    argv = [
        "run", "--endpoint", sim.url, "--project-id", DEFAULT_PROJECT_ID,
        "--older-than", "1d", "--states", "failed", "--list-by-status",
        "--report", str(tmp_path / "r.json"),
    ]  # fmt: skip
    code = await asyncio.to_thread(
        run_cli, argv, stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO()
    )
    report = load_report(tmp_path / "r.json")
    assert code == 0
    assert report["settings"]["list_by_status"] is True
    # One page for the failed tasks plus one limit=1 call for the total, not every page.
    assert sim.state.requests["list"] < math.ceil(TASKS / 100)
