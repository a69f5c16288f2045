"""Combine the reports of disjoint runs (the shards of an Indexed Job) into one report.

The merged report is rebuilt with `report.build_report` from the inputs' task records and
target blocks, so its summaries are recomputed, never added up, and agree with its tasks
exactly as a single run's would. The rules:

- Inputs must be disjoint: a project id that is a target in two inputs is an error. Two
  reports of one project (the same shard twice, or a run and its re-run) overlap in what they
  listed and may disagree about a task's outcome; no merged count would be true, so they are
  refused rather than reconciled. As a consequence a task never appears in two inputs.
- `started_at` is the earliest start, `finished_at` the latest finish, and `duration_seconds`
  the span between them (shards run side by side, so durations are not summed).
- `dry_run` is true only if every input was a dry run; `deadline_reached` if any input's was.
- `exit_code` is the most severe (see EXIT_SEVERITY); `interrupted` the first signal, in
  order of the inputs' start times.
- `run_id` is new; `merged_from` lists each input's run id, times, exit code and settings.
  `settings` holds what every input agrees on, with `targets` the union of theirs.

Inputs are ordered by (started_at, run_id) first, so the result does not depend on the order
the files were named in.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from worker.oms.errors import ErrorInfo
from worker.outcomes import Outcome
from worker.report import (
    OffsetCap,
    TargetSummary,
    TaskRecord,
    build_report,
    load_report,
    write_report,
)

# From least to most severe. A fatal API error (4) and a safety abort (3) need a person; a
# usage error (2) cannot normally reach a report; a signal (128 + n) leaves work for the next
# run, as do tasks left over (1). A code not listed here is treated as the most severe: a
# merged report must not look better than its worst input.
EXIT_SEVERITY: tuple[str, ...] = ("0", "1", "signal", "2", "3", "4")
_SIGNAL_EXIT_MIN = 129


class MergeError(ValueError):
    """Reports that cannot be merged; the message is one line naming the input."""


def exit_severity(code: int) -> int:
    """The rank of an exit code: a higher rank is worse (unknown codes rank worst)."""
    name = "signal" if code >= _SIGNAL_EXIT_MIN else str(code)
    try:
        return EXIT_SEVERITY.index(name)
    except ValueError:
        return len(EXIT_SEVERITY)


def most_severe_exit_code(codes: Sequence[int]) -> int:
    """The exit code a merged run reports; ties between signals go to the higher code."""
    if not codes:
        raise ValueError("no exit codes")
    return max(codes, key=lambda code: (exit_severity(code), code))


@dataclass(frozen=True, slots=True)
class _Input:
    """One input report, read back into the values build_report takes."""

    source: str
    report: Mapping[str, Any]
    started_at: datetime
    finished_at: datetime
    targets: tuple[TargetSummary, ...]
    records: tuple[TaskRecord, ...]


def merge_reports(
    reports: Sequence[tuple[str, Mapping[str, Any]]], *, run_id: str | None = None
) -> dict[str, Any]:
    """Merge `(source, report)` pairs into one report dict; MergeError if they cannot be.

    `source` names the input in error messages (its path, usually).
    """
    if not reports:
        raise MergeError("no reports to merge")
    inputs = sorted(
        (_read(source, report) for source, report in reports),
        key=lambda item: (item.started_at, str(item.report["run_id"]), item.source),
    )
    owner: dict[str, str] = {}
    for item in inputs:
        for target in item.targets:
            other = owner.setdefault(target.project_id, item.source)
            if other != item.source:
                raise MergeError(
                    f"project {target.project_id!r} is a target in both {other} and "
                    f"{item.source}: only reports of disjoint targets can be merged"
                )
    try:
        merged = build_report(
            run_id=run_id or uuid.uuid4().hex,
            started_at=min(item.started_at for item in inputs),
            finished_at=max(item.finished_at for item in inputs),
            dry_run=all(item.report["dry_run"] for item in inputs),
            exit_code=most_severe_exit_code([item.report["exit_code"] for item in inputs]),
            interrupted=next(
                (item.report["interrupted"] for item in inputs if item.report["interrupted"]),
                None,
            ),
            settings=_common_settings([item.report["settings"] for item in inputs]),
            targets=[target for item in inputs for target in item.targets],
            records=[record for item in inputs for record in item.records],
            deadline_reached=any(item.report["summary"]["deadline_reached"] for item in inputs),
        )
    except ValueError as exc:
        # build_report refuses what would make the report lie (e.g. one task twice).
        raise MergeError(str(exc)) from exc
    merged_from = [
        {
            "run_id": item.report["run_id"],
            "started_at": item.report["started_at"],
            "finished_at": item.report["finished_at"],
            "dry_run": item.report["dry_run"],
            "exit_code": item.report["exit_code"],
            "interrupted": item.report["interrupted"],
            "settings": item.report["settings"],
        }
        for item in inputs
    ]
    # Placed before the settings so a reader sees first that this report is a merge.
    ordered: dict[str, Any] = {}
    for key, value in merged.items():
        if key == "settings":
            ordered["merged_from"] = merged_from
        ordered[key] = value
    return ordered


def merge_report_files(
    output: Path, inputs: Sequence[Path], *, run_id: str | None = None
) -> dict[str, Any]:
    """Read `inputs`, merge them and write the result atomically to `output`; the result.

    Raises MergeError for anything wrong with the inputs or the output path (one line each).
    """
    if not inputs:
        raise MergeError("no input reports given")
    seen: dict[Path, Path] = {}
    for path in [*inputs, output]:
        key = path.resolve()
        if key in seen:
            what = "is also an input" if path is output else "is given twice"
            raise MergeError(f"{path} {what}")
        seen[key] = path
    loaded: list[tuple[str, Mapping[str, Any]]] = []
    for path in inputs:
        try:
            loaded.append((str(path), load_report(path)))
        except OSError as exc:
            raise MergeError(f"{path}: cannot read: {exc.strerror}") from None
        except ValueError as exc:  # ReportFormatError: not JSON, wrong schema version
            raise MergeError(str(exc)) from None
    merged = merge_reports(loaded, run_id=run_id)
    try:
        write_report(output, merged)
    except OSError as exc:
        raise MergeError(f"{output}: cannot write: {exc.strerror}") from None
    return merged


# --------------------------------------------------------------------------------------------
# Reading one input


def _common_settings(all_settings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first, rest = all_settings[0], all_settings[1:]
    common = {
        key: value
        for key, value in first.items()
        if key != "targets" and all(key in other and other[key] == value for other in rest)
    }
    targets = [
        target
        for settings in all_settings
        for target in settings.get("targets", [])
        if isinstance(target, Mapping)
    ]
    targets.sort(key=lambda target: (str(target.get("project_id")), str(target)))
    return {"targets": targets, **common}


def _read(source: str, report: Mapping[str, Any]) -> _Input:
    reader = _Reader(source)
    reader.get(report, "run_id", str)
    reader.get(report, "dry_run", bool)
    code = reader.get(report, "exit_code", int)
    if not 0 <= code <= 255:
        reader.fail("exit_code", f"must be 0 to 255 (got {code})")
    interrupted = report.get("interrupted")
    if interrupted is not None and not isinstance(interrupted, str):
        reader.fail("interrupted", "must be a string or null")
    reader.get(report, "settings", dict)
    summary = reader.get(report, "summary", dict)
    reader.get(summary, "deadline_reached", bool, where="summary")
    blocks = reader.get(summary, "targets", list, where="summary")
    tasks = reader.get(report, "tasks", list)
    targets = tuple(
        reader.target(block, f"summary.targets[{index}]") for index, block in enumerate(blocks)
    )
    records = tuple(reader.task(task, f"tasks[{index}]") for index, task in enumerate(tasks))
    # Checked per input: merged, a task could otherwise pass as another input's target's.
    projects = {target.project_id for target in targets}
    for index, record in enumerate(records):
        if record.project_id not in projects:
            reader.fail(
                f"tasks[{index}].project_id",
                f"{record.project_id!r} is none of this report's targets",
            )
    return _Input(
        source=source,
        report=report,
        started_at=reader.timestamp(report, "started_at"),
        finished_at=reader.timestamp(report, "finished_at"),
        targets=targets,
        records=records,
    )


@dataclass(frozen=True, slots=True)
class _Reader:
    """Checks the parts of a report the merge uses, naming the input and place when wrong."""

    source: str

    def fail(self, where: str, message: str) -> NoReturn:
        raise MergeError(f"{self.source}: {where}: {message}")

    def get(self, mapping: Any, key: str, kind: type[Any], *, where: str = "") -> Any:
        place = f"{where}.{key}" if where else key
        if not isinstance(mapping, Mapping):
            self.fail(where or "report", "must be an object")
        if key not in mapping:
            self.fail(place, "missing")
        value = mapping[key]
        # bool is an int in Python; a count of True is not a count.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(place, f"must be {kind.__name__} (got {_short(value)})")
        return value

    def optional(self, mapping: Any, key: str, kind: type[Any], *, where: str) -> Any:
        if isinstance(mapping, Mapping) and mapping.get(key) is None:
            return None
        return self.get(mapping, key, kind, where=where)

    def count(self, mapping: Any, key: str, *, where: str) -> int:
        value: int = self.get(mapping, key, int, where=where)
        if value < 0:
            self.fail(f"{where}.{key}", f"must be 0 or more (got {value})")
        return value

    def timestamp(self, mapping: Any, key: str, *, where: str = "") -> datetime:
        text: str = self.get(mapping, key, str, where=where)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is None or moment.utcoffset() is None:
            self.fail(f"{where}.{key}" if where else key, f"not a UTC timestamp ({text!r})")
        return moment

    def counts(self, mapping: Any, key: str, *, where: str) -> dict[str, int]:
        block: Mapping[str, Any] = self.get(mapping, key, dict, where=where)
        return {str(name): self.count(block, name, where=f"{where}.{key}") for name in block}

    def error(self, mapping: Any, key: str, *, where: str) -> ErrorInfo | None:
        block = self.optional(mapping, key, dict, where=where)
        if block is None:
            return None
        place = f"{where}.{key}"
        # The report does not record the failed call's method and path; they stay blank.
        return ErrorInfo(
            method="",
            path="",
            http_status=self.optional(block, "http_status", int, where=place),
            error_code=self.optional(block, "error_code", str, where=place),
            error_msg=self.optional(block, "error_msg", str, where=place),
            request_id=self.optional(block, "request_id", str, where=place),
        )

    def target(self, block: Any, where: str) -> TargetSummary:
        requests = self.get(block, "requests_sent", dict, where=where)
        return TargetSummary(
            label=self.get(block, "label", str, where=where),
            project_id=self.get(block, "project_id", str, where=where),
            region=self.optional(block, "region", str, where=where),
            endpoint=self.get(block, "endpoint", str, where=where),
            listed=self.count(block, "listed", where=where),
            not_selected=self.counts(block, "not_selected", where=where),
            requests=self.counts(requests, "by_kind", where=f"{where}.requests_sent"),
            error=self.error(block, "error", where=where),
            offset_cap=self.offset_cap(block, "offset_cap", where=where),
        )

    def offset_cap(self, mapping: Any, key: str, *, where: str) -> OffsetCap | None:
        block = self.optional(mapping, key, dict, where=where)
        if block is None:
            return None
        place = f"{where}.{key}"
        return OffsetCap(
            passes=self.count(block, "passes", where=place),
            complete=self.get(block, "complete", bool, where=place),
            unseen=self.count(block, "unseen", where=place),
            note=self.get(block, "note", str, where=place),
        )

    def task(self, task: Any, where: str) -> TaskRecord:
        outcome_text: str = self.get(task, "outcome", str, where=where)
        try:
            outcome = Outcome(outcome_text)
        except ValueError:
            outcome = None
        if outcome is None:
            self.fail(f"{where}.outcome", f"unknown outcome {outcome_text!r}")
        start = None
        if isinstance(task, Mapping) and task.get("start_time") is not None:
            start = self.timestamp(task, "start_time", where=where)
        task_id = self.count(task, "id", where=where)
        if task_id < 1:
            self.fail(f"{where}.id", f"must be 1 or more (got {task_id})")
        return TaskRecord(
            id=task_id,
            name=self.get(task, "name", str, where=where),
            project_id=self.get(task, "project_id", str, where=where),
            status=self.get(task, "status", str, where=where),
            start_time=start,
            outcome=outcome,
            attempts=self.count(task, "attempts", where=where),
            last_error=self.error(task, "last_error", where=where),
        )


def _short(value: Any) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
