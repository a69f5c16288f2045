"""Combine the reports of one run's shards (the pods of an Indexed Job) into one report.

Every input is checked first (`report_check`: the JSON Schema, then its own arithmetic) and
a bad one is refused, named: a merge must not turn a hand-edited or cut-short report into a
clean-looking one. The rules:

- Inputs must be shards of one run: the same policy and dry-run flag and the same shard
  count. Every setting must agree except those in PER_SHARD_SETTINGS (a shard's targets, its
  index, where it wrote, how it was tuned and logged); a setting this version does not know
  must agree too. Inputs that differ are refused, naming the two files and the settings.
- Each shard index at most once, and targets disjoint: a project id that is a target in two
  inputs is an error. Two reports of one project (the same shard twice, or a run and its
  re-run) overlap in what they listed and may disagree about a task's outcome; no merged
  count would be true, so they are refused rather than reconciled.
- A shard index with no input is listed in `missing_shards`, and the merged `exit_code` is
  then at least 1: the missing shard's targets may have work left that no report shows.
  Unsharded runs (shard count 1) of disjoint targets may be merged; none can be missing.
- Task records and target blocks are carried over as they are, every field included; the
  summary's counts are recomputed as the sums of the target blocks, never copied.
- `started_at` is the earliest start, `finished_at` the latest finish, and `duration_seconds`
  the span between them (shards run side by side, so durations are not summed).
- `deadline_reached` if any input's was; `exit_code` is the most severe (see
  EXIT_SEVERITY); `interrupted` the first signal, in order of the inputs' start times.
- `run_id` is new; `merged_from` lists each input's run id, times, exit code and settings.
  `settings` holds what every input agrees on, with `targets` the union of theirs.
- Any other field (one a newer run writes) is kept when every input has the same value, and
  refused otherwise: this version cannot know how to combine it.
- A merged report is not an input: merge the shards' own reports again instead.

The merged report is checked like an input before it is returned (its task records, the
inputs' own, are not put through the schema twice). Inputs are ordered by
(started_at, run_id) first, so the result does not depend on the order they were named in.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from worker import __version__
from worker.exit_codes import EXIT_TASKS_LEFT
from worker.report import (
    SCHEMA_VERSION,
    load_report,
    utc_iso,
    write_report,
)
from worker.report_check import (
    COUNT_KEYS,
    COUNTS_BY_NAME_KEYS,
    ReportProblem,
    check_arithmetic,
    check_report,
    check_schema,
    sum_counts,
)

# From least to most severe. A fatal API error (4) and a safety abort (3) need a person; a
# usage error (2) cannot normally reach a report; a signal (128 + n) leaves work for the next
# run, as do tasks left over (1). A code not listed here is treated as the most severe: a
# merged report must not look better than its worst input.
EXIT_SEVERITY: tuple[str, ...] = ("0", "1", "signal", "2", "3", "4")
_SIGNAL_EXIT_MIN = 129

# Settings the shards of one run may differ in: which targets and index a shard had, where
# it wrote, and how it was tuned, authenticated and logged (a failed shard re-run with more
# time or debug logs is still that shard). None of them changes what the policy selects.
PER_SHARD_SETTINGS: frozenset[str] = frozenset(
    {
        "targets",
        "shard_index",
        "report",
        "metrics_textfile",
        "pushgateway",
        "log_format",
        "log_level",
        "rate",
        "concurrency",
        "requeue_delay",
        "max_attempts",
        "deadline",
        "connect_timeout",
        "request_timeout",
        "shutdown_grace",
        "ca_bundle",
        "allow_insecure_http",
        "secrets_dir",
        "auth_mode",
        "access_key",
        "yes",
    }
)

_ABSENT = object()


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
    """One input report, checked, with what the merge reads from it."""

    source: str
    report: Mapping[str, Any]
    started_at: datetime
    finished_at: datetime
    shard_index: int
    shard_count: int


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
    _check_one_run(inputs)
    _check_shards(inputs)
    _check_disjoint(inputs)
    shard_count = inputs[0].shard_count
    missing = sorted(set(range(shard_count)) - {item.shard_index for item in inputs})
    codes = [item.report["exit_code"] for item in inputs]
    top: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "run_id": run_id or uuid.uuid4().hex,
        "started_at": utc_iso(min(item.started_at for item in inputs)),
        "finished_at": utc_iso(max(item.finished_at for item in inputs)),
        "dry_run": inputs[0].report["dry_run"],
        "exit_code": most_severe_exit_code(codes + ([EXIT_TASKS_LEFT] if missing else [])),
        "interrupted": next(
            (item.report["interrupted"] for item in inputs if item.report["interrupted"]),
            None,
        ),
        # Placed before the settings so a reader sees first that this report is a merge.
        "merged_from": [_merged_from(item.report) for item in inputs],
        "missing_shards": missing,
        "settings": _common_settings([item.report["settings"] for item in inputs]),
        "summary": _summary(inputs),
        "tasks": sorted(
            (copy.deepcopy(task) for item in inputs for task in item.report["tasks"]),
            key=lambda task: (task["project_id"], task["id"]),
        ),
    }
    merged: dict[str, Any] = {}
    for key in _keys(item.report for item in inputs):
        if key == "settings":
            merged["merged_from"] = top["merged_from"]
            merged["missing_shards"] = top["missing_shards"]
        merged[key] = top[key] if key in top else _agreed(key, inputs, [key])
    try:
        # The task records are the inputs' own, each checked against the schema already; the
        # schema check of 100,000 records takes seconds, so it is not repeated.
        check_schema({**merged, "tasks": []})
        check_arithmetic(merged)
    except ReportProblem as exc:
        # Only a field this version combines wrongly can get here; better no report than that.
        raise MergeError(f"the merged report would not be valid: {exc}") from None
    return merged


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
# Reading and comparing the inputs


def _read(source: str, report: Mapping[str, Any]) -> _Input:
    try:
        check_report(report)
    except ReportProblem as exc:
        raise MergeError(f"{source}: {exc}") from None
    if "merged_from" in report:
        raise MergeError(
            f"{source}: is itself a merged report; merge the shards' own reports instead"
        )
    settings = report["settings"]
    try:
        # Python reads NaN and Infinity as JSON; the schema leaves settings open, and the
        # merged report (which holds every input's settings) could not be written.
        json.dumps(settings, allow_nan=False)
    except ValueError:
        raise MergeError(
            f"{source}: settings: holds NaN or Infinity, which JSON does not allow"
        ) from None
    count = _setting_int(source, settings, "shard_count", minimum=1)
    index = _setting_int(source, settings, "shard_index", minimum=0)
    if index >= count:
        raise MergeError(
            f"{source}: settings.shard_index: {index} is not below shard_count ({count})"
        )
    # The schema has checked the form; what is left is the calendar (a 31 April, say).
    times = []
    for key in ("started_at", "finished_at"):
        try:
            times.append(datetime.fromisoformat(report[key]))
        except ValueError:
            raise MergeError(f"{source}: {key}: not a date and time ({report[key]!r})") from None
    return _Input(
        source=source,
        report=report,
        started_at=times[0],
        finished_at=times[1],
        shard_index=index,
        shard_count=count,
    )


def _setting_int(source: str, settings: Mapping[str, Any], key: str, *, minimum: int) -> int:
    value = settings.get(key, _ABSENT)
    if value is _ABSENT:
        raise MergeError(f"{source}: settings.{key}: missing, so its shard cannot be told")
    # bool is an int in Python; a shard count of true is not a count.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MergeError(
            f"{source}: settings.{key}: must be an integer of {minimum} or more "
            f"(got {_shown(value)})"
        )
    return value


def _check_one_run(inputs: Sequence[_Input]) -> None:
    """Refuse inputs whose policy, dry-run flag or shard count differ from the first's."""
    first = inputs[0]
    for other in inputs[1:]:
        differences = []
        if first.report["dry_run"] != other.report["dry_run"]:
            differences.append(
                f"dry_run ({_shown(first.report['dry_run'])} vs {_shown(other.report['dry_run'])})"
            )
        mine, theirs = first.report["settings"], other.report["settings"]
        for key in _keys([mine, theirs]):
            # settings.dry_run and execute say again what the top-level dry_run said.
            if key in PER_SHARD_SETTINGS or (key in ("dry_run", "execute") and differences):
                continue
            a, b = _policy_value(mine.get(key, _ABSENT)), _policy_value(theirs.get(key, _ABSENT))
            if a != b:
                differences.append(f"{key} ({_shown(a)} vs {_shown(b)})")
        if differences:
            raise MergeError(
                f"{first.source} and {other.source} are not shards of one run: they differ in "
                f"{', '.join(differences)}"
            )


def _policy_value(value: Any) -> Any:
    """A setting as the policy sees it: a protection without the layers that gave it.

    protect_ids and name_exclude list `{"id" | "pattern": ..., "from": [layers]}`; the same
    protection given by the file in one shard and by a flag in another protects alike.
    """
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, Mapping) and "from" in item and len(item) == 2 for item in value)
    ):
        return sorted((next(v for k, v in item.items() if k != "from") for item in value), key=str)
    return value


def _check_shards(inputs: Sequence[_Input]) -> None:
    """Each shard of a sharded run at most once (unsharded runs are told apart by targets)."""
    if inputs[0].shard_count == 1:
        return
    by_index: dict[int, str] = {}
    for item in inputs:
        other = by_index.setdefault(item.shard_index, item.source)
        if other != item.source:
            raise MergeError(
                f"{other} and {item.source} are both shard {item.shard_index} of "
                f"{item.shard_count}: give one report per shard"
            )


def _check_disjoint(inputs: Sequence[_Input]) -> None:
    owner: dict[str, str] = {}
    for item in inputs:
        for target in item.report["summary"]["targets"]:
            other = owner.setdefault(target["project_id"], item.source)
            if other != item.source:
                raise MergeError(
                    f"project {target['project_id']!r} is a target in both {other} and "
                    f"{item.source}: only reports of disjoint targets can be merged"
                )


# --------------------------------------------------------------------------------------------
# Building the merged report


def _summary(inputs: Sequence[_Input]) -> dict[str, Any]:
    blocks = [
        copy.deepcopy(block) for item in inputs for block in item.report["summary"]["targets"]
    ]
    start = min(item.started_at for item in inputs)
    finish = max(item.finished_at for item in inputs)
    summary: dict[str, Any] = {}
    for key in _keys(item.report["summary"] for item in inputs):
        if key in COUNT_KEYS:
            summary[key] = sum(block[key] for block in blocks)
        elif key in COUNTS_BY_NAME_KEYS:
            summary[key] = sum_counts(block[key] for block in blocks)
        elif key == "requests_sent":
            by_kind = sum_counts(block[key]["by_kind"] for block in blocks)
            summary[key] = {"total": sum(by_kind.values()), "by_kind": by_kind}
        elif key == "duration_seconds":
            # A clock stepping back must not produce a negative duration.
            summary[key] = max(0.0, (finish - start).total_seconds())
        elif key == "deadline_reached":
            summary[key] = any(item.report["summary"][key] for item in inputs)
        elif key == "targets":
            summary[key] = blocks
        else:
            summary[key] = _agreed(f"summary.{key}", inputs, ["summary", key])
    return summary


def _merged_from(report: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "started_at", "finished_at", "dry_run", "exit_code", "interrupted")
    return {**{key: report[key] for key in keys}, "settings": copy.deepcopy(report["settings"])}


def _common_settings(all_settings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first, rest = all_settings[0], all_settings[1:]
    common = {
        key: copy.deepcopy(value)
        for key, value in first.items()
        if key != "targets" and all(key in other and other[key] == value for other in rest)
    }
    targets = [
        copy.deepcopy(target)
        for settings in all_settings
        for target in settings.get("targets", [])
        if isinstance(target, Mapping)
    ]
    targets.sort(key=lambda target: (str(target.get("project_id")), str(target)))
    return {"targets": targets, **common}


def _agreed(where: str, inputs: Sequence[_Input], path: Sequence[str]) -> Any:
    """A field the merge does not know: its value if every input has the same, else refused."""

    def value(item: _Input) -> Any:
        found: Any = item.report
        for part in path:
            found = found.get(part, _ABSENT) if isinstance(found, Mapping) else _ABSENT
        return found

    first = inputs[0]
    for other in inputs[1:]:
        if value(other) != value(first):
            raise MergeError(
                f"{first.source} and {other.source} differ in {where} "
                f"({_shown(value(first))} vs {_shown(value(other))}), which this version "
                f"cannot combine"
            )
    found = value(first)
    if found is _ABSENT:  # absent in every input: not reachable through _keys
        raise MergeError(f"{where}: missing")
    return copy.deepcopy(found)


def _keys(mappings: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of `mappings`, in order of first appearance."""
    return list(dict.fromkeys(key for mapping in mappings for key in mapping))


def _shown(value: Any) -> str:
    """A value for a one-line message, as JSON, cut short."""
    if value is _ABSENT:
        return "absent"
    try:
        text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
