"""The JSON report: derived counts, ordering, schema validity, atomic writing."""

from __future__ import annotations

import copy
import enum
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest

from worker.oms.errors import ErrorInfo
from worker.oms.models import TaskStatus
from worker.outcomes import Outcome
from worker.report import (
    SCHEMA_VERSION,
    ReportFormatError,
    TargetSummary,
    TaskRecord,
    build_report,
    check_writable,
    load_report,
    report_schema,
    utc_iso,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
START = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
FINISH = START + timedelta(seconds=42.5)
PROJECT_A = "0123456789abcdef0123456789abcdef"
PROJECT_B = "fedcba9876543210fedcba9876543210"


def _error(code: str = "OMS.0063", status: int = 400) -> ErrorInfo:
    return ErrorInfo(
        method="DELETE",
        path=f"/v2/{PROJECT_A}/tasks/7",
        http_status=status,
        error_code=code,
        error_msg="task is running",
        request_id="req-7",
    )


def _record(
    task_id: int,
    outcome: Outcome,
    *,
    project_id: str = PROJECT_A,
    attempts: int = 1,
    last_error: ErrorInfo | None = None,
    start_time: datetime | None = START - timedelta(days=40),
) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        name=f"task-{task_id}",
        project_id=project_id,
        status=TaskStatus.SUCCEEDED.label,
        start_time=start_time,
        outcome=outcome,
        attempts=attempts,
        last_error=last_error,
    )


def _targets() -> list[TargetSummary]:
    return [
        TargetSummary(
            label="prod-bj4",
            project_id=PROJECT_A,
            region="cn-north-4",
            endpoint="https://oms.cn-north-4.myhuaweicloud.com",
            listed=10,
            not_selected={"too_young": 3, "state": 2},
            requests={"list": 2, "delete": 6},
        ),
        TargetSummary(
            label="local",
            project_id=PROJECT_B,
            region=None,
            endpoint="http://127.0.0.1:8443",
            listed=4,
            not_selected={"too_young": 1, "protected": 1},
            requests={"list": 1, "delete": 2, "show": 1},
        ),
    ]


def _build(records: list[TaskRecord], **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "run_id": "run-1",
        "started_at": START,
        "finished_at": FINISH,
        "dry_run": False,
        "exit_code": 0,
        "interrupted": None,
        "settings": {"older_than": "30d", "concurrency": 8},
        "targets": _targets(),
        "records": records,
    }
    arguments.update(overrides)
    return build_report(**arguments)


def _executing_records() -> list[TaskRecord]:
    return [
        _record(5, Outcome.DELETED),
        _record(3, Outcome.ALREADY_GONE, attempts=2),
        _record(9, Outcome.STILL_RUNNING, attempts=4, last_error=_error()),
        _record(1, Outcome.FAILED, last_error=_error("OMS.2004", 500)),
        _record(2, Outcome.DELETED, project_id=PROJECT_B),
        _record(8, Outcome.DELETED, start_time=None),
        _record(7, Outcome.NOT_ATTEMPTED, project_id=PROJECT_B, attempts=0),
    ]


def _scenario(name: str) -> dict[str, Any]:
    if name == "dry_run":
        records = [_record(i, Outcome.WOULD_DELETE, attempts=0) for i in (4, 2, 6)]
        return _build(records, dry_run=True)
    if name == "executing":
        return _build(_executing_records())
    if name == "interrupted":
        records = [_record(1, Outcome.DELETED), _record(2, Outcome.NOT_ATTEMPTED, attempts=0)]
        return _build(records, interrupted="SIGTERM", exit_code=130)
    if name == "deadline":
        records = [_record(1, Outcome.DELETED), _record(2, Outcome.NOT_ATTEMPTED, attempts=0)]
        return _build(records, deadline_reached=True, exit_code=3)
    if name == "with_errors":
        records = [_record(1, Outcome.FAILED, attempts=5, last_error=_error("OMS.2004", 503))]
        targets = [
            *_targets()[:1],
            TargetSummary(
                label="denied",
                project_id=PROJECT_B,
                region="ap-southeast-1",
                endpoint="https://oms.ap-southeast-1.myhuaweicloud.com",
                listed=0,
                requests={"list": 1},
                error=_error("OMS.0206", 403),
            ),
        ]
        return _build(records, targets=targets, exit_code=2)
    if name == "empty":
        return _build([], targets=[], settings={})
    raise AssertionError(name)


SCENARIOS = ["dry_run", "executing", "interrupted", "deadline", "with_errors", "empty"]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    """A strict validator for the shipped schema, formats checked."""
    schema = report_schema()
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


# --- the schema itself -------------------------------------------------------------------------


def test_published_schema_is_identical_to_packaged_schema() -> None:
    """config/report.schema.json is byte-for-byte the copy inside the package."""
    published = (REPO / "config" / "report.schema.json").read_bytes()
    packaged = (REPO / "worker" / "report.schema.json").read_bytes()
    assert published == packaged
    assert report_schema() == json.loads(published)


def test_schema_is_valid_draft_2020_12() -> None:
    """The schema itself passes the draft 2020-12 meta-schema."""
    schema = report_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_enums_match_the_code() -> None:
    """Outcome and status enums in the schema are exactly the code's vocabularies."""
    defs = report_schema()["$defs"]
    assert set(defs["outcome"]["enum"]) == {o.value for o in Outcome}
    assert set(defs["task_status"]["enum"]) == {s.label for s in TaskStatus}
    assert report_schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION


# --- built reports validate ------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_built_reports_validate(scenario: str, validator: jsonschema.Draft202012Validator) -> None:
    """Every kind of run produces a report the schema accepts."""
    built = _scenario(scenario)
    errors = [e.message for e in validator.iter_errors(built)]
    assert errors == []


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(report: dict[str, Any]) -> None:
        node: Any = report
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return mutate


def _delete(path: tuple[str | int, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(report: dict[str, Any]) -> None:
        node: Any = report
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return mutate


@pytest.mark.parametrize(
    ("mutation", "why"),
    [
        (_set(("tasks", 0, "outcome"), "removed"), "outcome outside the vocabulary"),
        (_set(("tasks", 0, "id"), "5"), "task id as a string"),
        (_set(("tasks", 0, "id"), 0), "task id not positive"),
        (_set(("tasks", 0, "status"), "done"), "status outside the vocabulary"),
        (_set(("tasks", 0, "start_time"), "2026-11-27T13:00:00+01:00"), "timestamp not UTC"),
        (_set(("tasks", 0, "start_time"), 1764244800000), "timestamp as epoch millis"),
        (_set(("tasks", 0, "attempts"), -1), "negative attempts"),
        (_set(("tasks", 0, "secret"), "x"), "extra key in a task"),
        (_delete(("tasks", 0, "last_error")), "missing last_error"),
        (_delete(("tasks", 0, "last_error", "request_id")), "error without request_id"),
        (_set(("tasks", 0, "last_error", "http_status"), "400"), "http status as a string"),
        (_set(("extra",), 1), "extra top-level key"),
        (_delete(("run_id",)), "missing run_id"),
        (_set(("schema_version",), 2), "unknown schema version"),
        (_set(("interrupted",), ""), "empty interruption reason"),
        (_set(("interrupted",), True), "interruption as a boolean"),
        (_set(("exit_code",), 256), "exit code out of range"),
        (_set(("finished_at",), "yesterday"), "finished_at not a timestamp"),
        (_set(("summary", "deleted"), -1), "negative count"),
        (
            _delete(
                ("summary", "would_delete"),
            ),
            "summary missing an outcome count",
        ),
        (_set(("summary", "bogus"), 1), "extra key in summary"),
        (_set(("summary", "not_selected", "state"), "2"), "reason count as a string"),
        (_delete(("summary", "requests_sent", "total")), "requests without total"),
        (_set(("summary", "targets", 0, "bogus"), 1), "extra key in a target"),
        (_delete(("summary", "targets", 0, "endpoint")), "target without endpoint"),
        (_set(("summary", "targets", 0, "error"), {"http_status": 403}), "partial error"),
    ],
)
def test_invalid_reports_are_rejected(
    mutation: Callable[[dict[str, Any]], None], why: str, validator: jsonschema.Draft202012Validator
) -> None:
    """The schema is strict: each single corruption of a valid report fails validation."""
    broken = copy.deepcopy(_scenario("executing"))
    assert validator.is_valid(broken)
    mutation(broken)
    assert not validator.is_valid(broken), why


# --- derived content -------------------------------------------------------------------------


def test_summary_counts_are_derived_from_records() -> None:
    """Outcome counts, selected, listed, reasons and requests add up across targets."""
    summary = _scenario("executing")["summary"]
    assert summary["selected"] == 7
    assert {o.value: summary[o.value] for o in Outcome} == {
        "deleted": 3,
        "already_gone": 1,
        "still_running": 1,
        "failed": 1,
        "would_delete": 0,
        "not_attempted": 1,
        "changed": 0,
    }
    assert summary["listed"] == 14
    assert summary["not_selected"] == {"protected": 1, "state": 2, "too_young": 4}
    assert summary["requests_sent"] == {
        "total": 12,
        "by_kind": {"delete": 8, "list": 3, "show": 1},
    }
    assert summary["duration_seconds"] == 42.5
    assert summary["deadline_reached"] is False


def test_per_target_summaries_count_only_their_records() -> None:
    """Each target block counts the records of its own project."""
    a, b = _scenario("executing")["summary"]["targets"]
    assert (a["label"], a["region"], a["selected"], a["deleted"]) == (
        "prod-bj4",
        "cn-north-4",
        5,
        2,
    )
    assert (b["label"], b["region"], b["selected"], b["deleted"]) == ("local", None, 2, 1)
    assert b["not_attempted"] == 1
    assert a["requests_sent"]["total"] == 8
    assert b["endpoint"] == "http://127.0.0.1:8443"
    assert a["error"] is None


def test_tasks_are_sorted_by_project_then_id() -> None:
    """Records come out in (project_id, id) order whatever order they arrived in."""
    tasks = _scenario("executing")["tasks"]
    keys = [(t["project_id"], t["id"]) for t in tasks]
    assert keys == sorted(keys)
    assert [t["id"] for t in tasks] == [1, 3, 5, 8, 9, 2, 7]


def test_task_entry_shape() -> None:
    """A task entry carries the record's values, timestamps in UTC and the error's report form."""
    tasks = {t["id"]: t for t in _scenario("executing")["tasks"]}
    assert tasks[9] == {
        "id": 9,
        "name": "task-9",
        "project_id": PROJECT_A,
        "status": "succeeded",
        "start_time": "2026-10-18T12:00:00Z",
        "outcome": "still_running",
        "attempts": 4,
        "last_error": {
            "http_status": 400,
            "error_code": "OMS.0063",
            "error_msg": "task is running",
            "request_id": "req-7",
        },
        "stopped_at": None,
    }
    assert tasks[8]["start_time"] is None


def test_interruption_and_deadline_are_reported_apart() -> None:
    """A signal sets `interrupted`; a deadline sets `summary.deadline_reached` only."""
    interrupted = _scenario("interrupted")
    deadline = _scenario("deadline")
    assert (interrupted["interrupted"], interrupted["summary"]["deadline_reached"]) == (
        "SIGTERM",
        False,
    )
    assert (deadline["interrupted"], deadline["summary"]["deadline_reached"]) == (None, True)


def test_target_error_is_reported() -> None:
    """A target that failed (403 while listing) carries the API's error in its block."""
    denied = _scenario("with_errors")["summary"]["targets"][1]
    assert denied["error"]["http_status"] == 403
    assert denied["error"]["error_code"] == "OMS.0206"
    assert denied["selected"] == 0


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC), "2026-01-02T03:04:05.120000Z"),
        (
            datetime(2026, 1, 2, 11, 4, 5, tzinfo=timezone(timedelta(hours=8))),
            "2026-01-02T03:04:05Z",
        ),
    ],
)
def test_utc_iso(moment: datetime, expected: str) -> None:
    """Aware datetimes in any zone are written in UTC with a Z suffix."""
    assert utc_iso(moment) == expected


def test_duration_never_negative() -> None:
    """A clock stepping back yields a zero duration, not a negative one."""
    built = _build([], finished_at=START - timedelta(seconds=5))
    assert built["summary"]["duration_seconds"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"records": [_record(1, Outcome.DELETED, project_id="nobody")]}, "no target"),
        ({"records": [_record(1, Outcome.DELETED), _record(1, Outcome.FAILED)]}, "two records"),
        ({"targets": _targets() + _targets()[:1]}, "two targets"),
        ({"started_at": datetime(2026, 1, 1)}, "naive"),
        ({"records": [_record(1, Outcome.DELETED, start_time=datetime(2026, 1, 1))]}, "naive"),
    ],
)
def test_inconsistent_inputs_are_refused(overrides: dict[str, Any], message: str) -> None:
    """Inputs that would make the report lie raise ValueError instead."""
    arguments = dict(overrides)
    records = arguments.pop("records", [])
    with pytest.raises(ValueError, match=message):
        _build(records, **arguments)


class _Mode(enum.Enum):
    FAST = "fast"


def test_settings_are_masked_and_made_json_ready() -> None:
    """Secret-named settings are masked again; paths, durations, enums become JSON values."""
    settings = {
        "credentials": {"ak": "AKTEST", "sk": "plain-sk", "security_token": "tok"},
        "iam_token": None,
        "report_path": Path("/tmp/r.json"),
        "older_than": timedelta(days=30),
        "mode": _Mode.FAST,
        "states": frozenset({"failed", "succeeded"}),
        "targets": [{"project_id": PROJECT_A, "password": "pw"}],
    }
    masked = _build([], settings=settings)["settings"]
    assert masked == {
        "credentials": "***",
        "iam_token": None,
        "report_path": "/tmp/r.json",
        "older_than": 2592000.0,
        "mode": "fast",
        "states": ["failed", "succeeded"],
        "targets": [{"project_id": PROJECT_A, "password": "***"}],
    }
    assert "plain-sk" not in json.dumps(masked)


def test_records_are_slotted() -> None:
    """TaskRecord has no per-instance dict, so 100,000 of them stay cheap."""
    record = _record(1, Outcome.DELETED)
    assert not hasattr(record, "__dict__")
    with pytest.raises(AttributeError):
        record.attempts = 2  # type: ignore[misc]


# --- writing and reading -----------------------------------------------------------------------


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    """What is written is read back equal, one line per task, no temp file left."""
    built = _scenario("executing")
    path = tmp_path / "report.json"
    write_report(path, built)
    assert load_report(path) == built
    task_lines = [line for line in path.read_text().splitlines() if '"outcome"' in line]
    assert len(task_lines) == len(built["tasks"])
    assert _temp_files(tmp_path) == []


def test_write_replaces_existing_report(tmp_path: Path) -> None:
    """A second write replaces the first completely."""
    path = tmp_path / "report.json"
    write_report(path, _scenario("executing"))
    write_report(path, _scenario("empty"))
    assert load_report(path)["tasks"] == []


def test_failed_write_keeps_old_report_and_removes_temp(tmp_path: Path) -> None:
    """An encoding failure mid-write leaves the previous report intact and no temp file."""
    path = tmp_path / "report.json"
    write_report(path, _scenario("dry_run"))
    before = path.read_bytes()
    broken = _scenario("executing")
    broken["settings"] = {"unserialisable": object()}
    with pytest.raises(TypeError):
        write_report(path, broken)
    assert path.read_bytes() == before
    assert _temp_files(tmp_path) == []


def test_failed_fsync_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure at fsync (disk full, I/O error) removes the temp file and creates no report."""

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    path = tmp_path / "report.json"
    with pytest.raises(OSError, match="No space"):
        write_report(path, _scenario("empty"))
    assert not path.exists()
    assert _temp_files(tmp_path) == []


@pytest.fixture
def umask_027() -> Iterator[None]:
    """Run with umask 027, restored afterwards."""
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_027")
def test_written_report_mode_follows_umask(tmp_path: Path) -> None:
    """The report gets 0666 minus the umask, like any newly created file (not mkstemp's 0600)."""
    path = tmp_path / "report.json"
    write_report(path, _scenario("empty"))
    assert path.stat().st_mode & 0o777 == 0o640


def test_odd_task_names_survive(tmp_path: Path) -> None:
    """Non-ASCII names and a lone surrogate (legal in the API's JSON) are written and read back."""
    names = ["nightly copy/é", "line\nbreak", "\ud800"]
    records = [
        TaskRecord(
            id=i + 1,
            name=name,
            project_id=PROJECT_A,
            status="failed",
            start_time=None,
            outcome=Outcome.FAILED,
            attempts=1,
        )
        for i, name in enumerate(names)
    ]
    path = tmp_path / "report.json"
    write_report(path, _build(records))
    assert [t["name"] for t in load_report(path)["tasks"]] == names


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"schema_version": 99}', "schema_version 99"),
        ("{}", "schema_version None"),
    ],
)
def test_load_rejects_non_reports(tmp_path: Path, content: str, message: str) -> None:
    """Reading something that is not a current report raises ReportFormatError."""
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(ReportFormatError, match=message):
        load_report(path)


def test_changed_outcome_is_counted_and_valid(validator: jsonschema.Draft202012Validator) -> None:
    """A task the policy no longer selected on re-judging: its own count, a valid report."""
    records = [
        _record(1, Outcome.DELETED),
        _record(2, Outcome.CHANGED),
        _record(3, Outcome.CHANGED),
    ]
    report = _build(records)
    assert validator.is_valid(report)
    assert report["summary"]["changed"] == 2
    assert report["summary"]["targets"][0]["changed"] == 2
    assert {t["id"]: t["outcome"] for t in report["tasks"]} == {
        1: "deleted",
        2: "changed",
        3: "changed",
    }
    # The count is required like every outcome's: a report without it is not this schema's.
    del report["summary"]["changed"]
    assert not validator.is_valid(report)


def test_writability_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    """check_writable creates and removes its probe; the report itself is not created."""
    check_writable(tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []


def test_writability_probe_refuses_a_directory_and_procfs(tmp_path: Path) -> None:
    """A directory at the path, or a filesystem taking no new files (even for root), fails."""
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)
    with pytest.raises(OSError, match=r"No such file|Permission denied"):
        check_writable(Path("/proc/self/report.json"))


def test_two_targets_with_one_project_id_still_make_a_report() -> None:
    """Records grouped per target: one project twice is reported, each block its own counts."""
    record = TaskRecord(
        id=1,
        name="t",
        project_id=PROJECT_A,
        status="succeeded",
        start_time=None,
        outcome=Outcome.DELETED,
        attempts=1,
    )
    again = replace(record, outcome=Outcome.ALREADY_GONE)
    targets = [
        TargetSummary(label=label, project_id=PROJECT_A, region=None, endpoint="e", listed=1)
        for label in ("first", "second")
    ]
    report = build_report(
        run_id="r",
        started_at=datetime(2026, 11, 27, tzinfo=UTC),
        finished_at=datetime(2026, 11, 27, tzinfo=UTC),
        dry_run=False,
        exit_code=0,
        interrupted=None,
        settings={},
        targets=targets,
        records=[record, again],
        records_by_target=[[record], [again]],
    )
    jsonschema.validate(report, report_schema())
    first, second = report["summary"]["targets"]
    assert (first["deleted"], first["already_gone"]) == (1, 0)
    assert (second["deleted"], second["already_gone"]) == (0, 1)
    assert report["summary"]["selected"] == 2
