"""SIGTERM at random moments of real runs: every report is valid and tells the truth.

Each case starts `python -m worker run --execute --yes` in its own process against a simulator
served by this test, waits for the run to start, then sends SIGTERM after a random delay drawn
from a seeded generator (the seed is the case id, so a failure replays). The signal may land
while listing, while deleting, or after the run ended; whatever the moment, the report must
validate against the schema and agree with the simulator's own record, read from its admin
endpoint `GET /_sim/state`.
"""

from __future__ import annotations

import asyncio
import random
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cleanup_command import start_run_process
from conftest import SimulatorFactory
from expectations import eligible, validated

from worker.simulator.config import DEFAULT_PROJECT_ID
from worker.simulator.faults import FaultConfig
from worker.simulator.server import SimulatorHandle

TASKS = 400
# Enough to bound a hung process, far above a normal run (listing plus ~2 s of deletes).
PATIENCE = 60.0
# When the signal comes, in seconds after run_started, by case: listing 4 pages at ~20 ms each
# takes about 0.1 s, the deletes at --rate 200 about 1.5 s more. The delay is random within a
# window per case, so that over the cases the signal lands while listing, while deleting, and
# around the end of the run.
SIGNAL_WINDOWS = ((0.0, 0.08), (0.1, 1.6), (0.1, 1.6), (0.1, 1.6), (1.4, 2.2))


async def sim_state(sim: SimulatorHandle) -> dict[str, Any]:
    """The simulator's record, read the way any client would: `GET /_sim/state`."""
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/_sim/state") as answer:
        answer.raise_for_status()
        state: dict[str, Any] = await answer.json()
        return state


async def interrupted_run(sim: SimulatorHandle, report: Path, delay: float) -> tuple[int, bool]:
    """Run the tool in a process, SIGTERM it `delay` s after it logged run_started.

    Returns the exit code and whether the signal was sent before the process ended.
    """
    process = await start_run_process(
        sim.url,
        "--older-than",
        "1d",
        "--rate",
        "200",
        "--concurrency",
        "8",
        "--execute",
        "--yes",
        "--report",
        str(report),
        stderr=asyncio.subprocess.DEVNULL,
        environment={"OMS_CLEANUP_LOG_FORMAT": "json"},
    )
    started = asyncio.Event()

    async def drain() -> None:
        # Read every log line: a full pipe would block the process, not the test.
        assert process.stdout is not None
        async for line in process.stdout:
            if not started.is_set() and b'"run_started"' in line:
                started.set()

    reader = asyncio.create_task(drain())
    try:
        waiting = asyncio.create_task(started.wait())
        ended = asyncio.create_task(process.wait())
        await asyncio.wait([waiting, ended], timeout=PATIENCE, return_when="FIRST_COMPLETED")
        waiting.cancel()
        assert started.is_set(), f"the run never started (exit code {process.returncode})"
        await asyncio.sleep(delay)
        signalled = process.returncode is None
        if signalled:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(ended, timeout=PATIENCE)
        await asyncio.wait_for(reader, timeout=PATIENCE)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
    return code, signalled


@pytest.mark.parametrize("seed", range(len(SIGNAL_WINDOWS)))
async def test_sigterm_at_a_random_moment_leaves_a_true_report(
    make_simulator: SimulatorFactory, tmp_path: Path, seed: int
) -> None:
    """SIGTERM at a random moment: exit 143 (or 0 if it ended first), a valid, true report."""
    delay = random.Random(seed).uniform(*SIGNAL_WINDOWS[seed])
    sim = await make_simulator(
        tasks_per_project=TASKS, faults=FaultConfig(latency_ms=20, jitter_ms=5)
    )
    now = datetime.now(UTC)
    selectable = eligible(
        sim.state.projects[DEFAULT_PROJECT_ID].tasks, now=now, older_than=timedelta(days=1)
    )
    report_path = tmp_path / "report.json"

    code, signalled = await interrupted_run(sim, report_path, delay)

    context = f"seed {seed}, signal after {delay:.2f} s, exit {code}"
    truth = await sim_state(sim)
    report = validated(report_path)
    assert report["exit_code"] == code, context
    if code == 143:
        assert signalled, context
        assert report["interrupted"] == "SIGTERM", context
    else:
        assert code == 0, context
        assert report["interrupted"] is None, context

    deleted = {d["task_id"] for d in truth["deletions"]}
    outcomes = {t["id"]: t["outcome"] for t in report["tasks"]}
    by_outcome: dict[str, set[int]] = {}
    for task_id, outcome in outcomes.items():
        by_outcome.setdefault(outcome, set()).add(task_id)
    # Only selected tasks were ever deleted, each once.
    assert deleted <= selectable, context
    assert len(truth["deletions"]) == len(deleted), context
    if not report["tasks"]:
        # Stopped while listing: nothing was deleted.
        assert code == 143, context
        assert deleted == set(), context
        assert truth["requests"]["delete"] == 0, context
        return
    # Listing completed: one record per selected task, each with one outcome.
    assert set(outcomes) == selectable, context
    # In-flight deletes finish within the grace period, so the report knows each outcome.
    assert by_outcome.get("deleted", set()) == deleted, context
    assert set(by_outcome) <= {"deleted", "not_attempted"}, context
    assert by_outcome.get("not_attempted", set()).isdisjoint(deleted), context
    assert truth["requests"]["delete"] == len(deleted), context
    summary = report["summary"]
    assert summary["deleted"] == len(deleted), context
    assert summary["requests_sent"]["by_kind"]["delete"] == truth["requests"]["delete"], context
    assert truth["remaining"][DEFAULT_PROJECT_ID]["total"] == TASKS - len(deleted), context
    if code == 0:
        assert deleted == selectable, context
