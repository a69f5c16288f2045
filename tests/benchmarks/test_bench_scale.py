"""100,000 tasks (1,000 pages of 100): the worker process's peak memory, CPU per task, time.

The worker runs as `python -m worker run` in its own process, with credentials in its
environment, exactly as a user starts it; its peak RSS and CPU come from wait4().
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.harness import (
    OLDER_THAN,
    PROJECT_ID,
    SimulatorProcess,
    Truth,
    emit,
    rounded,
    run_worker_process,
    simulator_config,
)

TASKS = 100_000
RATE = 1_000
CONCURRENCY = 64
RSS_TARGET_MB = 150


@pytest.mark.benchmark
def test_hundred_thousand_tasks(tmp_path: Path) -> None:
    """Delete 100,000 tasks at --rate 1000: peak RSS, CPU per task, wall time, all deleted."""
    with SimulatorProcess(simulator_config(tasks=TASKS)) as sim:
        run = run_worker_process(
            [
                "--endpoint",
                sim.url,
                "--project-id",
                PROJECT_ID,
                "--older-than",
                OLDER_THAN,
                "--rate",
                str(RATE),
                "--concurrency",
                str(CONCURRENCY),
                "--deadline",
                "30m",
                "--execute",
                "--yes",
                "--log-format",
                "json",
                "--log-level",
                "info",
            ],
            report=tmp_path / "report.json",
            stderr=tmp_path / "worker.log",
        )
        truth = Truth.of(sim.state())
    summary = run.summary
    assert run.exit_code == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert len(truth.deleted) == TASKS
    assert run.peak_rss_mb is not None
    emit(
        "scale",
        tasks=TASKS,
        pages=truth.requests["list"],
        rate=RATE,
        concurrency=CONCURRENCY,
        latency_ms="20 +- 5",
        wall_s=rounded(run.wall_seconds, 1),
        deletions_per_s=rounded(truth.deletion_rate, 1),
        peak_rss_mb=rounded(run.peak_rss_mb, 1),
        client_cpu_s=rounded(run.cpu_seconds, 1),
        client_cpu_ms_per_task=rounded(run.cpu_seconds / TASKS * 1000),
        simulator_cpu_s=None if sim.cpu_seconds is None else rounded(sim.cpu_seconds, 1),
        throttled_429=truth.rejected["throttled"],
        failed=summary["failed"],
        target_met=run.peak_rss_mb <= RSS_TARGET_MB,
    )
