"""What a run should have done, worked out independently of the code under test.

The expected selection is computed from the simulator's raw task objects, not by the policy
module; a written report is checked against the published JSON schema before any test reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import jsonschema

from worker.report import load_report, report_schema
from worker.simulator.state import FAILED, SUCCEEDED

FINISHED = frozenset({SUCCEEDED, FAILED})

Key = TypeVar("Key", bound=Hashable)


def started(task: Mapping[str, Any]) -> datetime | None:
    """A raw task's start time; None when absent or 0 (the API's "not started")."""
    millis = task.get("start_time") or 0
    return datetime.fromtimestamp(millis / 1000, UTC) if millis > 0 else None


def eligible(
    tasks: Mapping[Key, Mapping[str, Any]],
    *,
    now: datetime,
    older_than: timedelta,
    codes: frozenset[int] = FINISHED,
    keep: Callable[[Mapping[str, Any]], bool] = lambda task: False,
) -> set[Key]:
    """The keys of the tasks in `codes` whose known start is at least `older_than` before `now`."""
    chosen = set()
    for key, task in tasks.items():
        if keep(task):  # before reading the start: an odd task's may be no datetime at all
            continue
        start = started(task)
        old_enough = start is not None and now - start >= older_than
        if task["status"] in codes and old_enough:
            chosen.add(key)
    return chosen


def validated(path: Path) -> dict[str, Any]:
    """The report at `path`, after checking it against the published JSON schema."""
    report = load_report(path)
    jsonschema.validate(report, report_schema())
    return report
