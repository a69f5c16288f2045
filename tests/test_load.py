"""Load: one executing run over 50,000 tasks against the simulator, over real HTTP.

It takes about 15 s on two cores (simulator and tool share this process), so it runs in CI.
It prints its duration and the process's peak memory; nothing asserts on either, because
machines differ: it asserts that every outcome is right.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import SimulatorFactory
from expectations import eligible, validated

from worker import logs
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_PROJECT_ID,
)

TASKS = 50_000
OLDER_THAN = timedelta(days=7)


@pytest.fixture
def production_logging() -> Iterator[None]:
    """Info-level JSON lines, as in production, written to nowhere (tens of thousands of them)."""
    with Path(os.devnull).open("w", encoding="utf-8") as sink:
        logs.configure(fmt="json", level="info", stream=sink)
        yield
    logs.reset()


@pytest.mark.usefixtures("production_logging")
async def test_fifty_thousand_tasks(
    make_simulator: SimulatorFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """50,000 tasks: listed completely, exactly the eligible ones deleted, the report agrees."""
    sim = await make_simulator(tasks_per_project=TASKS)
    now = datetime.now(UTC)
    expected = eligible(
        sim.state.projects[DEFAULT_PROJECT_ID].tasks, now=now, older_than=OLDER_THAN
    )
    report = tmp_path / "report.json"
    settings = load_settings(
        {
            "endpoint": sim.url,
            "project_id": DEFAULT_PROJECT_ID,
            "older_than": "7d",
            "rate": "100000",
            "concurrency": "32",
            "deadline": "10m",
            "execute": True,
            "report": str(report),
        },
        environ={},
    )
    credentials = DEFAULT_CLIENT_CREDENTIALS
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started_at = time.monotonic()

    code = await run_async(
        settings=settings, credentials=credentials, now=lambda: now, handle_signals=False
    )

    duration = time.monotonic() - started_at
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    written = validated(report)
    truth = sim.state.snapshot()
    with capsys.disabled():
        print(
            f"\nload: {TASKS} tasks listed, {len(expected)} deleted in {duration:.1f} s; "
            f"peak RSS {peak_kib / 1024:.0f} MiB (simulator included; "
            f"{rss_before / 1024:.0f} MiB before the run); report "
            f"{report.stat().st_size / 1e6:.1f} MB"
        )

    assert code == 0
    deleted = {record["task_id"] for record in truth["deletions"]}
    assert deleted == expected
    assert len(truth["deletions"]) == len(expected)  # none twice
    assert truth["remaining"][DEFAULT_PROJECT_ID]["total"] == TASKS - len(expected)
    assert truth["requests"]["list"] == TASKS // 100
    assert truth["requests"]["delete"] == len(expected)
    summary = written["summary"]
    assert summary["listed"] == TASKS
    assert summary["selected"] == summary["deleted"] == len(expected)
    assert sum(summary["not_selected"].values()) == TASKS - len(expected)
    assert Counter(t["outcome"] for t in written["tasks"]) == {"deleted": len(expected)}
    assert {t["id"] for t in written["tasks"]} == expected
