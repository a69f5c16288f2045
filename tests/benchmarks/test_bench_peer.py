"""The same cleanup done three ways against the same simulator: oms-cleanup vs the official SDK.

The SDK scripts are what a user would write with `huaweicloudsdkoms` 3.1.219: list every page,
keep the finished tasks, then delete them, either one by one (`OmsClient`) or by submitting
every delete to the SDK's own `OmsAsyncClient` (its thread pool of 8) and collecting the
results. No rate limit anywhere; each contender gets a fresh simulator with the same seed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import (
    PROJECT_ID,
    SimulatorProcess,
    Truth,
    emit,
    rounded,
    run_flags,
    run_worker,
    simulator_config,
)
from worker.simulator.config import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

TASKS = 5_000
CONCURRENCY = 64
# High enough never to bind: the comparison is about the client, not about our own limit.
UNBOUND_RATE = 100_000
FINISHED = (4, 5)


def _sdk_client(url: str, *, asynchronous: bool) -> Any:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkoms.v2 import OmsAsyncClient, OmsClient

    builder = (OmsAsyncClient if asynchronous else OmsClient).new_builder()
    credentials = BasicCredentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, PROJECT_ID)
    return builder.with_credentials(credentials).with_endpoints([url]).build()


def _finished_ids(list_page: Callable[[int], Any]) -> list[int]:
    """Page like the SDK docs show (limit 100, offset += page size), keep finished tasks."""
    ids: list[int] = []
    offset = 0
    while True:
        page = list_page(offset)
        ids += [task.id for task in page.tasks if task.status in FINISHED]
        offset += len(page.tasks)
        if len(page.tasks) < 100:
            return ids


def sdk_sequential(url: str) -> int:
    """The plain script: list everything, then delete each task in turn."""
    from huaweicloudsdkoms.v2 import DeleteTaskRequest, ListTasksRequest

    client = _sdk_client(url, asynchronous=False)
    ids = _finished_ids(
        lambda offset: client.list_tasks(ListTasksRequest(limit=100, offset=offset))
    )
    for task_id in ids:
        client.delete_task(DeleteTaskRequest(task_id=str(task_id)))
    return len(ids)


def sdk_thread_pool(url: str) -> int:
    """The SDK's async client: every delete submitted to its pool, then every result awaited."""
    from huaweicloudsdkoms.v2 import DeleteTaskRequest, ListTasksRequest

    client = _sdk_client(url, asynchronous=True)
    ids = _finished_ids(
        lambda offset: client.list_tasks_async(ListTasksRequest(limit=100, offset=offset)).result()
    )
    futures = [client.delete_task_async(DeleteTaskRequest(task_id=str(i))) for i in ids]
    for future in futures:
        future.result()
    return len(ids)


async def _timed_sdk(script: Callable[[str], int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, deletions the simulator applied)."""
    with SimulatorProcess(simulator_config(tasks=TASKS)) as sim:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        deleted = await asyncio.to_thread(script, sim.url)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        truth = Truth.of(sim.state())
    assert deleted == TASKS
    return wall, cpu, len(truth.deleted)


@pytest.mark.benchmark
async def test_speedup_over_the_official_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 deletions at 20 ms latency: oms-cleanup vs a sequential SDK script vs its pool."""
    monkeypatch.setenv("HOME", str(tmp_path))  # the SDK writes ~/.huaweicloud/application_id
    with SimulatorProcess(simulator_config(tasks=TASKS)) as sim:
        ours = await run_worker(
            run_flags(sim.url, tmp_path / "report.json", rate=UNBOUND_RATE, concurrency=CONCURRENCY)
        )
        ours_deleted = len(Truth.of(sim.state()).deleted)
    assert ours.exit_code == 0
    assert ours_deleted == TASKS
    pool_wall, pool_cpu, pool_deleted = await _timed_sdk(sdk_thread_pool)
    seq_wall, seq_cpu, seq_deleted = await _timed_sdk(sdk_sequential)
    assert pool_deleted == seq_deleted == TASKS
    emit(
        "peer_sdk",
        tasks=TASKS,
        latency_ms="20 +- 5",
        oms_cleanup={
            "concurrency": CONCURRENCY,
            "wall_s": rounded(ours.wall_seconds, 2),
            "deletions_per_s": rounded(TASKS / ours.wall_seconds, 1),
            "cpu_ms_per_task": rounded(ours.cpu_seconds / TASKS * 1000),
        },
        sdk_thread_pool={
            "wall_s": rounded(pool_wall, 2),
            "deletions_per_s": rounded(TASKS / pool_wall, 1),
            "cpu_ms_per_task": rounded(pool_cpu / TASKS * 1000),
        },
        sdk_sequential={
            "wall_s": rounded(seq_wall, 2),
            "deletions_per_s": rounded(TASKS / seq_wall, 1),
            "cpu_ms_per_task": rounded(seq_cpu / TASKS * 1000),
        },
        speedup_vs_sequential=rounded(seq_wall / ours.wall_seconds, 1),
        speedup_vs_thread_pool=rounded(pool_wall / ours.wall_seconds, 1),
        target_met=seq_wall / ours.wall_seconds >= 10 and pool_wall / ours.wall_seconds >= 3,
    )
