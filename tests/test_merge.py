"""merge-reports: recomputed summaries, severity, ordering, refusals, and real sharded runs."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from worker.simulator.config import DEFAULT_CLIENT_CREDENTIALS, SimulatorConfig
from worker.simulator.server import run_simulator

T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def policy_settings(
    projects: list[str], *, dry_run: bool = False, **overrides: Any
) -> dict[str, Any]:
    """Settings as a run writes them (the policy included) for targets `projects`."""
    return {
        "targets": [{"project_id": project} for project in projects],
        "shard_index": 0,
        "shard_count": 1,
        "older_than": "7d",
        "started_before": None,
        "states": ["failed", "succeeded"],
        "name_include": [],
        "name_exclude": [],
        "protect_ids": [],
        "group_id": None,
        "rate": 20.0,
        "max_deletions": None,
        "execute": not dry_run,
        "dry_run": dry_run,
        "stop_running": False,
        "list_by_status": False,
        **overrides,
    }


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
        listed=len(outcomes) + 3,
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
        settings=settings or policy_settings([project], dry_run=dry_run),
        targets=[target],
        records=records,
        deadline_reached=deadline_reached,
    )


def check_schema(report: Mapping[str, Any]) -> None:
    """Validate against the published schema, formats included."""
    jsonschema.Draft202012Validator(
        report_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(report)


def assert_adds_up(report: Mapping[str, Any]) -> None:
    """The report's counts agree with each other and its task records, per target and in all."""
    outcomes = [outcome.value for outcome in Outcome]
    summary = report["summary"]
    targets = summary["targets"]
    projects = [target["project_id"] for target in targets]
    assert len(set(projects)) == len(projects)
    keys = [(task["project_id"], task["id"]) for task in report["tasks"]]
    assert len(set(keys)) == len(keys)
    by_outcome = Counter((task["project_id"], task["outcome"]) for task in report["tasks"])
    assert {task["project_id"] for task in report["tasks"]} <= set(projects)
    for block in [*targets, summary]:
        mine = projects if block is summary else [block["project_id"]]
        assert block["listed"] == block["selected"] + sum(block["not_selected"].values())
        assert block["selected"] == sum(block[name] for name in outcomes)
        for name in outcomes:
            assert block[name] == sum(by_outcome[(project, name)] for project in mine)
        sent = block["requests_sent"]
        assert sent["total"] == sum(sent["by_kind"].values())
    assert summary["selected"] == len(report["tasks"])
    for key in ["listed", "selected", *outcomes]:
        assert summary[key] == sum(target[key] for target in targets)
    for key in ("not_selected",):
        total: Counter[str] = Counter()
        for target in targets:
            total.update(target[key])
        assert {k: v for k, v in summary[key].items() if v} == {k: v for k, v in total.items() if v}


def cli_merge(
    capsys: pytest.CaptureFixture[str], output: Path, *inputs: Path
) -> tuple[int, str, str]:
    """`oms-cleanup merge-reports OUTPUT INPUTS...` through the command line: (code, out, err)."""
    capsys.readouterr()
    code = run_cli(["merge-reports", str(output), *map(str, inputs)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(
    capsys: pytest.CaptureFixture[str], output: Path, *inputs: Path, expected: str
) -> str:
    """The merge exits 2 with one error line holding `expected`, and writes nothing."""
    code, _, err = cli_merge(capsys, output, *inputs)
    assert (code, err.count("\n")) == (2, 1), err
    assert err.startswith("oms-cleanup: error: merge-reports: ")
    assert expected in err, err
    assert not output.exists()
    return err


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
    """The merged summary is the sum of the target blocks, which agree with the tasks."""
    a = a_report("pa", ["deleted", "deleted", "failed"])
    b = a_report("pb", ["still_running", "already_gone"], started=timedelta(seconds=5))
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
    assert_adds_up(merged)


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
    """dry_run as the inputs; the most severe exit code; the earliest input's signal."""
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
    c = a_report("pc", ["not_attempted"], started=timedelta(seconds=1), exit_code=143)
    one = merge_reports([("a", a), ("b", b), ("c", c)], run_id="m")
    two = merge_reports([("c", c), ("b", b), ("a", a)], run_id="m")
    assert one == two


def test_settings_keep_what_all_agree_on() -> None:
    """Agreed settings stay, differing ones move to merged_from only, targets are the union."""
    a = a_report("pa", [], settings=policy_settings(["pa"], rate=5.0, shard_index=0, shard_count=2))
    b = a_report(
        "pb",
        [],
        settings=policy_settings(["pb"], rate=7.0, shard_index=1, shard_count=2),
        started=timedelta(seconds=1),
    )
    merged = merge_reports([("b", b), ("a", a)], run_id="m")
    expected = policy_settings(["pa", "pb"], shard_count=2)
    del expected["shard_index"], expected["rate"]
    assert merged["settings"] == expected
    assert [item["settings"]["shard_index"] for item in merged["merged_from"]] == [0, 1]
    assert [item["settings"]["rate"] for item in merged["merged_from"]] == [5.0, 7.0]
    assert merged["missing_shards"] == []
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
    """A schema-valid report with one thing wrong in it that only the merge can see."""
    report = a_report("pa", ["deleted", "failed"])
    settings = report["settings"]
    if change == "foreign_task":
        report["tasks"][0]["project_id"] = "elsewhere"
    elif change == "duplicate_task":
        report["tasks"][1] = copy.deepcopy(report["tasks"][0])
    elif change == "no_shard_count":
        del settings["shard_count"]
    elif change == "bool_shard_index":
        settings["shard_index"] = False
    elif change == "index_past_count":
        settings["shard_index"] = 3
        settings["shard_count"] = 3
    elif change == "zero_shards":
        settings["shard_count"] = 0
    elif change == "nan_setting":
        settings["rate"] = float("nan")
    return report


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("foreign_task", "bad.json: tasks[0].project_id: 'elsewhere' is none of the targets"),
        ("duplicate_task", "bad.json: tasks[1].id: a second record of task 1 in 'pa'"),
        ("no_shard_count", "bad.json: settings.shard_count: missing, so its shard cannot be"),
        ("bool_shard_index", "bad.json: settings.shard_index: must be an integer of 0 or more"),
        ("index_past_count", "bad.json: settings.shard_index: 3 is not below shard_count (3)"),
        ("zero_shards", "bad.json: settings.shard_count: must be an integer of 1 or more (got 0)"),
        ("nan_setting", "bad.json: settings: holds NaN or Infinity, which JSON does not allow"),
    ],
)
def test_malformed_input_is_refused(change: str, message: str) -> None:
    """A report with a part the merge cannot trust is refused, naming the input and place."""
    good = a_report("pb", ["deleted"])
    with pytest.raises(MergeError) as error:
        merge_reports([("good.json", good), ("bad.json", broken(change))])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        # A setting this version does not know (a newer branch's) must agree as well.
        ({"max_staleness": "5m"}, {"max_staleness": "1h"}, 'max_staleness ("5m" vs "1h")'),
        ({"max_staleness": "5m"}, {}, 'max_staleness ("5m" vs absent)'),
        (
            {"protect_ids": [{"id": 1, "from": ["file"]}, {"id": 2, "from": ["flags"]}]},
            {"protect_ids": [{"id": 1, "from": ["file"]}]},
            "protect_ids ([1, 2] vs [1])",
        ),
        # The same protections from other layers are the same policy.
        (
            {"name_exclude": [{"pattern": "*-keep", "from": ["file"]}]},
            {"name_exclude": [{"pattern": "*-keep", "from": ["environment", "flags"]}]},
            None,
        ),
        ({"shard_count": 2}, {"shard_count": 2, "shard_index": 1, "rate": 9.0}, None),
    ],
)
def test_settings_must_agree_except_per_shard_ones(
    first: dict[str, Any], second: dict[str, Any], named: str | None
) -> None:
    """Any setting outside the per-shard ones must be equal; unknown ones included."""
    a = a_report("pa", ["deleted"], settings=policy_settings(["pa"], **first))
    b = a_report(
        "pb", ["deleted"], settings=policy_settings(["pb"], **second), started=timedelta(1)
    )
    if named is None:
        check_schema(merge_reports([("a.json", a), ("b.json", b)]))
        return
    with pytest.raises(MergeError) as error:
        merge_reports([("a.json", a), ("b.json", b)])
    assert (
        str(error.value) == f"a.json and b.json are not shards of one run: they differ in {named}"
    )


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
        ("nan", "merge-reports: {tmp}/bad.json: settings: holds NaN or Infinity"),
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
    elif case == "nan":
        text = json.dumps(a_report("pb", ["deleted"])).replace('"rate": 20.0', '"rate": NaN')
        bad.write_text(text, encoding="utf-8")
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
# Real reports: shards of runs against two simulators (two endpoints, three projects)

PROJECTS_AB = ("a" * 32, "b" * 32)
PROJECT_C = ("c" * 32,)
# A shard of the "dry" run with one policy setting changed (TOML values).
POLICY_VARIANTS: dict[str, dict[str, str]] = {
    "older_than": {"older_than": '"30d"'},
    "started_before": {"started_before": '"2026-11-01T00:00:00Z"'},
    "states": {"states": '["failed"]'},
    "name_include": {"name_include": '["*"]'},
    "name_exclude": {"name_exclude": '["*-keep"]'},
    "protect_ids": {"protect_ids": "[1]"},
    "group_id": {"group_id": '"group-x"'},
    "stop_running": {"stop_running": "true"},
    "max_deletions": {"max_deletions": '"50%"'},
    "list_by_status": {"list_by_status": "true"},
}
# Settings that tune a shard without changing what it selects.
TUNING = {
    "rate": "500",
    "concurrency": "4",
    "deadline": '"30m"',
    "max_attempts": "3",
}


@dataclass(frozen=True)
class RealRuns:
    """Reports written by real runs, `<root>/<group>/r-<shard>.json`; copy before editing."""

    root: Path

    def report(self, group: str, shard: int) -> Path:
        """The report of shard `shard` of the run `group`."""
        return self.root / group / f"r-{shard}.json"

    def shards(self, group: str) -> list[Path]:
        """Every report of the run `group`, by shard index."""
        return sorted((self.root / group).glob("r-*.json"))


def config_text(
    *,
    endpoints: list[tuple[str, tuple[str, ...]]],
    shard_count: int,
    report: Path,
    policy: Mapping[str, str],
) -> str:
    """A config file: the policy (TOML values by key), a shard count and the targets."""
    values = {"older_than": '"7d"', "rate": "2000", **policy}
    text = f"shard_count = {shard_count}\nreport = {json.dumps(str(report))}\n"
    text += "".join(f"{key} = {value}\n" for key, value in values.items())
    for endpoint, projects in endpoints:
        for project in projects:
            text += f'[[targets]]\nendpoint = "{endpoint}"\nproject_id = "{project}"\n'
    return text


async def produce_real_runs(root: Path) -> None:
    """Run every group of shards the tests read; dry runs first, then executing ones."""
    ab = SimulatorConfig(project_ids=PROJECTS_AB, tasks_per_project=20)
    c = SimulatorConfig(project_ids=PROJECT_C, tasks_per_project=20)
    async with run_simulator(ab) as sim_ab, run_simulator(c) as sim_c:
        both = [(sim_ab.url, PROJECTS_AB), (sim_c.url, PROJECT_C)]

        async def run(
            group: str,
            *,
            count: int = 3,
            shards: list[int] | None = None,
            policy: Mapping[str, str] | None = None,
            execute: bool = False,
            endpoints: list[tuple[str, tuple[str, ...]]] = both,
        ) -> None:
            directory = root / group
            directory.mkdir()
            config = directory / "cleanup.toml"
            config.write_text(
                config_text(
                    endpoints=endpoints,
                    shard_count=count,
                    report=directory / "r-{shard}.json",
                    policy=policy or {},
                ),
                encoding="utf-8",
            )
            for index in range(count) if shards is None else shards:
                settings = load_settings(
                    {"execute": execute, "requeue_delay": "50ms", "log_level": "error"},
                    config_file=config,
                    environ={"JOB_COMPLETION_INDEX": str(index)},
                )
                await run_async(
                    settings=settings, credentials=DEFAULT_CLIENT_CREDENTIALS, handle_signals=False
                )

        await run("dry")
        for name, change in POLICY_VARIANTS.items():
            await run(f"policy-{name}", shards=[1], policy=change)
        # The issue's case: another older_than and states, in a dry run.
        await run("other-run", shards=[2], policy={"older_than": '"30d"', "states": '["failed"]'})
        await run("tuned", shards=[1], policy=TUNING)
        await run("quad", count=4)
        await run("solo-ab", count=1, endpoints=both[:1])
        await run("solo-c", count=1, endpoints=both[1:])
        await run("exec", execute=True)
        await run("exec-rerun", shards=[0], execute=True)


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> RealRuns:
    """The reports of real runs against the simulators, produced once per test session."""
    root = tmp_path_factory.mktemp("real-runs")
    asyncio.run(produce_real_runs(root))
    return RealRuns(root)


def copied(path: Path, directory: Path, name: str | None = None) -> Path:
    """A copy of the report `path` in `directory` (under `name`, default its own)."""
    target = directory / (name or path.name)
    shutil.copyfile(path, target)
    return target


def edited(path: Path, directory: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    """A copy of the report `path` in `directory`, changed by `change`."""
    report = load_report(path)
    change(report)
    target = directory / path.name
    target.write_text(json.dumps(report), encoding="utf-8")
    return target


def projects_of(path: Path) -> set[str]:
    """The project ids a report's targets have."""
    return {target["project_id"] for target in load_report(path)["summary"]["targets"]}


@pytest.mark.parametrize("group", ["dry", "exec"])
def test_every_shard_merges_into_a_valid_report(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str], group: str
) -> None:
    """All shards: exit 0, nothing missing, and every record and target block carried whole."""
    inputs = real_runs.shards(group)
    assert len(inputs) == 3
    out = tmp_path / "merged.json"
    code, stdout, err = cli_merge(capsys, out, *reversed(inputs))
    assert (code, err) == (0, "")
    assert "merged 3 reports" in stdout
    merged = load_report(out)
    check_schema(merged)
    assert_adds_up(merged)
    assert merged["missing_shards"] == []
    reports = [load_report(path) for path in inputs]
    assert merged["exit_code"] == most_severe_exit_code([r["exit_code"] for r in reports])
    assert merged["dry_run"] is (group == "dry")
    tasks = sorted(
        (task for report in reports for task in report["tasks"]),
        key=lambda task: (task["project_id"], task["id"]),
    )
    assert tasks, "population too small for this test"
    assert merged["tasks"] == tasks
    blocks = {b["project_id"]: b for r in reports for b in r["summary"]["targets"]}
    assert {b["project_id"]: b for b in merged["summary"]["targets"]} == blocks
    assert set(blocks) == {*PROJECTS_AB, *PROJECT_C}
    assert merged["settings"]["older_than"] == reports[0]["settings"]["older_than"]
    assert merged["settings"]["shard_count"] == 3


@pytest.mark.parametrize(
    ("group", "given", "missing"),
    [("dry", [0, 2], [1]), ("dry", [1], [0, 2]), ("exec", [0, 1], [2])],
)
def test_a_missing_shard_is_listed_and_the_merge_exits_1(
    real_runs: RealRuns,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    group: str,
    given: list[int],
    missing: list[int],
) -> None:
    """Shards without a report: written, listed in missing_shards, exit code at least 1."""
    inputs = [real_runs.report(group, index) for index in given]
    out = tmp_path / "merged.json"
    code, _, err = cli_merge(capsys, out, *inputs)
    assert code == 1
    assert err.count("\n") == 1
    assert f"no report for shard(s) {', '.join(map(str, missing))} of 3" in err
    merged = load_report(out)
    check_schema(merged)
    assert_adds_up(merged)
    assert merged["missing_shards"] == missing
    codes = [load_report(path)["exit_code"] for path in inputs]
    assert merged["exit_code"] == most_severe_exit_code([*codes, 1])
    assert merged["exit_code"] >= 1
    absent = set().union(*(projects_of(real_runs.report(group, index)) for index in missing))
    assert absent
    assert not absent & {t["project_id"] for t in merged["summary"]["targets"]}


@pytest.mark.parametrize("case", ["missing_shard", "other_policy", "edited_count"])
def test_the_installed_command(real_runs: RealRuns, tmp_path: Path, case: str) -> None:
    """The `oms-cleanup` process itself: exit 1 for a missing shard, 2 for a refusal; one line."""
    out = tmp_path / "merged.json"
    inputs = [real_runs.report("dry", 0), real_runs.report("dry", 1), real_runs.report("dry", 2)]
    if case == "missing_shard":
        del inputs[1]
        expected, code = "warning: merge-reports: no report for shard(s) 1 of 3", 1
    elif case == "other_policy":
        inputs[1] = real_runs.report("policy-states", 1)
        expected, code = "error: merge-reports: ", 2
    else:
        inputs[1] = edited(inputs[1], tmp_path, _bump("summary", "targets", 0, "listed"))
        expected, code = f"error: merge-reports: {inputs[1]}: summary.targets[0].listed: is ", 2
    done = subprocess.run(
        [str(Path(sys.executable).with_name("oms-cleanup")), "merge-reports", str(out)]
        + [str(path) for path in inputs],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == code
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"oms-cleanup: {expected}"), done.stderr
    if code == 1:
        assert load_report(out)["missing_shards"] == [1]
    else:
        assert not out.exists()


@pytest.mark.parametrize("case", ["copy", "rerun", "empty_shard_twice"])
def test_a_shard_given_twice_is_refused(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """The same shard index twice (a copy, a re-run, an empty shard) is one line and exit 2."""
    if case == "copy":
        inputs = [*real_runs.shards("dry"), copied(real_runs.report("dry", 0), tmp_path, "x.json")]
        index, count = 0, 3
    elif case == "rerun":
        inputs = [*real_runs.shards("exec"), real_runs.report("exec-rerun", 0)]
        index, count = 0, 3
    else:
        shards = real_runs.shards("quad")
        empty = [path for path in shards if not projects_of(path)]
        assert empty, "no empty shard among four shards of three targets"
        index, count = shards.index(empty[0]), 4
        inputs = [*shards, copied(empty[0], tmp_path, "x.json")]
    err = assert_refused(
        capsys, tmp_path / "merged.json", *inputs, expected=f"are both shard {index} of {count}"
    )
    assert str(inputs[index]) in err
    assert str(inputs[-1]) in err


def test_the_issues_mixed_runs_are_refused(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two executed shards and a dry run with another older_than and states: exit 2, named."""
    odd = real_runs.report("other-run", 2)
    inputs = [real_runs.report("exec", 0), real_runs.report("exec", 1), odd]
    err = assert_refused(
        capsys, tmp_path / "merged.json", *inputs, expected="not shards of one run"
    )
    assert str(odd) in err
    assert str(inputs[0]) in err or str(inputs[1]) in err
    mine, theirs = load_report(odd)["settings"], load_report(inputs[0])["settings"]
    assert "dry_run (true vs false)" in err
    for key in ("older_than", "states"):
        assert mine[key] != theirs[key]
        assert f"{key} ({json.dumps(mine[key])} vs {json.dumps(theirs[key])})" in err


@pytest.mark.parametrize("setting", [*POLICY_VARIANTS, "dry_run", "shard_count"])
def test_inputs_with_another_policy_are_refused(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str
) -> None:
    """A shard whose policy, dry-run flag or shard count differs: one line naming it, exit 2."""
    if setting == "dry_run":
        odd = real_runs.report("exec", 1)
    elif setting == "shard_count":
        odd = real_runs.report("quad", 1)
    else:
        odd = real_runs.report(f"policy-{setting}", 1)
    inputs = [real_runs.report("dry", 0), odd, real_runs.report("dry", 2)]
    err = assert_refused(capsys, tmp_path / "merged.json", *inputs, expected=f" {setting} (")
    assert str(odd) in err
    assert str(inputs[0]) in err


def test_shards_may_differ_in_tuning(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rate, concurrency, deadline, attempts, logging and report path may differ per shard."""
    inputs = [real_runs.report("dry", 0), real_runs.report("tuned", 1), real_runs.report("dry", 2)]
    out = tmp_path / "merged.json"
    code, _, err = cli_merge(capsys, out, *inputs)
    assert (code, err) == (0, "")
    merged = load_report(out)
    check_schema(merged)
    assert_adds_up(merged)
    for key in ("rate", "concurrency", "deadline", "max_attempts", "report"):
        assert key not in merged["settings"]
    assert merged["settings"]["older_than"] == load_report(inputs[0])["settings"]["older_than"]
    assert sorted(m["settings"]["rate"] for m in merged["merged_from"]) == [500.0, 2000.0, 2000.0]


def test_unsharded_runs_of_disjoint_targets_merge(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two unsharded runs of one policy over different projects merge; none can be missing."""
    out = tmp_path / "merged.json"
    code, _, err = cli_merge(
        capsys, out, real_runs.report("solo-ab", 0), real_runs.report("solo-c", 0)
    )
    assert (code, err) == (0, "")
    merged = load_report(out)
    check_schema(merged)
    assert_adds_up(merged)
    assert merged["missing_shards"] == []
    assert {t["project_id"] for t in merged["summary"]["targets"]} == {*PROJECTS_AB, *PROJECT_C}
    solo, sharded = real_runs.report("solo-ab", 0), real_runs.report("dry", 2)
    err = assert_refused(capsys, tmp_path / "other.json", solo, sharded, expected="shard_count (")
    assert str(solo) in err
    assert str(sharded) in err


def _first_reason(report: dict[str, Any]) -> str:
    reasons = report["summary"]["targets"][0]["not_selected"]
    assert reasons, "no task kept in this target"
    return str(next(iter(reasons)))


def _other_outcome(report: dict[str, Any]) -> None:
    task = report["tasks"][0]
    task["outcome"] = "failed" if task["outcome"] != "failed" else "deleted"


def _bump(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def change(report: dict[str, Any]) -> None:
        node: Any = report
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] += 1

    return change


INCONSISTENT: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "target_listed": (
        _bump("summary", "targets", 0, "listed"),
        "summary.targets[0].listed: is ",
    ),
    "summary_listed": (_bump("summary", "listed"), "summary.listed: is "),
    "record_removed": (lambda r: r["tasks"].pop(), "summary.targets[0].selected: is "),
    "record_twice": (
        lambda r: r["tasks"].append(copy.deepcopy(r["tasks"][0])),
        "a second record of task",
    ),
    "record_moved": (
        lambda r: r["tasks"][0].update(project_id="f" * 32),
        f"tasks[0].project_id: {'f' * 32!r} is none of the targets",
    ),
    "outcome_edited": (_other_outcome, "task records of project"),
    "reason_count": (
        lambda r: _bump("summary", "targets", 0, "not_selected", _first_reason(r))(r),
        "summary.targets[0].listed: is ",
    ),
    "requests_total": (
        _bump("summary", "targets", 0, "requests_sent", "total"),
        "summary.targets[0].requests_sent.total: is ",
    ),
    "summary_requests": (
        lambda r: (
            _bump("summary", "requests_sent", "by_kind", "list")(r),
            _bump("summary", "requests_sent", "total")(r),
        ),
        "summary.requests_sent.by_kind.list: is ",
    ),
    "summary_reason": (
        lambda r: (
            _bump("summary", "not_selected", _first_reason(r))(r),
            _bump("summary", "listed")(r),
        ),
        "summary.listed: is ",
    ),
    "target_twice": (
        lambda r: r["summary"]["targets"].append(copy.deepcopy(r["summary"]["targets"][0])),
        "summary.targets[1].project_id: ",
    ),
}


@pytest.mark.parametrize("case", list(INCONSISTENT))
def test_an_inconsistent_input_is_refused(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """A report whose counts disagree (hand-edited, cut) is refused, naming file and count."""
    change, expected = INCONSISTENT[case]
    source = real_runs.report("exec", 1)
    assert load_report(source)["tasks"], "shard 1 selected nothing"
    bad = edited(source, tmp_path, change)
    inputs = [real_runs.report("exec", 0), bad, real_runs.report("exec", 2)]
    assert_refused(capsys, tmp_path / "merged.json", *inputs, expected=f"{bad}: ")
    assert_refused(capsys, tmp_path / "merged.json", *inputs, expected=expected)


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(report: dict[str, Any]) -> None:
        node: Any = report
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return change


SCHEMA_INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "task_extra_field": (
        _set("tasks", 0, "secret", value="x"),
        "tasks[0]: Additional properties are not allowed ('secret' was unexpected)",
    ),
    "task_status": (_set("tasks", 0, "status", value="done"), "tasks[0].status: 'done' is not"),
    "task_outcome": (
        _set("tasks", 0, "outcome", value="vanished"),
        "tasks[0].outcome: 'vanished' is not",
    ),
    "task_attempts": (_set("tasks", 0, "attempts", value=-1), "tasks[0].attempts: -1 is less"),
    "task_start_time": (
        _set("tasks", 0, "start_time", value=1764244800000),
        "tasks[0].start_time: ",
    ),
    "exit_code": (_set("exit_code", value="0"), "exit_code: '0' is not of type 'integer'"),
    "no_summary": (lambda r: r.pop("summary"), "report: 'summary' is a required property"),
    "naive_time": (
        _set("started_at", value="2026-11-27T03:00:00"),
        "started_at: '2026-11-27T03:00:00' does not match",
    ),
    "no_such_day": (
        _set("finished_at", value="2026-02-30T03:00:00Z"),
        "finished_at: '2026-02-30T03:00:00Z' is not a 'date-time'",
    ),
    "bool_count": (
        _set("summary", "targets", 0, "listed", value=True),
        "summary.targets[0].listed: True is not of type 'integer'",
    ),
    "target_extra_field": (
        _set("summary", "targets", 0, "bogus", value=1),
        "summary.targets[0]: Unevaluated properties are not allowed ('bogus' was unexpected)",
    ),
    "partial_error": (
        _set("summary", "targets", 0, "error", value={"http_status": 403}),
        "summary.targets[0].error",
    ),
}


@pytest.mark.parametrize("case", list(SCHEMA_INVALID))
def test_a_schema_invalid_input_is_refused(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """A report the JSON Schema rejects is refused, naming the file and the place."""
    change, expected = SCHEMA_INVALID[case]
    bad = edited(real_runs.report("exec", 1), tmp_path, change)
    inputs = [real_runs.report("exec", 0), bad, real_runs.report("exec", 2)]
    assert_refused(capsys, tmp_path / "merged.json", *inputs, expected=f"{bad}: {expected}")


def test_a_merged_report_is_not_an_input(
    real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Merging a merge again is refused: its shards' own reports are the inputs."""
    first = tmp_path / "first.json"
    code, _, _ = cli_merge(capsys, first, real_runs.report("dry", 0), real_runs.report("dry", 1))
    assert code == 1
    assert_refused(
        capsys,
        tmp_path / "merged.json",
        first,
        real_runs.report("dry", 2),
        expected=f"{first}: is itself a merged report",
    )


def test_new_fields_of_records_and_target_blocks_survive(
    real_runs: RealRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fields a newer run adds to a task record or target block come through the merge."""
    from worker import report_check

    schema = copy.deepcopy(report_schema())
    schema["$defs"]["task"]["properties"]["stopped_at"] = {"type": ["string", "null"]}
    schema["$defs"]["target"]["properties"]["listing"] = {"type": "string"}
    schema["properties"]["note"] = {"type": "string"}
    validator = jsonschema.Draft202012Validator(schema)
    monkeypatch.setattr(report_check, "_validator", lambda: validator)
    reports = []
    for index, path in enumerate(real_runs.shards("exec")):
        report = load_report(path)
        for task in report["tasks"]:
            task["stopped_at"] = report["finished_at"]
        for block in report["summary"]["targets"]:
            block["listing"] = f"complete-{index}"
        report["note"] = "same in every shard"
        reports.append((str(path), report))
    merged = merge_reports(reports, run_id="m")
    assert merged["tasks"]
    assert all(task["stopped_at"] is not None for task in merged["tasks"])
    assert sorted(b["listing"] for b in merged["summary"]["targets"]) == [
        "complete-0",
        "complete-1",
        "complete-2",
    ]
    assert merged["note"] == "same in every shard"
    validator.validate(merged)
    reports[2][1]["note"] = "another"
    with pytest.raises(MergeError, match=r"differ in note \("):
        merge_reports(reports, run_id="m")


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
    assert merged["missing_shards"] == []
    assert_adds_up(merged)
    runs = [load_report(path)["run_id"] for path in reports]
    assert sorted(item["run_id"] for item in merged["merged_from"]) == sorted(runs)
