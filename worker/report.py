"""The JSON report of one run: what was listed, selected and done, per task and per target.

Every count in the summary is derived here from the task records (and the targets' listing
counts), never passed in, so the summary cannot disagree with the records. The report is
written atomically: a reader sees the previous file or the complete new one, never half.

The schema's canonical copy is `worker/report.schema.json` (package data, so an installed wheel
finds it); `config/report.schema.json` is the published copy, kept identical by a test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

from worker import __version__
from worker.logs import REDACTED, is_secret_key
from worker.oms.errors import ErrorInfo
from worker.oms.models import MalformedTask
from worker.outcomes import Outcome

SCHEMA_VERSION = 1
SCHEMA_RESOURCE = "report.schema.json"


class ReportFormatError(ValueError):
    """A file that is not a report this version can read."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What happened to one selected task. `status` is the listed status's label."""

    id: int
    name: str
    project_id: str
    status: str
    start_time: datetime | None
    outcome: Outcome
    attempts: int
    last_error: ErrorInfo | None = None
    # When this run paused the task (--stop-running), None when it did not.
    stopped_at: datetime | None = None

    def as_report(self) -> dict[str, Any]:
        """The task's entry in the report's `tasks` array."""
        return {
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "status": self.status,
            "start_time": None if self.start_time is None else utc_iso(self.start_time),
            "outcome": self.outcome.value,
            "attempts": self.attempts,
            "last_error": None if self.last_error is None else self.last_error.as_report(),
            "stopped_at": None if self.stopped_at is None else utc_iso(self.stopped_at),
        }


@dataclass(frozen=True, slots=True)
class TargetSummary:
    """What the run knows about one target besides its task records.

    `requests` is the client's requests sent by kind; `error` is what stopped work on the
    target early (a 403 while listing or deleting, say), None when nothing did. `offset_cap`
    is set only when the API's offset cap cut a listing short. `listing` says how far the
    listing got (`complete`, `stopped` by the run's stop, `failed`, `not_started`): tasks of
    a listing that did not complete were never judged, so they are in no count.
    `max_deletions` is the cap check that applied here, None without the option.
    """

    label: str
    project_id: str
    region: str | None
    endpoint: str
    listed: int
    not_selected: Mapping[str, int] = field(default_factory=dict)
    requests: Mapping[str, int] = field(default_factory=dict)
    error: ErrorInfo | None = None
    offset_cap: OffsetCap | None = None
    listing: str = "complete"
    max_deletions: CapCheck | None = None
    # Task entries OMS sent that could not be read (at most MALFORMED_SHOWN of them).
    malformed: Sequence[MalformedTask] = ()
    unproven_listing: UnprovenListing | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CapCheck:
    """`--max-deletions` as it applied to one target.

    `applies_to` is "target" for a percentage (of this target's own listing, `base` tasks)
    or "run" for an absolute count (of the run's total: `base` is every target's tasks).
    """

    cap: str
    applies_to: str
    base: int
    limit: int
    exceeded: bool = False

    def as_report(self) -> dict[str, Any]:
        """The target's `max_deletions` block."""
        # Flat values only, in field order: the block is the fields as they are.
        return dataclasses.asdict(self)


# A report lists this many malformed entries per target at most; `not_selected.malformed`
# counts them all.
MALFORMED_SHOWN = 100


@dataclass(frozen=True, slots=True)
class UnprovenListing:
    """A target listing whose pages disagreed with the counts OMS reported, on every read.

    `complete` says the last pass's listing was shown complete after all; otherwise up to
    `may_be_unseen` tasks may have been missed (neither judged nor deleted).
    """

    passes: int
    complete: bool
    may_be_unseen: int
    reads: int
    note: str

    def as_report(self) -> dict[str, Any]:
        """The target's `unproven_listing` block."""
        # Flat values only, in field order: the block is the fields as they are.
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class OffsetCap:
    """How the API's offset cap shaped one target's listing (absent when it was never hit).

    `complete` says the last pass listed every task; otherwise `unseen` tasks OMS counted were
    beyond the window: neither judged nor deleted. `note` says so in a sentence.
    """

    passes: int
    complete: bool
    unseen: int
    note: str

    def as_report(self) -> dict[str, Any]:
        """The target's `offset_cap` block."""
        # Flat values only, in field order: the block is the fields as they are.
        return dataclasses.asdict(self)


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z` suffix. Naive datetimes are refused: their zone is a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: the report needs an aware time")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _outcome_counts(records: Iterable[TaskRecord]) -> dict[str, int]:
    counts = Counter(record.outcome for record in records)
    return {outcome.value: counts[outcome] for outcome in Outcome}


def _requests_sent(by_kind: Mapping[str, int]) -> dict[str, Any]:
    return {"total": sum(by_kind.values()), "by_kind": dict(sorted(by_kind.items()))}


def _counts_block(
    *,
    listed: int,
    records: Sequence[TaskRecord],
    not_selected: Mapping[str, int],
    requests: Mapping[str, int],
) -> dict[str, Any]:
    return {
        "listed": listed,
        "selected": len(records),
        **_outcome_counts(records),
        "not_selected": dict(sorted(not_selected.items())),
        "requests_sent": _requests_sent(requests),
    }


def _sum_mappings(mappings: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for mapping in mappings:
        total.update(mapping)
    return dict(total)


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a settings value, secret-named keys masked.

    Settings arrive masked already; this is the second lock on that door. Values JSON cannot
    hold become strings rather than failing the report at the end of a run.
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, datetime):
        return utc_iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if is_secret_key(str(k)) and v is not None else _plain(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_plain(item) for item in items]
    return str(value)


def build_report(
    *,
    run_id: str,
    started_at: datetime,
    finished_at: datetime,
    dry_run: bool,
    exit_code: int,
    interrupted: str | None,
    settings: Mapping[str, Any],
    targets: Sequence[TargetSummary],
    records: Iterable[TaskRecord],
    deadline_reached: bool = False,
    records_by_target: Sequence[Sequence[TaskRecord]] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict; tasks sorted by (project_id, id).

    `interrupted` is the signal that stopped the run (e.g. "SIGTERM"), None otherwise; running
    out of time is not an interruption and is told by `deadline_reached`.

    A run passes `records_by_target` (each target's own records, in `targets` order): then
    whatever the targets are (one project twice included), each block counts its own
    records and nothing is refused: a report is written whatever happened. Without it the
    records are matched to targets by project id, and ValueError is raised for inputs that
    would make the report lie: a record whose project is no target's, two targets with one
    project id, or two records for one task.
    """
    started_text, finished_text = utc_iso(started_at), utc_iso(finished_at)
    if records_by_target is not None:
        if len(records_by_target) != len(targets):
            raise ValueError("records_by_target needs one list of records per target")
        own = [list(bucket) for bucket in records_by_target]
        every = sorted(
            (record for bucket in own for record in bucket),
            key=lambda r: (r.project_id, r.id),
        )
        return _assemble(
            run_id=run_id,
            started_text=started_text,
            finished_text=finished_text,
            duration=(finished_at - started_at).total_seconds(),
            dry_run=dry_run,
            exit_code=exit_code,
            interrupted=interrupted,
            settings=settings,
            targets=list(zip(targets, own, strict=True)),
            ordered=every,
            deadline_reached=deadline_reached,
        )
    by_project: dict[str, list[TaskRecord]] = {}
    for target in targets:
        if target.project_id in by_project:
            raise ValueError(f"two targets with project id {target.project_id!r}")
        by_project[target.project_id] = []
    for record in records:
        bucket = by_project.get(record.project_id)
        if bucket is None:
            raise ValueError(f"task {record.id} belongs to no target ({record.project_id!r})")
        bucket.append(record)

    ordered: list[TaskRecord] = []
    for project_id in sorted(by_project):
        bucket = by_project[project_id]
        bucket.sort(key=lambda r: r.id)
        for previous, current in itertools.pairwise(bucket):
            if previous.id == current.id:
                raise ValueError(f"two records for task {current.id} in {project_id!r}")
        ordered.extend(bucket)
    return _assemble(
        run_id=run_id,
        started_text=started_text,
        finished_text=finished_text,
        duration=(finished_at - started_at).total_seconds(),
        dry_run=dry_run,
        exit_code=exit_code,
        interrupted=interrupted,
        settings=settings,
        targets=[(t, by_project[t.project_id]) for t in targets],
        ordered=ordered,
        deadline_reached=deadline_reached,
    )


def _assemble(
    *,
    run_id: str,
    started_text: str,
    finished_text: str,
    duration: float,
    dry_run: bool,
    exit_code: int,
    interrupted: str | None,
    settings: Mapping[str, Any],
    targets: Sequence[tuple[TargetSummary, Sequence[TaskRecord]]],
    ordered: Sequence[TaskRecord],
    deadline_reached: bool,
) -> dict[str, Any]:
    target_blocks = [
        {
            "label": t.label,
            "project_id": t.project_id,
            "region": t.region,
            "endpoint": t.endpoint,
            **_counts_block(
                listed=t.listed,
                records=records,
                not_selected=t.not_selected,
                requests=t.requests,
            ),
            "error": None if t.error is None else t.error.as_report(),
            "listing": t.listing,
            "max_deletions": None if t.max_deletions is None else t.max_deletions.as_report(),
            **({} if t.offset_cap is None else {"offset_cap": t.offset_cap.as_report()}),
            **(
                {}
                if t.unproven_listing is None
                else {"unproven_listing": t.unproven_listing.as_report()}
            ),
            **(
                {"malformed": [{"id": m.id, "problem": m.problem} for m in t.malformed]}
                if t.malformed
                else {}
            ),
        }
        for t, records in targets
    ]
    summary = {
        **_counts_block(
            listed=sum(t.listed for t, _ in targets),
            records=ordered,
            not_selected=_sum_mappings(t.not_selected for t, _ in targets),
            requests=_sum_mappings(t.requests for t, _ in targets),
        ),
        # A clock stepping back must not produce a negative duration.
        "duration_seconds": max(0.0, duration),
        "deadline_reached": deadline_reached,
        "targets": target_blocks,
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "run_id": run_id,
        "started_at": started_text,
        "finished_at": finished_text,
        "dry_run": dry_run,
        "exit_code": exit_code,
        "interrupted": interrupted,
        "settings": _plain(settings),
        "summary": summary,
        "tasks": [record.as_report() for record in ordered],
    }


def _encode(report: Mapping[str, Any]) -> Iterator[str]:
    """The report as text: indented, except one line per task so 100,000 tasks stay compact.

    ASCII escapes throughout: a task name holding a lone surrogate (valid in the API's JSON)
    must not make the UTF-8 write fail at the end of a run.
    """
    yield "{\n"
    keys = list(report)
    for index, key in enumerate(keys):
        value = report[key]
        separator = ",\n" if index < len(keys) - 1 else "\n"
        yield f"  {json.dumps(key)}: "
        if key == "tasks" and isinstance(value, list) and value:
            yield "[\n"
            last = len(value) - 1
            for position, task in enumerate(value):
                yield "    " + json.dumps(task, allow_nan=False)
                yield ",\n" if position < last else "\n"
            yield "  ]"
        else:
            text = json.dumps(value, indent=2, allow_nan=False)
            yield text.replace("\n", "\n  ")
        yield separator
    yield "}\n"


def _file_mode() -> int:
    # mkstemp creates 0600; give the report the mode any newly created file would get.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def check_writable(path: Path) -> None:
    """Prove the report can be written: create and remove a temporary file beside it.

    Raises OSError (with a strerror) when it cannot: a missing or read-only directory, a
    directory at `path` itself, a filesystem like /proc that takes no new files.
    """
    if path.is_dir():
        raise IsADirectoryError(21, "it is a directory", str(path))
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
    try:
        os.close(fd)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write atomically: temp file in the same directory, fsync, rename over `path`.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    directory = path.parent
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for chunk in _encode(report):
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), _file_mode())
            os.fsync(out.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is; not every platform allows this.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_report(path: Path) -> dict[str, Any]:
    """Read a report back; ReportFormatError when it is not one of this schema version."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportFormatError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ReportFormatError(f"{path}: a report is a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportFormatError(
            f"{path}: schema_version {version!r}, this version reads {SCHEMA_VERSION}"
        )
    return data


def report_schema() -> dict[str, Any]:
    """The report's JSON Schema (draft 2020-12), from the installed package."""
    text = resources.files("worker").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
