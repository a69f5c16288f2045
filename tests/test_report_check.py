"""report_check: a report's schema and its own arithmetic, each fault named by its place."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.outcomes import Outcome
from worker.report import TargetSummary, TaskRecord, build_report
from worker.report_check import ReportProblem, check_report, sum_counts

T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def two_targets() -> dict[str, Any]:
    """A built report of two targets whose tasks have every outcome between them."""
    outcomes = list(Outcome)
    records = [
        TaskRecord(
            id=index,
            name=f"t-{index}",
            project_id="pa" if index % 2 else "pb",
            status="succeeded",
            start_time=T0 - timedelta(days=9),
            outcome=outcome,
            attempts=1,
        )
        for index, outcome in enumerate(outcomes + outcomes, start=1)
    ]
    targets = [
        TargetSummary(
            label=f"r/{project}",
            project_id=project,
            region="r",
            endpoint="https://oms.example",
            listed=len(outcomes) + 2,
            not_selected={"too_young": 2},
            requests={"list": 1, "delete": 3},
        )
        for project in ("pa", "pb")
    ]
    return build_report(
        run_id="r",
        started_at=T0,
        finished_at=T0 + timedelta(minutes=1),
        dry_run=False,
        exit_code=0,
        interrupted=None,
        settings={},
        targets=targets,
        records=records,
    )


def test_a_built_report_passes() -> None:
    """What build_report writes is valid and adds up, with every outcome in use."""
    report = two_targets()
    assert {task["outcome"] for task in report["tasks"]} == {o.value for o in Outcome}
    check_report(report)


def _change(path: tuple[str | int, ...], how: Callable[[Any], Any]) -> Callable[[Any], None]:
    def change(report: Any) -> None:
        node = report
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = how(node[path[-1]])

    return change


def _plus_one(value: int) -> int:
    return value + 1


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (_change(("summary", "targets", 0, "listed"), _plus_one), "summary.targets[0].listed"),
        (_change(("summary", "listed"), _plus_one), "summary.listed"),
        (_change(("tasks",), lambda tasks: tasks[1:]), "summary.targets[0].selected"),
        (_change(("tasks", 0, "outcome"), lambda _: "failed"), "summary.targets[0]."),
        (_change(("tasks", 0, "project_id"), lambda _: "pz"), "tasks[0].project_id"),
        # Two records per outcome, then the repeated one.
        (_change(("tasks",), lambda tasks: [*tasks, tasks[0]]), f"tasks[{2 * len(Outcome)}].id"),
        (
            _change(("summary", "targets", 1, "requests_sent", "total"), _plus_one),
            "summary.targets[1].requests_sent.total",
        ),
        (
            _change(("summary", "not_selected"), lambda _: {"too_young": 3, "protected": 1}),
            "summary.not_selected.protected",
        ),
        (
            _change(("summary", "targets", 1, "project_id"), lambda _: "pa"),
            "summary.targets[1].project_id",
        ),
        (_change(("tasks", 0, "attempts"), lambda _: -1), "tasks[0].attempts"),
        (_change(("finished_at",), lambda _: "2026-02-30T00:00:00Z"), "finished_at"),
        (_change(("summary", "targets", 0, "listed"), lambda _: True), "summary.targets[0].listed"),
    ],
)
def test_each_fault_is_named_by_its_place(change: Callable[[Any], None], where: str) -> None:
    """One corruption of a valid report: ReportProblem, one line, starting with the place."""
    report = copy.deepcopy(two_targets())
    change(report)
    with pytest.raises(ReportProblem) as problem:
        check_report(report)
    assert str(problem.value).startswith(where), str(problem.value)
    assert "\n" not in str(problem.value)


def test_an_outcome_the_schema_does_not_require_is_still_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A block without an outcome the code knows is refused, not read as zero."""
    from worker import report_check

    report = two_targets()
    del report["summary"]["targets"][0]["failed"]
    monkeypatch.setattr(report_check, "check_schema", lambda _: None)
    with pytest.raises(ReportProblem, match=r"^summary\.targets\[0\]\.failed: missing$"):
        report_check.check_report(report)


def test_sum_counts_adds_name_by_name() -> None:
    """Counts by name add up per name, zero entries kept, sorted by name."""
    assert sum_counts([{"b": 1, "a": 0}, {"b": 2, "c": 5}, {}]) == {"a": 0, "b": 3, "c": 5}
