"""List requests saved by listing only the selectable states (a dry run isolates the listing).

The account holds the default mix (70 % succeeded, 12 % failed, ...); the policy selects
failed tasks only, so most of the account need not be listed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.harness import (
    MOSTLY_SUCCEEDED,
    SimulatorProcess,
    Truth,
    emit,
    rounded,
    run_flags,
    run_worker,
    simulator_config,
)

TASKS = 20_000


@pytest.mark.benchmark
async def test_requests_saved_by_listing_by_status(tmp_path: Path) -> None:
    """Failed-only dry run over 20,000 tasks: list requests and time, full vs by status."""
    figures: dict[str, dict[str, float]] = {}
    selected: dict[bool, set[int]] = {}
    for by_status in (False, True):
        config = simulator_config(tasks=TASKS, status_weights=MOSTLY_SUCCEEDED)
        with SimulatorProcess(config) as sim:
            flags = run_flags(
                sim.url, tmp_path / f"{by_status}.json", rate=1000, concurrency=16, states="failed"
            )
            run = await run_worker({**flags, "execute": False}, list_by_status=by_status)
            truth = Truth.of(sim.state())
        assert run.exit_code == 0
        selected[by_status] = {t["id"] for t in run.report["tasks"]}
        figures["by_status" if by_status else "full"] = {
            "list_requests": truth.requests["list"],
            "wall_s": rounded(run.wall_seconds, 2),
            "listed": run.summary["listed"],
            "selected": len(selected[by_status]),
        }
    assert selected[True] == selected[False]
    assert figures["by_status"]["listed"] < figures["full"]["listed"]
    full, by = figures["full"]["list_requests"], figures["by_status"]["list_requests"]
    emit(
        "listing_by_status",
        tasks=TASKS,
        policy="failed, older than 12h",
        **figures,
        list_requests_saved=full - by,
        share_saved=rounded((full - by) / full),
    )
