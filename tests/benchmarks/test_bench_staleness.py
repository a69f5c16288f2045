"""What the staleness bound costs: requests of a 20,000-task run with and without --max-staleness.

Target: at default settings the bound adds at most 3 % requests. At the default 20 requests/s
such a run takes ~17 minutes of real time, so the benchmark scales time: `--rate` x10 (200/s)
and `--max-staleness` /10 (1 minute instead of 10). The deletes then take a tenth of the time
and the judgements go stale ten times sooner, so the run refreshes as many times, and with
as many tasks pending each time, as the unscaled run would: the ratio of refresh requests to
deletes, which is the figure, is unchanged. The limiter headroom (concurrency / rate) shrinks
by the same factor. "Without the bound" is a --max-staleness longer than the run (1 day).

The account holds the default mix (70 % succeeded, 12 % failed, ...), every finished task
selected (older than 12 h), so re-listing by state returns the pending tasks and little else.
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
SCALE = 10
RATE = 20 * SCALE
MAX_STALENESS = "60s"  # the default 10m / SCALE
TARGET = 0.03


@pytest.mark.benchmark
async def test_staleness_bound_costs_few_requests(tmp_path: Path) -> None:
    """20,000 tasks, time scaled x10: extra requests of a 1-minute bound against none."""
    figures: dict[str, dict[str, float]] = {}
    deleted: dict[str, frozenset[int]] = {}
    for name, staleness in (("unbounded", "1d"), ("bounded", MAX_STALENESS)):
        config = simulator_config(tasks=TASKS, status_weights=MOSTLY_SUCCEEDED)
        with SimulatorProcess(config) as sim:
            flags = run_flags(
                sim.url,
                tmp_path / f"{name}.json",
                rate=RATE,
                concurrency=16,
                extra={"max_staleness": staleness},
            )
            run = await run_worker(flags)
            truth = Truth.of(sim.state())
        assert run.exit_code == 0
        assert run.summary["changed"] == 0
        assert run.summary["deleted"] == run.summary["selected"] == len(truth.deleted)
        deleted[name] = truth.deleted
        figures[name] = {
            "requests": sum(truth.requests.values()),
            "list": truth.requests["list"],
            "show": truth.requests["show"],
            "delete": truth.requests["delete"],
            "wall_s": rounded(run.wall_seconds, 1),
        }
    assert deleted["bounded"] == deleted["unbounded"]
    base, bounded = figures["unbounded"]["requests"], figures["bounded"]["requests"]
    extra = (bounded - base) / base
    emit(
        "staleness_cost",
        tasks=TASKS,
        rate=RATE,
        max_staleness=MAX_STALENESS,
        time_scale=SCALE,
        **figures,
        extra_requests=bounded - base,
        extra_share=rounded(extra, 4),
        target=TARGET,
        target_met=extra <= TARGET,
    )
