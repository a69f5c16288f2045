"""merge-reports: recomputed summaries, severity, ordering, refusals, and real sharded runs."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import SimulatorFactory

from worker.cli import run_cli
from worker.merge import MergeError, merge_report_files, merge_reports, most_severe_exit_code
from worker.oms.errors import ErrorInfo
from worker.outcomes import Outcome
from worker.report import (
    TargetSummary,
    TaskRecord,
    build_report,
    load_report,
    report_schema,
    write_report,
)
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_CLIENT_CREDENTIALS,
)

T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def a_report(
    project: str,
    outcomes: list[str],
    *,
    started: timedelta = timedelta(),
    took: timedelta = timedelta(minutes=1),
    exit_code: int = 0,
    dry_run: bool = False,
    interrupted: str | None = None,
    deadline_reached: bool = False,
    run_id: str | None = None,
    settings: Mapping[str, Any] | None = None,
    listed: int | None = None,
) -> dict[str, Any]:
    """A report of one target `project` whose tasks 1.. have the given outcomes."""
    error = ErrorInfo(method="DELETE", path="/x", http_status=500, request_id="req-1")
    records = [
        TaskRecord(
            id=index,
            name=f"task-{project}-{index}",
            project_id=project,
            status="succeeded",
            start_time=T0 - timedelta(days=40),
            outcome=Outcome(outcome),
            attempts=1,
            last_error=error if outcome == "failed" else None,
        )
        for index, outcome in enumerate(outcomes, start=1)
    ]
    target = TargetSummary(
        label=f"cn-north-4/{project}",
        project_id=project,
        region="cn-north-4",
        endpoint="https://oms.cn-north-4.myhuaweicloud.com",
        listed=len(outcomes) + 3 if listed is None else listed,
        not_selected={"too_young": 2, "protected": 1},
        requests={"list": 1, "delete": len(outcomes)},
    )
    return build_report(
        run_id=run_id or f"run-{project}",
        started_at=T0 + started,
        finished_at=T0 + started + took,
        dry_run=dry_run,
        exit_code=exit_code,
        interrupted=interrupted,
        settings=settings or {"targets": [{"project_id": project}], "rate": 20.0},
        targets=[target],
        records=records,
        deadline_reached=deadline_reached,
    )


def check_schema(report: Mapping[str, Any]) -> None:
    """Validate against the published schema, formats included."""
    jsonschema.Draft202012Validator(
        report_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(report)


# ------------------------------------------------------------------------------------------
# Exit codes


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([0], 0),
        ([0, 0, 0], 0),
        ([0, 1], 1),
        ([1, 130], 130),
        ([143, 130], 143),
        ([130, 0, 1], 130),
        ([143, 3], 3),
        ([3, 4, 0], 4),
        ([4, 143], 4),
        ([2, 143], 2),
        ([3, 2], 3),
        ([4, 7], 7),
        ([0, 128], 128),
    ],
)
def test_most_severe_exit_code(codes: list[int], expected: int) -> None:
    """4 > 3 > 2 > a signal > 1 > 0, and a code we do not know outranks them all."""
    assert most_severe_exit_code(codes) == expected
    assert most_severe_exit_code(list(reversed(codes))) == expected


# ------------------------------------------------------------------------------------------
# What the merged report says


def test_summary_is_recomputed_from_tasks_and_targets() -> None:
    """Counts come from the merged tasks and targets, not from the inputs' summaries."""
    a = a_report("pa", ["deleted", "deleted", "failed"])
    b = a_report("pb", ["still_running", "already_gone"], started=timedelta(seconds=5))
    # An input summary that disagrees with its own tasks must not leak into the merge.
    a["summary"]["deleted"] = 999
    merged = merge_reports([("a", a), ("b", b)], run_id="merged")
    summary = merged["summary"]
    assert summary["selected"] == 5
    assert (summary["deleted"], summary["failed"]) == (2, 1)
    assert (summary["still_running"], summary["already_gone"]) == (1, 1)
    assert summary["listed"] == 6 + 5
    assert summary["not_selected"] == {"protected": 2, "too_young": 4}
    assert summary["requests_sent"] == {"total": 7, "by_kind": {"delete": 5, "list": 2}}
    assert [t["project_id"] for t in summary["targets"]] == ["pa", "pb"]
    assert [t["deleted"] for t in summary["targets"]] == [2, 0]
    check_schema(merged)


def test_tasks_are_sorted_and_errors_survive() -> None:
    """Tasks come out sorted by (project_id, id), each with its last error intact."""
    b = a_report("pb", ["deleted", "failed"])
    a = a_report("pa", ["deleted"], started=timedelta(seconds=1))
    merged = merge_reports([("b", b), ("a", a)], run_id="m")
    assert [(t["project_id"], t["id"]) for t in merged["tasks"]] == [
        ("pa", 1),
        ("pb", 1),
        ("pb", 2),
    ]
    assert merged["tasks"][2]["last_error"] == b["tasks"][1]["last_error"]
    assert merged["tasks"][2] == b["tasks"][1]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        # (kwargs of input 1, kwargs of input 2, expected top-level fields)
        ({}, {}, {"dry_run": False, "exit_code": 0, "interrupted": None}),
        ({"dry_run": True}, {"dry_run": True}, {"dry_run": True}),
        ({"dry_run": True}, {}, {"dry_run": False}),
        ({"exit_code": 1}, {"exit_code": 143}, {"exit_code": 143}),
        ({"exit_code": 4}, {"exit_code": 1}, {"exit_code": 4}),
        (
            {"interrupted": "SIGINT", "exit_code": 130},
            {"interrupted": "SIGTERM", "exit_code": 143},
            {"interrupted": "SIGINT", "exit_code": 143},
        ),
        ({}, {"interrupted": "SIGTERM"}, {"interrupted": "SIGTERM"}),
    ],
)
def test_run_level_fields(
    first: dict[str, Any], second: dict[str, Any], expected: dict[str, Any]
) -> None:
    """dry_run only if all were; the most severe exit code; the earliest input's signal."""
    a = a_report("pa", ["deleted"], **first)
    b = a_report("pb", ["deleted"], started=timedelta(seconds=30), **second)
    for order in ([("a", a), ("b", b)], [("b", b), ("a", a)]):
        merged = merge_reports(order, run_id="m")
        assert {key: merged[key] for key in expected} == expected


def test_times_span_the_inputs() -> None:
    """started_at is the earliest start, finished_at the latest finish; duration is the span."""
    a = a_report("pa", [], started=timedelta(minutes=2), took=timedelta(minutes=10))
    b = a_report("pb", [], started=timedelta(minutes=0), took=timedelta(minutes=5))
    c = a_report("pc", [], started=timedelta(minutes=1), took=timedelta(minutes=20))
    merged = merge_reports([("a", a), ("b", b), ("c", c)], run_id="m")
    assert merged["started_at"] == b["started_at"]
    assert merged["finished_at"] == c["finished_at"]
    assert merged["summary"]["duration_seconds"] == 21 * 60
    assert [item["run_id"] for item in merged["merged_from"]] == ["run-pb", "run-pc", "run-pa"]


@pytest.mark.parametrize(
    ("a_deadline", "b_deadline"), [(False, False), (True, False), (False, True)]
)
def test_deadline_reached_if_any(a_deadline: bool, b_deadline: bool) -> None:
    """One shard running out of time means the merged run did."""
    a = a_report("pa", [], deadline_reached=a_deadline)
    b = a_report("pb", [], deadline_reached=b_deadline)
    merged = merge_reports([("a", a), ("b", b)], run_id="m")
    assert merged["summary"]["deadline_reached"] is (a_deadline or b_deadline)


def test_input_order_does_not_matter() -> None:
    """Merging the same inputs in any order gives the same report."""
    a = a_report("pa", ["deleted", "failed"], exit_code=1)
    b = a_report("pb", ["still_running"], started=timedelta(seconds=3), exit_code=1)
    c = a_report("pc", ["would_delete"], started=timedelta(seconds=1), dry_run=True)
    one = merge_reports([("a", a), ("b", b), ("c", c)], run_id="m")
    two = merge_reports([("c", c), ("b", b), ("a", a)], run_id="m")
    assert one == two


def test_settings_keep_what_all_agree_on() -> None:
    """Agreed settings stay, differing ones move to merged_from only, targets are the union."""
    a = a_report(
        "pa",
        [],
        settings={"targets": [{"project_id": "pa"}], "rate": 5.0, "shard_index": 0},
    )
    b = a_report(
        "pb",
        [],
        settings={"targets": [{"project_id": "pb"}], "rate": 5.0, "shard_index": 1},
    )
    merged = merge_reports([("b", b), ("a", a)], run_id="m")
    assert merged["settings"] == {
        "targets": [{"project_id": "pa"}, {"project_id": "pb"}],
        "rate": 5.0,
    }
    assert [item["settings"]["shard_index"] for item in merged["merged_from"]] == [0, 1]
    check_schema(merged)


def test_merged_from_lists_every_input() -> None:
    """The new run id is fresh and every input's run id, exit code and times are kept."""
    a = a_report("pa", [], exit_code=1, run_id="r1")
    b = a_report("pb", [], started=timedelta(seconds=1), exit_code=0, run_id="r2")
    merged = merge_reports([("a", a), ("b", b)])
    assert merged["run_id"] not in {"r1", "r2"}
    assert [(m["run_id"], m["exit_code"]) for m in merged["merged_from"]] == [("r1", 1), ("r2", 0)]
    assert merged["merged_from"][1]["started_at"] == b["started_at"]
    check_schema(merged)


# ------------------------------------------------------------------------------------------
# Refusals


def broken(change: str) -> dict[str, Any]:
    """A valid report with one thing wrong in it."""
    report = a_report("pa", ["deleted", "failed"])
    if change == "outcome":
        report["tasks"][0]["outcome"] = "vanished"
    elif change == "foreign_task":
        report["tasks"][0]["project_id"] = "elsewhere"
    elif change == "duplicate_task":
        report["tasks"][1] = copy.deepcopy(report["tasks"][0])
    elif change == "exit_code":
        report["exit_code"] = "0"
    elif change == "bool_count":
        report["summary"]["targets"][0]["listed"] = True
    elif change == "no_summary":
        del report["summary"]
    elif change == "naive_time":
        report["started_at"] = "2026-11-27T03:00:00"
    elif change == "negative":
        report["tasks"][0]["attempts"] = -1
    return report


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("outcome", "bad.json: tasks[0].outcome: unknown outcome 'vanished'"),
        ("foreign_task", "bad.json: tasks[0].project_id: 'elsewhere' is none of"),
        ("duplicate_task", "two records for task 1 in 'pa'"),
        ("exit_code", "bad.json: exit_code: must be int (got '0')"),
        ("bool_count", "bad.json: summary.targets[0].listed: must be int (got True)"),
        ("no_summary", "bad.json: summary: missing"),
        ("naive_time", "bad.json: started_at: not a UTC timestamp"),
        ("negative", "bad.json: tasks[0].attempts: must be 0 or more (got -1)"),
    ],
)
def test_malformed_input_is_refused(change: str, message: str) -> None:
    """A report with a part the merge cannot trust is refused, naming the input and place."""
    good = a_report("pb", ["deleted"])
    with pytest.raises(MergeError) as error:
        merge_reports([("good.json", good), ("bad.json", broken(change))])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("same", ["identical", "rerun"])
def test_overlapping_projects_are_refused(same: str) -> None:
    """Two reports of one project overlap; no merged count would be true."""
    first = a_report("pa", ["still_running"], exit_code=1)
    second = (
        copy.deepcopy(first)
        if same == "identical"
        else a_report("pa", ["deleted"], started=timedelta(hours=1))
    )
    with pytest.raises(
        MergeError, match=re.escape("project 'pa' is a target in both 1.json and 2.json")
    ):
        merge_reports([("1.json", first), ("2.json", second)])


def test_no_input() -> None:
    """Nothing to merge is an error, not an empty report."""
    with pytest.raises(MergeError, match="no reports"):
        merge_reports([])


# ------------------------------------------------------------------------------------------
# The command


def write(path: Path, report: Mapping[str, Any]) -> Path:
    """Write `report` to `path` as the runner would; return the path."""
    write_report(path, report)
    return path


def test_command_writes_a_valid_merged_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """merge-reports OUT IN... writes a schema-valid report that load_report reads back."""
    one = write(tmp_path / "r-0.json", a_report("pa", ["deleted", "failed"], exit_code=1))
    two = write(tmp_path / "r-1.json", a_report("pb", ["deleted"], started=timedelta(seconds=2)))
    out = tmp_path / "merged.json"
    assert run_cli(["merge-reports", str(out), str(two), str(one)]) == 0
    merged = load_report(out)
    check_schema(merged)
    assert merged["exit_code"] == 1
    assert merged["summary"]["deleted"] == 2
    assert "merged 2 reports (3 tasks, exit code 1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "merge-reports: {tmp}/nope.json: cannot read: No such file or directory"),
        ("not_json", "merge-reports: {tmp}/bad.json: not JSON"),
        ("not_object", "merge-reports: {tmp}/bad.json: a report is a JSON object"),
        ("version", "merge-reports: {tmp}/bad.json: schema_version 2, this version reads 1"),
        ("output_is_input", "merge-reports: {tmp}/r-0.json is also an input"),
        ("twice", "merge-reports: {tmp}/r-0.json is given twice"),
        ("no_output_dir", "merge-reports: {tmp}/no/out.json: cannot write: No such file"),
        ("overlap", "merge-reports: project 'pa' is a target in both"),
    ],
)
def test_command_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    """An unusable input or output is one error line and exit 2, and nothing is written."""
    good = write(tmp_path / "r-0.json", a_report("pa", ["deleted"]))
    bad = tmp_path / "bad.json"
    out = tmp_path / "merged.json"
    inputs = [good, bad]
    if case == "missing":
        inputs = [good, tmp_path / "nope.json"]
    elif case == "not_json":
        bad.write_text("{", encoding="utf-8")
    elif case == "not_object":
        bad.write_text("[]", encoding="utf-8")
    elif case == "version":
        bad.write_text(json.dumps({**a_report("pb", []), "schema_version": 2}), encoding="utf-8")
    elif case == "output_is_input":
        out, inputs = good, [good]
    elif case == "twice":
        inputs = [good, tmp_path / "." / "r-0.json"]
    elif case == "no_output_dir":
        out, inputs = tmp_path / "no" / "out.json", [good]
    elif case == "overlap":
        inputs = [good, write(bad, a_report("pa", ["failed"]))]
    assert run_cli(["merge-reports", str(out), *map(str, inputs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("oms-cleanup: error: ")
    assert expected.format(tmp=tmp_path) in err
    assert not (tmp_path / "merged.json").exists()


def test_command_needs_an_input(capsys: pytest.CaptureFixture[str]) -> None:
    """OUT alone is a usage error."""
    assert run_cli(["merge-reports", "out.json"]) == 2
    assert "the following arguments are required: IN" in capsys.readouterr().err


def test_merge_report_files_returns_what_it_wrote(tmp_path: Path) -> None:
    """The function behind the command writes exactly the report it returns."""
    one = write(tmp_path / "a.json", a_report("pa", ["deleted"]))
    merged = merge_report_files(tmp_path / "m.json", [one], run_id="fixed")
    assert load_report(tmp_path / "m.json") == merged
    assert merged["tasks"] == load_report(one)["tasks"]


# ------------------------------------------------------------------------------------------
# Real shards: an Indexed Job's pods against the simulator, then merged


async def test_merged_shards_match_the_simulator(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Three projects over two shards: the merge holds every deletion the simulator saw."""
    projects = ("a" * 32, "b" * 32, "c" * 32)
    sim = await make_simulator(project_ids=projects, tasks_per_project=20)
    config = tmp_path / "cleanup.toml"
    config.write_text(
        f'older_than = "7d"\nshard_count = 2\nrate = 2000\nreport = "{tmp_path}/r-{{shard}}.json"\n'
        + "".join(
            f'[[targets]]\nendpoint = "{sim.url}"\nproject_id = "{project}"\n'
            for project in projects
        ),
        encoding="utf-8",
    )
    credentials = DEFAULT_CLIENT_CREDENTIALS
    reports = []
    for index in range(2):
        settings = load_settings(
            {"execute": True, "requeue_delay": "50ms"},
            config_file=config,
            environ={"JOB_COMPLETION_INDEX": str(index)},
        )
        await run_async(settings=settings, credentials=credentials, handle_signals=False)
        reports.append(tmp_path / f"r-{index}.json")
    out = tmp_path / "merged.json"
    assert run_cli(["merge-reports", str(out), *map(str, reports)]) == 0
    merged = load_report(out)
    check_schema(merged)
    truth = sim.state.snapshot()
    deleted = {(d["project_id"], d["task_id"]) for d in truth["deletions"]}
    assert deleted, "population too small for this test"
    reported = {(t["project_id"], t["id"]) for t in merged["tasks"] if t["outcome"] == "deleted"}
    assert reported == deleted
    assert merged["summary"]["deleted"] == len(deleted)
    assert merged["summary"]["listed"] == 3 * 20
    assert sorted(t["project_id"] for t in merged["summary"]["targets"]) == sorted(projects)
    assert merged["settings"]["shard_count"] == 2
    assert "shard_index" not in merged["settings"]
    runs = [load_report(path)["run_id"] for path in reports]
    assert sorted(item["run_id"] for item in merged["merged_from"]) == sorted(runs)
