"""Whole cleanup runs against the simulator over real sockets: what was deleted, reported, exited.

Every test holds the report against the simulator's own record (`state.snapshot()`), and the
expected selection is computed here from the raw task objects the simulator generated, not by
the policy module under test.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from conftest import SimulatorFactory
from expectations import eligible, started, validated
from pydantic import SecretStr

from worker.cli import run_cli
from worker.oms.auth import AkSk, Credentials, IamToken
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_IAM_TOKEN,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
    TimingConfig,
)
from worker.simulator.faults import FaultConfig, Malformation
from worker.simulator.population import PopulationConfig
from worker.simulator.server import SimulatorHandle
from worker.simulator.state import PAUSED, PAUSING, SUCCEEDED
from worker.simulator.state import RUNNING as MIGRATING

# A status code the API reference does not know (the population's stand-in is 9).
UNKNOWN = 9
SECOND_PROJECT = "fedcba9876543210fedcba9876543210"
# Fast enough that no test waits on our own limiter unless it means to.
FAST = {"rate": "2000", "concurrency": "16"}

TaskKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Finished:
    """One run's exit code, its report (validated against the schema) and the simulator's truth."""

    exit_code: int
    report: dict[str, Any]
    truth: dict[str, Any]

    def outcomes(self, *names: str) -> set[TaskKey]:
        """(project, id) of the report's tasks with one of these outcomes."""
        return {(t["project_id"], t["id"]) for t in self.report["tasks"] if t["outcome"] in names}

    @property
    def deleted_by_simulator(self) -> set[TaskKey]:
        """(project, id) of every delete the simulator applied."""
        return {(d["project_id"], d["task_id"]) for d in self.truth["deletions"]}

    @property
    def requests_seen(self) -> int:
        """API requests that reached the simulator, refused ones included."""
        counts: dict[str, int] = {**self.truth["requests"], **self.truth["rejected"]}
        return sum(counts.values())


def population(sim: SimulatorHandle) -> dict[TaskKey, dict[str, Any]]:
    """Copies of every task the simulator holds now, by (project, id)."""
    return {
        (project_id, task_id): dict(task)
        for project_id, project in sim.state.projects.items()
        for task_id, task in project.tasks.items()
    }


def targets_file(path: Path, sim: SimulatorHandle, *project_ids: str, options: str = "") -> Path:
    """A config file: `options` (TOML lines), then `project_ids` at the simulator as [[targets]]."""
    path.write_text(
        options
        + "".join(
            f'[[targets]]\nendpoint = "{sim.url}"\nproject_id = "{project_id}"\n'
            for project_id in project_ids
        ),
        encoding="utf-8",
    )
    return path


async def run_against(
    sim: SimulatorHandle,
    tmp_path: Path,
    *,
    now: datetime,
    credentials: Credentials = DEFAULT_CLIENT_CREDENTIALS,
    config_file: Path | None = None,
    **flags: Any,
) -> Finished:
    """One run through run_async with `flags`; the report and the simulator's record after it."""
    report = tmp_path / "report.json"
    # Without a config file, one target: the simulator's default project (a flag may change it).
    target = {} if config_file else {"endpoint": sim.url, "project_id": DEFAULT_PROJECT_ID}
    settings = load_settings(
        {**target, "report": str(report), **FAST, **flags}, config_file=config_file, environ={}
    )
    code = await run_async(
        settings=settings, credentials=credentials, now=lambda: now, handle_signals=False
    )
    return Finished(exit_code=code, report=validated(report), truth=sim.state.snapshot())


@pytest.fixture
def now() -> datetime:
    """The moment selection is judged at (the simulator's tasks are dated from the real clock)."""
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------
# Dry run and executing run


async def test_dry_run_sends_no_delete(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """A dry run lists, reports every selected task as would_delete, and deletes nothing."""
    sim = await make_simulator(tasks_per_project=80)
    expected = eligible(population(sim), now=now, older_than=timedelta(days=30))
    assert expected, "population too small for this test"

    run = await run_against(sim, tmp_path, now=now, older_than="30d")

    assert run.exit_code == 0
    assert run.truth["requests"]["delete"] == 0
    assert run.truth["requests"]["stop"] == 0
    assert run.truth["deletions"] == []
    assert run.report["dry_run"] is True
    assert run.outcomes("would_delete") == expected
    assert {t["outcome"] for t in run.report["tasks"]} == {"would_delete"}
    assert run.truth["remaining"][DEFAULT_PROJECT_ID]["total"] == 80


async def test_executing_run_deletes_exactly_the_selection(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """Deleted per the report == deleted per the simulator == selected; the rest remains."""
    sim = await make_simulator(tasks_per_project=120)
    before = population(sim)
    candidates = eligible(before, now=now, older_than=timedelta(days=30))
    protected = min(task_id for _, task_id in candidates)
    expected = eligible(
        before,
        now=now,
        older_than=timedelta(days=30),
        keep=lambda task: task["id"] == protected or "db-dumps" in task["name"],
    )
    assert len(expected) >= 10, "population too small for this test"

    run = await run_against(
        sim,
        tmp_path,
        now=now,
        older_than="30d",
        protect_ids=[str(protected)],
        name_exclude=["*db-dumps*"],
        execute=True,
    )

    assert run.exit_code == 0
    assert run.report["exit_code"] == 0
    assert run.outcomes("deleted", "already_gone") == run.deleted_by_simulator == expected
    assert {t["outcome"] for t in run.report["tasks"]} == {"deleted"}
    assert {d["by"] for d in run.truth["deletions"]} == {DEFAULT_ACCESS_KEY}
    assert set(population(sim)) == set(before) - expected
    summary = run.report["summary"]
    assert summary["listed"] == 120
    assert summary["selected"] == summary["deleted"] == len(expected)
    assert summary["not_selected"]["protected"] == 1
    assert sum(summary["not_selected"].values()) == 120 - len(expected)
    assert summary["requests_sent"]["by_kind"]["delete"] == run.truth["requests"]["delete"]


async def test_paging_while_deleting_misses_nothing(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """2,050 tasks in pages of 100: every eligible one is deleted, exactly the others remain."""
    total = 2050
    sim = await make_simulator(tasks_per_project=total)
    before = population(sim)
    expected = eligible(before, now=now, older_than=timedelta(days=1))

    run = await run_against(
        sim, tmp_path, now=now, older_than="1d", execute=True, rate="5000", concurrency="32"
    )

    assert run.exit_code == 0
    assert run.truth["requests"]["list"] == math.ceil(total / 100)
    assert run.report["summary"]["listed"] == total
    assert run.deleted_by_simulator == run.outcomes("deleted") == expected
    assert set(population(sim)) == set(before) - expected


# ------------------------------------------------------------------------------------------
# Tasks OMS refuses to delete while they run (OMS.0063)


def running_population(*, pausing_delay: timedelta, migrating: float = 0.5) -> dict[str, Any]:
    """Simulator overrides: half migrating tasks that never finish by themselves in a test."""
    return {
        "population": PopulationConfig(
            status_weights=((MIGRATING, migrating), (SUCCEEDED, 1 - migrating))
        ),
        "timing": TimingConfig(
            finish_after=(timedelta(hours=1), timedelta(hours=2)),
            pausing_delay=pausing_delay,
            # Every stopped task is refused twice more after it reached "paused".
            sticky_pause_share=1.0,
            sticky_pause_attempts=2,
        ),
    }


# Migrating and finished tasks older than a minute: stop the migrating ones, then delete all,
# retrying refused deletes every 50 ms.
STOP_AND_DELETE: dict[str, Any] = {
    "older_than": "1m",
    "states": "migrating,succeeded",
    "stop_running": True,
    "requeue_delay": "50ms",
    "execute": True,
}


async def test_stopped_tasks_are_requeued_until_deleted(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """--stop-running: stop, meet OMS.0063 while pausing and sticky, requeue, finally delete."""
    sim = await make_simulator(
        tasks_per_project=16, **running_population(pausing_delay=timedelta(milliseconds=150))
    )
    before = population(sim)
    migrating = {key for key, task in before.items() if task["status"] == MIGRATING}
    assert len(migrating) >= 3, "population too small for this test"
    expected = eligible(
        before, now=now, older_than=timedelta(minutes=1), codes=frozenset({MIGRATING, SUCCEEDED})
    )
    assert migrating <= expected

    run = await run_against(sim, tmp_path, now=now, **STOP_AND_DELETE, max_attempts="20")

    assert run.exit_code == 0
    assert run.deleted_by_simulator == run.outcomes("deleted") == expected
    assert {(s["project_id"], s["task_id"]) for s in run.truth["stops"]} == migrating
    refused = [(r["project_id"], r["task_id"], r["status"]) for r in run.truth["refused_deletes"]]
    # Never a delete sent to a task still migrating: only while pausing or sticky-paused.
    assert {status for *_, status in refused} <= {PAUSING, PAUSED}
    records = {(t["project_id"], t["id"]): t for t in run.report["tasks"]}
    for key in migrating:
        refusals = sum(1 for project, task_id, _ in refused if (project, task_id) == key)
        # The two sticky refusals at least; each was requeued and the last attempt succeeded.
        assert refusals >= 2
        assert records[key]["attempts"] == refusals + 1
        assert records[key]["last_error"] is None


async def test_deadline_before_tasks_stop_reports_still_running(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """Tasks that take longer to pause than the deadline allows are reported still_running."""
    sim = await make_simulator(
        tasks_per_project=12, **running_population(pausing_delay=timedelta(hours=1))
    )
    before = population(sim)
    migrating = {key for key, task in before.items() if task["status"] == MIGRATING}
    finished = eligible(before, now=now, older_than=timedelta(minutes=1))
    assert migrating, "population too small for this test"
    assert finished, "population too small for this test"

    run = await run_against(sim, tmp_path, now=now, **STOP_AND_DELETE, deadline="1s")

    assert run.exit_code == 1
    assert run.report["exit_code"] == 1
    assert run.outcomes("still_running") == migrating
    assert run.deleted_by_simulator == run.outcomes("deleted") == finished
    for task in run.report["tasks"]:
        if task["outcome"] == "still_running":
            assert task["last_error"]["error_code"] == "OMS.0063"
    assert run.report["summary"]["still_running"] == len(migrating)


async def test_deadline_stops_new_requests(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """At the deadline no new delete starts: the rest is not_attempted, the report says why."""
    sim = await make_simulator(tasks_per_project=60, faults=FaultConfig(latency_ms=50))
    expected = eligible(population(sim), now=now, older_than=timedelta(days=1))
    began = datetime.now(UTC)

    # 20/s for 40-odd deletes needs two seconds or more; the deadline comes after one.
    run = await run_against(
        sim, tmp_path, now=now, older_than="1d", execute=True, rate="20", deadline="1s"
    )

    assert run.exit_code == 1
    assert run.report["summary"]["deadline_reached"] is True
    assert run.report["interrupted"] is None
    deleted = run.outcomes("deleted")
    assert deleted == run.deleted_by_simulator
    assert run.outcomes("not_attempted") == expected - deleted
    assert deleted, "nothing was deleted before the deadline"
    assert expected - deleted, "everything was deleted before the deadline"
    # In-flight deletes may finish after the deadline; none may start after it. The bound
    # allows one request's latency and generous scheduling slack, far below the ~2 s the
    # whole selection would take.
    last = max(datetime.fromisoformat(d["at"]) for d in run.truth["deletions"])
    assert last <= began + timedelta(seconds=1.8)


# ------------------------------------------------------------------------------------------
# Throttling, safety limits, tasks that cannot be judged


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
async def test_server_limit_below_rate_fails_no_task(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime, retry_after: bool
) -> None:
    """A gateway admitting 40/s against --rate 200: 429s cost retries, never a failed task."""
    sim = await make_simulator(
        tasks_per_project=90, faults=FaultConfig(rate_limit=40, retry_after=retry_after)
    )
    before = population(sim)
    expected = eligible(before, now=now, older_than=timedelta(days=1))

    run = await run_against(
        sim, tmp_path, now=now, older_than="1d", execute=True, rate="200", concurrency="16"
    )

    assert run.truth["rejected"]["throttled"] > 0, "the server limit was never reached"
    assert run.exit_code == 0
    assert run.report["summary"]["failed"] == 0
    assert run.deleted_by_simulator == run.outcomes("deleted") == expected


@pytest.mark.parametrize("limit", ["5", "10%"])
async def test_max_deletions_aborts_before_any_delete(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime, limit: str
) -> None:
    """More selected than --max-deletions allows: exit 3, nothing deleted, all not_attempted."""
    sim = await make_simulator(tasks_per_project=60)
    expected = eligible(population(sim), now=now, older_than=timedelta(days=1))
    assert len(expected) > 6, "population too small for this test"

    run = await run_against(
        sim, tmp_path, now=now, older_than="1d", max_deletions=limit, execute=True
    )

    assert run.exit_code == 3
    assert run.report["exit_code"] == 3
    assert run.truth["requests"]["delete"] == 0
    assert run.truth["deletions"] == []
    assert run.outcomes("not_attempted") == expected
    assert run.report["summary"]["selected"] == len(expected)


async def test_max_deletions_at_the_selection_lets_the_run_go(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """Exactly as many selected as --max-deletions allows is not an abort."""
    sim = await make_simulator(tasks_per_project=40)
    expected = eligible(population(sim), now=now, older_than=timedelta(days=1))

    run = await run_against(
        sim, tmp_path, now=now, older_than="1d", max_deletions=str(len(expected)), execute=True
    )

    assert run.exit_code == 0
    assert run.deleted_by_simulator == expected


async def test_tasks_without_start_time_or_known_state_are_kept(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """No start time means no age and an unknown state means no judgement: both are kept."""
    sim = await make_simulator(
        tasks_per_project=80,
        population=PopulationConfig(
            status_weights=((SUCCEEDED, 0.6), (UNKNOWN, 0.4)),
            zero_start_time_share=0.15,
            absent_start_time_share=0.15,
        ),
    )
    before = population(sim)
    unknown = {key for key, task in before.items() if task["status"] == UNKNOWN}
    undated = {
        key for key, task in before.items() if task["status"] == SUCCEEDED and not started(task)
    }
    assert len(unknown) >= 3, "population too small for this test"
    assert len(undated) >= 3, "population too small for this test"
    assert any("start_time" not in before[key] for key in undated)
    assert any(before[key].get("start_time") == 0 for key in undated)

    run = await run_against(
        sim, tmp_path, now=now, older_than="0s", states="succeeded", execute=True
    )

    assert run.exit_code == 0
    assert run.deleted_by_simulator == set(before) - unknown - undated
    assert set(population(sim)) == unknown | undated
    not_selected = run.report["summary"]["not_selected"]
    assert not_selected == {"unknown_state": len(unknown), "age_unknown": len(undated)}


# ------------------------------------------------------------------------------------------
# Several targets in one run, through the command line


async def cli(*argv: str) -> tuple[int, str, str]:
    """`oms-cleanup <argv>` in a worker thread (it runs its own event loop); (code, out, err)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(
        run_cli, list(argv), stdin=io.StringIO(), stdout=stdout, stderr=stderr
    )
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.usefixtures("cli_environment")
async def test_several_targets_in_one_report(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Two projects from [[targets]] in a config file: one report, each target its own counts."""
    sim = await make_simulator(
        project_ids=(DEFAULT_PROJECT_ID, SECOND_PROJECT), tasks_per_project=50
    )
    before = population(sim)
    config = targets_file(
        tmp_path / "cleanup.toml",
        sim,
        DEFAULT_PROJECT_ID,
        SECOND_PROJECT,
        options='older_than = "30d"\nrate = 2000\nexecute = true\nlog_format = "json"\n',
    )
    judged_at = datetime.now(UTC)

    code, log_text, _ = await cli("run", "--config", str(config), "--report", "r.json")

    assert code == 0, log_text
    report = validated(tmp_path / "r.json")
    truth = sim.state.snapshot()
    deleted = {(d["project_id"], d["task_id"]) for d in truth["deletions"]}
    # The run judged ages a moment after `judged_at`: only tasks right at 30 days could differ.
    assert deleted == eligible(before, now=judged_at, older_than=timedelta(days=30))
    blocks = {block["project_id"]: block for block in report["summary"]["targets"]}
    assert set(blocks) == {DEFAULT_PROJECT_ID, SECOND_PROJECT}
    for project_id, block in blocks.items():
        mine = {key for key in deleted if key[0] == project_id}
        assert mine, f"nothing deleted in {project_id}"
        assert block["listed"] == 50
        assert block["deleted"] == block["selected"] == len(mine)
        assert sum(block["not_selected"].values()) == 50 - len(mine)
        assert block["requests_sent"]["by_kind"]["delete"] == len(mine)
    assert report["summary"]["deleted"] == len(deleted)
    outcome_events = [
        event
        for event in map(json.loads, log_text.splitlines())
        if event["event"] == "task_outcome"
    ]
    assert {(e["project_id"], e["task_id"]) for e in outcome_events} == deleted
    assert DEFAULT_SECRET_KEY not in log_text


# ------------------------------------------------------------------------------------------
# Exit codes 2 and 4


@pytest.mark.usefixtures("cli_environment")
@pytest.mark.parametrize(
    ("extra", "unset"),
    [
        (["--rate", "0"], None),
        (["--states", "migrating"], None),
        (["--max-deletions", "ten"], None),
        ([], "OMS_CLEANUP_SK"),
    ],
)
async def test_configuration_error_sends_nothing(
    make_simulator: SimulatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    unset: str | None,
) -> None:
    """A usage or configuration error exits 2 before any request reaches the simulator."""
    sim = await make_simulator(tasks_per_project=20)
    if unset:
        monkeypatch.delenv(unset)
    argv = ["run", "--endpoint", sim.url, "--project-id", DEFAULT_PROJECT_ID, "--older-than", "1d"]

    code, _, err = await cli(*argv, "--execute", *extra)

    assert code == 2
    assert err.startswith("oms-cleanup: error: ")
    truth = sim.state.snapshot()
    assert sum(truth["requests"].values()) + sum(truth["rejected"].values()) == 0


async def test_wrong_credentials_end_the_run_at_once(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """A 401: exit 4 with at most one request per target, nothing deleted, report written."""
    sim = await make_simulator(
        project_ids=(DEFAULT_PROJECT_ID, SECOND_PROJECT), tasks_per_project=30
    )
    config = targets_file(tmp_path / "targets.toml", sim, DEFAULT_PROJECT_ID, SECOND_PROJECT)
    wrong = AkSk(access_key=DEFAULT_ACCESS_KEY, secret_key=SecretStr("SK-not-the-right-one-0001"))

    run = await run_against(
        sim, tmp_path, now=now, credentials=wrong, config_file=config, older_than="1d", execute=True
    )

    assert run.exit_code == 4
    assert 1 <= run.truth["rejected"]["auth"] <= 2
    assert run.requests_seen == run.truth["rejected"]["auth"]
    assert run.report["exit_code"] == 4
    errors = [block["error"] for block in run.report["summary"]["targets"] if block["error"]]
    assert errors, "the report does not say what stopped the run"
    for error in errors:
        assert error["error_code"] == "APIG.0301"
        assert error["http_status"] == 401
        assert error["request_id"]
    assert "SK-not-the-right-one" not in json.dumps(run.report)


async def test_expired_token_mid_run_stops_deleting(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """A 401 during deletion ends the run at once: exit 4, no request after it, rest untried."""
    sim = await make_simulator(tasks_per_project=30, faults=FaultConfig(token_expires_after=5))
    expected = eligible(population(sim), now=now, older_than=timedelta(days=1))
    assert len(expected) > 6, "population too small for this test"

    run = await run_against(
        sim,
        tmp_path,
        now=now,
        credentials=IamToken(token=SecretStr(DEFAULT_IAM_TOKEN)),
        older_than="1d",
        execute=True,
        concurrency="1",
    )

    assert run.exit_code == 4
    # One list and four deletes used the token's five requests; the sixth was refused.
    assert run.truth["requests"] == {"list": 1, "show": 0, "delete": 4, "stop": 0}
    assert run.truth["rejected"]["auth"] == 1
    assert run.outcomes("deleted") == run.deleted_by_simulator
    assert len(run.deleted_by_simulator) == 4
    (failed,) = [t for t in run.report["tasks"] if t["outcome"] == "failed"]
    assert failed["last_error"]["error_code"] == "APIG.0301"
    assert failed["last_error"]["request_id"]
    assert run.outcomes("not_attempted") == expected - run.deleted_by_simulator - {
        (failed["project_id"], failed["id"])
    }


@pytest.mark.parametrize(
    ("overrides", "project_id", "error_code"),
    [
        (
            {
                "faults": FaultConfig(
                    malformed_rate=1.0,
                    malformations=(Malformation.TRUNCATED_JSON, Malformation.HTML_200),
                )
            },
            DEFAULT_PROJECT_ID,
            None,
        ),
        ({}, SECOND_PROJECT, "OMS.0206"),
    ],
    ids=["malformed-listing", "project-not-permitted"],
)
async def test_listing_that_cannot_complete_is_fatal(
    make_simulator: SimulatorFactory,
    tmp_path: Path,
    now: datetime,
    overrides: dict[str, Any],
    project_id: str,
    error_code: str | None,
) -> None:
    """A listing that fails (broken answers after every retry, 403): exit 4 before any delete."""
    sim = await make_simulator(tasks_per_project=30, **overrides)

    run = await run_against(
        sim, tmp_path, now=now, older_than="1d", execute=True, project_id=project_id
    )

    assert run.exit_code == 4
    assert run.truth["requests"]["delete"] == 0
    assert run.truth["deletions"] == []
    assert run.report["tasks"] == []
    (block,) = run.report["summary"]["targets"]
    assert block["error"] is not None
    if error_code is not None:
        assert block["error"]["error_code"] == error_code


async def test_failed_listing_stops_the_other_targets_listing(
    make_simulator: SimulatorFactory, tmp_path: Path, now: datetime
) -> None:
    """When one target's listing fails, the others stop too: nothing runs on after the run."""
    sim = await make_simulator(tasks_per_project=1500, faults=FaultConfig(latency_ms=20))
    config = targets_file(tmp_path / "targets.toml", sim, DEFAULT_PROJECT_ID, SECOND_PROJECT)

    with structlog.testing.capture_logs() as events:
        run = await run_against(sim, tmp_path, now=now, config_file=config, older_than="1d")
        # Long enough for an orphaned listing to send (or retry) its next page.
        await asyncio.sleep(0.5)

    assert run.exit_code == 4
    assert events[-1]["event"] == "run_finished", events[-1]
    blocks = {block["project_id"]: block for block in run.report["summary"]["targets"]}
    assert blocks[SECOND_PROJECT]["error"]["error_code"] == "OMS.0206"
    assert blocks[DEFAULT_PROJECT_ID]["listed"] == 0
