"""Whether a report can be trusted as it stands: its JSON Schema, then its own arithmetic.

A report written by a run always passes; one edited by hand, cut short or made by another
tool may not. `merge-reports` refuses such an input rather than carry its error into a
merged report, and checks its own output the same way before writing it.

The arithmetic, per target and for the summary:

- listed = selected + the sum of not_selected (every listed task was judged exactly once);
- selected = the number of the target's task records = the sum of its outcome counts, and
  each outcome count is the number of records with that outcome;
- requests_sent.total = the sum of requests_sent.by_kind;
- the summary's counts are the sum of its targets' counts;
- each task record belongs to one of the targets, no project is a target twice, and no task
  has two records.

The outcome names come from `Outcome`, so an outcome added there is checked like the others.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import jsonschema

from worker.outcomes import Outcome
from worker.report import report_schema

# Counts a target block and the summary both hold; the summary's are the targets' sums.
COUNT_KEYS: tuple[str, ...] = ("listed", "selected", *(outcome.value for outcome in Outcome))
# Counts kept by name (a reason, a request kind): summed name by name.
COUNTS_BY_NAME_KEYS: tuple[str, ...] = ("not_selected",)

_MESSAGE_LIMIT = 160


class ReportProblem(ValueError):
    """What is wrong with a report, in one line: the place (a JSON path) and the fault."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


def check_report(report: Any) -> None:
    """Raise ReportProblem for the first thing wrong in `report` (schema first, then counts)."""
    check_schema(report)
    check_arithmetic(report)


def check_schema(report: Any) -> None:
    """Raise ReportProblem when `report` does not pass the report's JSON Schema."""
    errors = list(_validator().iter_errors(report))
    if not errors:
        return
    # A block failing part of an `allOf` also fails `unevaluatedProperties` for every key the
    # failing part would have accepted; that second error only repeats the first, vaguely.
    telling = [error for error in errors if error.validator != "unevaluatedProperties"]
    error = jsonschema.exceptions.best_match(telling or errors)
    assert error is not None
    raise ReportProblem(_json_path(error.absolute_path), _one_line(error.message))


def check_arithmetic(report: Mapping[str, Any]) -> None:
    """Raise ReportProblem when a schema-valid report's counts disagree with each other.

    Assumes the report passed `check_schema` (its shape is not checked again).
    """
    summary = report["summary"]
    targets: list[Mapping[str, Any]] = summary["targets"]
    tasks: list[Mapping[str, Any]] = report["tasks"]
    index_of: dict[str, int] = {}
    for index, block in enumerate(targets):
        project = block["project_id"]
        if project in index_of:
            raise ReportProblem(
                f"summary.targets[{index}].project_id",
                f"{project!r} is also summary.targets[{index_of[project]}]'s",
            )
        index_of[project] = index
    known = {outcome.value for outcome in Outcome}
    outcomes: dict[str, Counter[str]] = {project: Counter() for project in index_of}
    seen: set[tuple[str, int]] = set()
    for index, task in enumerate(tasks):
        where = f"tasks[{index}]"
        project, outcome = task["project_id"], task["outcome"]
        if project not in index_of:
            raise ReportProblem(f"{where}.project_id", f"{project!r} is none of the targets")
        if outcome not in known:
            raise ReportProblem(f"{where}.outcome", f"unknown outcome {outcome!r}")
        key = (project, task["id"])
        if key in seen:
            raise ReportProblem(
                f"{where}.id", f"a second record of task {task['id']} in {project!r}"
            )
        seen.add(key)
        outcomes[project][outcome] += 1
    for project, index in index_of.items():
        _check_counts(
            targets[index],
            f"summary.targets[{index}]",
            records=outcomes[project],
            what=f"task records of project {project!r}",
        )
    _check_counts(
        summary, "summary", records=sum(outcomes.values(), Counter()), what="task records"
    )
    _check_sums(summary, targets)


def _check_counts(
    block: Mapping[str, Any], where: str, *, records: Counter[str], what: str
) -> None:
    """One block's own arithmetic, against the records that belong to it."""
    selected = _count(block, "selected", where)
    not_selected = sum(block["not_selected"].values())
    listed = _count(block, "listed", where)
    if listed != selected + not_selected:
        raise ReportProblem(
            f"{where}.listed",
            f"is {listed}, but selected ({selected}) + not_selected ({not_selected}) "
            f"is {selected + not_selected}",
        )
    total = sum(records.values())
    if selected != total:
        raise ReportProblem(f"{where}.selected", f"is {selected}, but there are {total} {what}")
    for outcome in Outcome:
        count = _count(block, outcome.value, where)
        if count != records[outcome.value]:
            raise ReportProblem(
                f"{where}.{outcome.value}",
                f"is {count}, but {records[outcome.value]} {what} say {outcome.value}",
            )
    requests = block["requests_sent"]
    by_kind = sum(requests["by_kind"].values())
    if requests["total"] != by_kind:
        raise ReportProblem(
            f"{where}.requests_sent.total",
            f"is {requests['total']}, but its by_kind add up to {by_kind}",
        )


def _check_sums(summary: Mapping[str, Any], targets: Iterable[Mapping[str, Any]]) -> None:
    """The summary's counts are its targets' sums."""
    blocks = list(targets)
    for key in COUNT_KEYS:
        total = sum(block[key] for block in blocks)
        if summary[key] != total:
            raise ReportProblem(
                f"summary.{key}", f"is {summary[key]}, but its targets' add up to {total}"
            )
    for key in COUNTS_BY_NAME_KEYS:
        _check_named_sum(summary[key], [block[key] for block in blocks], f"summary.{key}")
    _check_named_sum(
        summary["requests_sent"]["by_kind"],
        [block["requests_sent"]["by_kind"] for block in blocks],
        "summary.requests_sent.by_kind",
    )


def _check_named_sum(
    counts: Mapping[str, int], parts: Iterable[Mapping[str, int]], where: str
) -> None:
    expected = sum_counts(parts)
    for name in sorted(set(counts) | set(expected)):
        if counts.get(name, 0) != expected.get(name, 0):
            raise ReportProblem(
                f"{where}.{name}",
                f"is {counts.get(name, 0)}, but its targets' add up to {expected.get(name, 0)}",
            )


def sum_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Counts by name, added up name by name, sorted by name."""
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return dict(sorted(total.items()))


def _count(block: Mapping[str, Any], key: str, where: str) -> int:
    # The schema requires today's outcomes; this catches one added to Outcome but not to it.
    if key not in block:
        raise ReportProblem(f"{where}.{key}", "missing")
    value: int = block[key]
    return value


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = report_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=_format_checker())


def _format_checker() -> jsonschema.FormatChecker:
    # jsonschema checks "date-time" only with an extra package installed; the report's
    # timestamps are what datetime.fromisoformat reads, so that is the check.
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _is_date_time(value: object) -> bool:
        if isinstance(value, str):
            datetime.fromisoformat(value)
        return True

    return checker


def _json_path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "report"


def _one_line(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."
