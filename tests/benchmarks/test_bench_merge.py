"""The cost of checking while merging: four shards of 25,000 task records each.

Each input goes through the report's JSON Schema and its arithmetic; the merged report's
records are the inputs' own and skip the schema. No target: the figure is for people.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.harness import emit, rounded
from worker.merge import merge_report_files
from worker.outcomes import Outcome
from worker.report import TargetSummary, TaskRecord, build_report, write_report
from worker.report_check import check_report

SHARDS = 4
TASKS_PER_SHARD = 25_000
T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def shard_report(index: int) -> dict[str, object]:
    """Shard `index` of SHARDS: one target, TASKS_PER_SHARD deleted tasks."""
    project = f"{index:032x}"
    records = [
        TaskRecord(
            id=task_id,
            name=f"task-{task_id}",
            project_id=project,
            status="succeeded",
            start_time=T0 - timedelta(days=9),
            outcome=Outcome.DELETED,
            attempts=1,
        )
        for task_id in range(1, TASKS_PER_SHARD + 1)
    ]
    target = TargetSummary(
        label=f"r/{project}",
        project_id=project,
        region="r",
        endpoint="https://oms.example",
        listed=TASKS_PER_SHARD,
        requests={"list": TASKS_PER_SHARD // 100, "delete": TASKS_PER_SHARD},
    )
    return build_report(
        run_id=f"run-{index}",
        started_at=T0,
        finished_at=T0 + timedelta(minutes=20),
        dry_run=False,
        exit_code=0,
        interrupted=None,
        settings={"shard_index": index, "shard_count": SHARDS, "older_than": "1w"},
        targets=[target],
        records=records,
    )


@pytest.mark.benchmark
def test_merge_time_with_checks(tmp_path: Path) -> None:
    """Wall time of merge-reports over 100,000 records, and of checking one input alone."""
    inputs = []
    for index in range(SHARDS):
        path = tmp_path / f"r-{index}.json"
        write_report(path, shard_report(index))
        inputs.append(path)
    started = time.perf_counter()
    check_report(shard_report(0))
    one_input = time.perf_counter() - started
    started = time.perf_counter()
    merged = merge_report_files(tmp_path / "merged.json", inputs)
    merging = time.perf_counter() - started
    assert merged["summary"]["deleted"] == SHARDS * TASKS_PER_SHARD
    emit(
        "merge_reports",
        shards=SHARDS,
        tasks=SHARDS * TASKS_PER_SHARD,
        check_one_input_s=rounded(one_input, 2),
        merge_s=rounded(merging, 2),
    )
