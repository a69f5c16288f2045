"""Throughput at the rate limit, and adapting to a server limit below the configured rate.

Utilisation is deletions per second over the deletion phase (the simulator's own timestamps of
the first and last deletion) divided by the configured rate; listing requests are outside that
phase. Total requests per second over the whole run (listing included) is reported beside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.harness import (
    SimulatorProcess,
    Truth,
    emit,
    rounded,
    run_flags,
    run_worker,
    simulator_config,
)

CONCURRENCY = 32


@pytest.mark.benchmark
@pytest.mark.parametrize(
    ("rate", "tasks"),
    # At 50/s, 5,000 deletions would take 100 s; half as many still span 50 s of windows.
    [(50, 2_500), (200, 5_000), (500, 5_000)],
)
async def test_utilisation_at_the_server_limit(tmp_path: Path, rate: int, tasks: int) -> None:
    """--rate N against a server limiting at N/s: deletions/s / N, and not one 429."""
    with SimulatorProcess(simulator_config(tasks=tasks, rate_limit=rate)) as sim:
        run = await run_worker(
            run_flags(sim.url, tmp_path / "report.json", rate=rate, concurrency=CONCURRENCY)
        )
        truth = Truth.of(sim.state())
    summary = run.summary
    assert run.exit_code == 0
    assert summary["deleted"] + summary["already_gone"] == tasks
    requests = sum(truth.requests.values()) + truth.rejected["throttled"]
    emit(
        "utilisation",
        rate=rate,
        server_limit=rate,
        tasks=tasks,
        concurrency=CONCURRENCY,
        deletions_per_s=rounded(truth.deletion_rate, 1),
        utilisation=rounded(truth.deletion_rate / rate),
        requests_per_s_whole_run=rounded(requests / run.wall_seconds, 1),
        throttled_429=truth.rejected["throttled"],
        failed=summary["failed"],
        wall_s=rounded(run.wall_seconds, 1),
        client_cpu_s=rounded(run.cpu_seconds, 2),
        target_met=truth.deletion_rate / rate >= 0.97 and truth.rejected["throttled"] == 0,
    )


@pytest.mark.benchmark
async def test_adapts_to_a_lower_server_limit(tmp_path: Path) -> None:
    """--rate 400 against a server limiting at 100/s: no failed task, >= 90 deletions/s."""
    server_limit, rate, tasks = 100, 400, 5_000
    with SimulatorProcess(simulator_config(tasks=tasks, rate_limit=server_limit)) as sim:
        run = await run_worker(
            run_flags(sim.url, tmp_path / "report.json", rate=rate, concurrency=CONCURRENCY)
        )
        truth = Truth.of(sim.state())
    summary = run.summary
    assert summary["deleted"] + summary["already_gone"] + summary["failed"] == tasks
    emit(
        "adaptation",
        rate=rate,
        server_limit=server_limit,
        tasks=tasks,
        concurrency=CONCURRENCY,
        deletions_per_s=rounded(truth.deletion_rate, 1),
        share_of_server_limit=rounded(truth.deletion_rate / server_limit),
        throttled_429=truth.rejected["throttled"],
        delete_requests=truth.requests["delete"],
        failed=summary["failed"],
        wall_s=rounded(run.wall_seconds, 1),
        target_met=summary["failed"] == 0 and truth.deletion_rate >= 0.9 * server_limit,
    )
