"""Stop means stop, through whole runs over real sockets: after a stop no new request leaves.

The stop is triggered from inside the simulator (a hook on its own state, in the test's event
loop) at an exact point of the run, so what arrives after it is judged by the simulator's
record, not by how fast anything ran. `--rate 5` spaces the sends 200 ms apart: a request the
client sent before the stop has arrived long before the next one could leave.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cleanup_command import start_run_process
from conftest import SimulatorFactory
from expectations import eligible, validated

from worker.oms.auth import Credentials
from worker.runner import run_async
from worker.settings import load_settings
from worker.shutdown import Shutdown
from worker.simulator.config import DEFAULT_CLIENT_CREDENTIALS, DEFAULT_PROJECT_ID
from worker.simulator.faults import FaultConfig
from worker.simulator.population import PopulationConfig
from worker.simulator.server import SimulatorHandle
from worker.simulator.state import RUNNING as MIGRATING
from worker.simulator.state import SUCCEEDED

SECOND_PROJECT = "fedcba9876543210fedcba9876543210"
THIRD_PROJECT = "aaaabbbbccccddddeeeeffff00001111"
SLOW: dict[str, Any] = {"rate": "5", "concurrency": "64"}
# Every task finished and old: each one is selected.
ALL_SUCCEEDED = PopulationConfig(
    status_weights=((SUCCEEDED, 1.0),), zero_start_time_share=0.0, absent_start_time_share=0.0
)


@dataclass(frozen=True, slots=True)
class Ran:
    """A run's exit code and its (schema-valid) report."""

    exit_code: int
    report: dict[str, Any]

    def blocks(self) -> dict[str, dict[str, Any]]:
        """The report's target blocks by project id."""
        return {b["project_id"]: b for b in self.report["summary"]["targets"]}


def targets_toml(path: Path, *pairs: tuple[SimulatorHandle, str], options: str = "") -> Path:
    """A config file with one [[targets]] entry per (simulator, project id)."""
    path.write_text(
        options
        + "".join(
            f'[[targets]]\nendpoint = "{sim.url}"\nproject_id = "{project}"\n'
            for sim, project in pairs
        ),
        encoding="utf-8",
    )
    return path


async def cleanup(
    tmp_path: Path,
    *,
    shutdown: Shutdown | None = None,
    config_file: Path | None = None,
    credentials: Credentials = DEFAULT_CLIENT_CREDENTIALS,
    **flags: Any,
) -> Ran:
    """One executing run with `flags`; its exit code and validated report."""
    report = tmp_path / "report.json"
    settings = load_settings(
        {"report": str(report), "older_than": "1d", "execute": True, **flags},
        config_file=config_file,
        environ={},
    )
    code = await run_async(
        settings=settings, credentials=credentials, shutdown=shutdown, handle_signals=False
    )
    return Ran(exit_code=code, report=validated(report))


def after_deletes(sim: SimulatorHandle, count: int, action: Callable[[], None]) -> None:
    """Call `action` while the simulator handles its `count`-th delete (inside the request)."""
    original = sim.state.delete_task

    def hooked(project_id: str, task_id: int, *, by: str) -> None:
        try:
            original(project_id, task_id, by=by)
        finally:
            if sim.state.requests["delete"] == count:
                action()

    sim.state.delete_task = hooked  # type: ignore[method-assign]


def assert_counts_add_up(report: dict[str, Any]) -> None:
    """listed = selected + sum(not_selected), selected = sum(outcomes): per target and in total."""
    outcomes = (
        "deleted",
        "already_gone",
        "still_running",
        "failed",
        "would_delete",
        "not_attempted",
    )
    summary = report["summary"]
    for block in [summary, *summary["targets"]]:
        assert block["listed"] == block["selected"] + sum(block["not_selected"].values()), block
        assert block["selected"] == sum(block[name] for name in outcomes), block
    assert summary["selected"] == len(report["tasks"])


@pytest.mark.parametrize("stop", ["SIGTERM", "deadline"])
async def test_no_delete_leaves_after_a_stop(
    make_simulator: SimulatorFactory, tmp_path: Path, stop: str
) -> None:
    """At --rate 5 --concurrency 64, a stop after the 3rd delete: no 4th, rest not_attempted."""
    sim = await make_simulator(tasks_per_project=120, population=ALL_SUCCEEDED)
    shutdown = Shutdown()
    action = (lambda: shutdown.on_signal("SIGTERM")) if stop == "SIGTERM" else shutdown.on_deadline
    after_deletes(sim, 3, action)

    ran = await cleanup(
        tmp_path, shutdown=shutdown, endpoint=sim.url, project_id=DEFAULT_PROJECT_ID, **SLOW
    )

    truth = sim.state.snapshot()
    assert truth["requests"]["delete"] == 3
    assert len(truth["deletions"]) == 3
    summary = ran.report["summary"]
    assert (summary["deleted"], summary["not_attempted"], summary["failed"]) == (3, 117, 0)
    assert summary["requests_sent"]["by_kind"]["delete"] == 3
    assert ran.exit_code == (143 if stop == "SIGTERM" else 1)
    assert summary["deadline_reached"] is (stop == "deadline")
    never_sent = [t for t in ran.report["tasks"] if t["outcome"] == "not_attempted"]
    assert all(t["attempts"] == 0 and t["last_error"] is None for t in never_sent)
    assert_counts_add_up(ran.report)


async def test_revoked_key_meets_only_the_requests_in_flight(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """An AK/SK revoked mid-run: 401s only for requests already in flight, exit 4, rest untried."""
    sim = await make_simulator(
        tasks_per_project=120,
        population=ALL_SUCCEEDED,
        faults=FaultConfig(credentials_revoked_after=6, latency_ms=20, key_lockout_after=5),
    )

    ran = await cleanup(tmp_path, endpoint=sim.url, project_id=DEFAULT_PROJECT_ID, **SLOW)

    truth = sim.state.snapshot()
    assert truth["locked_keys"] == [], "the run went on until the gateway locked the key"
    in_flight = truth["in_flight_at_first_auth_refusal"]
    assert in_flight is not None
    assert 1 <= truth["rejected"]["auth"] <= in_flight
    assert ran.exit_code == 4
    summary = ran.report["summary"]
    assert summary["deleted"] == len(truth["deletions"]) == truth["requests"]["delete"]
    assert summary["failed"] == truth["rejected"]["auth"]
    (block,) = summary["targets"]
    assert block["error"]["error_code"] == "APIG.0301"
    assert summary["not_attempted"] == 120 - summary["deleted"] - summary["failed"]
    assert_counts_add_up(ran.report)


async def test_revoked_key_with_several_targets(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Three targets, key revoked mid-run: refused <= in flight, never-sent tasks not_attempted."""
    sim = await make_simulator(
        project_ids=(DEFAULT_PROJECT_ID, SECOND_PROJECT, THIRD_PROJECT),
        tasks_per_project=60,
        population=ALL_SUCCEEDED,
        faults=FaultConfig(credentials_revoked_after=12, latency_ms=20),
    )
    config = targets_toml(
        tmp_path / "t.toml",
        (sim, DEFAULT_PROJECT_ID),
        (sim, SECOND_PROJECT),
        (sim, THIRD_PROJECT),
    )

    ran = await cleanup(tmp_path, config_file=config, **SLOW)

    truth = sim.state.snapshot()
    refused = truth["auth_refused_by_project"]
    assert refused, "the key was never refused"
    # Each target sends 200 ms apart and waits 20 ms for an answer: about one in flight.
    for project, count in refused.items():
        assert count <= truth["peak_in_flight_by_project"][project], project
    assert ran.exit_code == 4
    summary = ran.report["summary"]
    assert summary["failed"] == truth["rejected"]["auth"]
    assert summary["deleted"] == len(truth["deletions"])
    errors = [b["error"] for b in summary["targets"] if b["error"] is not None]
    assert errors
    assert all(e["error_code"] == "APIG.0301" for e in errors)
    # Sent = answered: every delete the simulator saw or refused, no more, no fewer.
    sent = sum(b["requests_sent"]["by_kind"]["delete"] for b in summary["targets"])
    assert sent == truth["requests"]["delete"] + truth["rejected"]["auth"]
    assert_counts_add_up(ran.report)


async def test_deadline_during_a_slow_listing_exits_1(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """The deadline while listing: exit 1 (not 4), deadline_reached, the block says 'stopped'."""
    sim = await make_simulator(tasks_per_project=400, faults=FaultConfig(latency_ms=1500))

    ran = await cleanup(
        tmp_path, endpoint=sim.url, project_id=DEFAULT_PROJECT_ID, deadline="1s", rate="100"
    )

    assert ran.exit_code == 1
    summary = ran.report["summary"]
    assert summary["deadline_reached"] is True
    (block,) = summary["targets"]
    assert block["listing"] == "stopped"
    assert block["error"] is None
    assert sim.state.requests["delete"] == 0
    assert_counts_add_up(ran.report)


async def test_each_target_deletes_once_its_own_listing_is_complete(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Two quick targets delete while a slow one is still listing; the deadline stops that one."""
    quick = await make_simulator(
        project_ids=(DEFAULT_PROJECT_ID, SECOND_PROJECT),
        tasks_per_project=40,
        population=ALL_SUCCEEDED,
    )
    slow = await make_simulator(
        project_ids=(THIRD_PROJECT,), tasks_per_project=400, faults=FaultConfig(latency_ms=1500)
    )
    config = targets_toml(
        tmp_path / "t.toml",
        (quick, DEFAULT_PROJECT_ID),
        (quick, SECOND_PROJECT),
        (slow, THIRD_PROJECT),
    )

    ran = await cleanup(tmp_path, config_file=config, deadline="2s", rate="500")

    assert ran.exit_code == 1
    assert ran.report["summary"]["deadline_reached"] is True
    blocks = ran.blocks()
    for project in (DEFAULT_PROJECT_ID, SECOND_PROJECT):
        assert blocks[project]["listing"] == "complete"
        assert blocks[project]["deleted"] == 40
    assert len(quick.state.deletions) == 80
    assert blocks[THIRD_PROJECT]["listing"] == "stopped"
    assert blocks[THIRD_PROJECT]["listed"] == blocks[THIRD_PROJECT]["selected"] == 0
    assert slow.state.requests["delete"] == 0
    assert_counts_add_up(ran.report)


async def test_a_percentage_cap_applies_to_each_targets_own_listing(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """10 %: a 50-task project wholly selected is refused next to a 1,000-task one within it."""
    small = await make_simulator(
        project_ids=(SECOND_PROJECT,), tasks_per_project=50, population=ALL_SUCCEEDED
    )
    big = await make_simulator(
        tasks_per_project=1000,
        population=PopulationConfig(status_weights=((SUCCEEDED, 0.03), (MIGRATING, 0.97))),
    )
    now = datetime.now(UTC)
    big_selected = eligible(
        big.state.projects[DEFAULT_PROJECT_ID].tasks, now=now, older_than=timedelta(days=1)
    )
    assert 0 < len(big_selected) <= 100, "population does not fit the test"
    config = targets_toml(tmp_path / "t.toml", (small, SECOND_PROJECT), (big, DEFAULT_PROJECT_ID))

    ran = await cleanup(tmp_path, config_file=config, max_deletions="10%", rate="2000")

    assert ran.exit_code == 3
    blocks = ran.blocks()
    assert small.state.requests["delete"] == 0
    assert blocks[SECOND_PROJECT]["not_attempted"] == 50
    assert blocks[SECOND_PROJECT]["max_deletions"] == {
        "cap": "10%",
        "applies_to": "target",
        "base": 50,
        "limit": 5,
        "exceeded": True,
    }
    assert {d.task_id for d in big.state.deletions} == big_selected
    assert blocks[DEFAULT_PROJECT_ID]["max_deletions"]["applies_to"] == "target"
    assert blocks[DEFAULT_PROJECT_ID]["max_deletions"]["exceeded"] is False
    assert_counts_add_up(ran.report)


async def test_an_absolute_cap_applies_to_the_run_total(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """An absolute cap counts every target's selection together: 2 x 30 > 50, nothing deleted."""
    sim = await make_simulator(
        project_ids=(DEFAULT_PROJECT_ID, SECOND_PROJECT),
        tasks_per_project=30,
        population=ALL_SUCCEEDED,
    )
    config = targets_toml(tmp_path / "t.toml", (sim, DEFAULT_PROJECT_ID), (sim, SECOND_PROJECT))

    ran = await cleanup(tmp_path, config_file=config, max_deletions="50", rate="2000")

    assert ran.exit_code == 3
    assert sim.state.requests["delete"] == 0
    for block in ran.blocks().values():
        assert block["max_deletions"] == {
            "cap": "50",
            "applies_to": "run",
            "base": 60,
            "limit": 50,
            "exceeded": True,
        }
    assert_counts_add_up(ran.report)


async def test_a_target_whose_deletes_are_forbidden_names_the_error(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Every DELETE in one project answered 403 OMS.0206: that target's block error says so."""
    sim = await make_simulator(
        project_ids=(DEFAULT_PROJECT_ID, SECOND_PROJECT),
        tasks_per_project=30,
        population=ALL_SUCCEEDED,
        faults=FaultConfig(read_only_projects=(SECOND_PROJECT,)),
    )
    config = targets_toml(tmp_path / "t.toml", (sim, DEFAULT_PROJECT_ID), (sim, SECOND_PROJECT))

    ran = await cleanup(tmp_path, config_file=config, rate="50", concurrency="2")

    assert ran.exit_code == 4
    blocks = ran.blocks()
    error = blocks[SECOND_PROJECT]["error"]
    assert error is not None
    assert (error["http_status"], error["error_code"]) == (403, "OMS.0206")
    assert blocks[DEFAULT_PROJECT_ID]["error"] is None
    # The first 403 stops the run: only deletes already in flight met one too.
    truth = sim.state.snapshot()
    assert 1 <= truth["rejected"]["forbidden"] <= truth["peak_in_flight_by_project"][SECOND_PROJECT]
    assert_counts_add_up(ran.report)


async def test_paused_migrations_say_when_and_in_what_state(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """--stop-running then a stop before the delete: stopped_at is set and status is pausing."""
    sim = await make_simulator(
        tasks_per_project=6,
        population=PopulationConfig(
            status_weights=((MIGRATING, 1.0),),
            active_age_range=(timedelta(days=2), timedelta(days=3)),
            zero_start_time_share=0.0,
            absent_start_time_share=0.0,
        ),
    )
    shutdown = Shutdown()
    original = sim.state.stop_task

    def hooked(project_id: str, task_id: int, *, by: str) -> None:
        original(project_id, task_id, by=by)
        if sim.state.requests["stop"] == 6:
            shutdown.on_signal("SIGTERM")

    sim.state.stop_task = hooked  # type: ignore[method-assign]
    before = datetime.now(UTC)

    ran = await cleanup(
        tmp_path,
        shutdown=shutdown,
        endpoint=sim.url,
        project_id=DEFAULT_PROJECT_ID,
        stop_running=True,
        states="migrating",
        requeue_delay="60s",
        rate="2000",
    )

    assert ran.exit_code == 143
    assert len(ran.report["tasks"]) == 6
    for task in ran.report["tasks"]:
        assert task["outcome"] == "still_running"
        assert task["status"] == "pausing"
        stopped_at = datetime.fromisoformat(task["stopped_at"])
        assert before <= stopped_at <= datetime.now(UTC)
    assert sim.state.requests["delete"] == 0


async def test_sigterm_to_the_process_sends_no_new_delete(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """A real SIGTERM to `oms-cleanup run` while the 3rd delete is served: no 4th arrives."""
    sim = await make_simulator(tasks_per_project=120, population=ALL_SUCCEEDED)
    report = tmp_path / "report.json"
    process = await start_run_process(
        sim.url,
        "--older-than",
        "1d",
        "--rate",
        "5",
        "--concurrency",
        "64",
        "--execute",
        "--yes",
        "--report",
        str(report),
        stderr=asyncio.subprocess.DEVNULL,
        environment={"OMS_CLEANUP_LOG_FORMAT": "json"},
    )
    after_deletes(sim, 3, lambda: process.send_signal(signal.SIGTERM))
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.read(), timeout=60)
    code = await asyncio.wait_for(process.wait(), timeout=60)

    assert code == 143
    truth = sim.state.snapshot()
    assert truth["requests"]["delete"] == 3
    written = validated(report)
    assert written["interrupted"] == "SIGTERM"
    assert (written["summary"]["deleted"], written["summary"]["failed"]) == (3, 0)
    assert written["summary"]["not_attempted"] == 117
    assert_counts_add_up(written)


async def test_deadline_with_several_targets_leaves_never_sent_tasks_not_attempted(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Three targets, the deadline mid-deletion: exactly the tasks OMS saw a delete for have one."""
    sim = await make_simulator(
        project_ids=(DEFAULT_PROJECT_ID, SECOND_PROJECT, THIRD_PROJECT),
        tasks_per_project=40,
        population=ALL_SUCCEEDED,
    )
    config = targets_toml(
        tmp_path / "t.toml",
        (sim, DEFAULT_PROJECT_ID),
        (sim, SECOND_PROJECT),
        (sim, THIRD_PROJECT),
    )
    shutdown = Shutdown()
    at_stop: list[int] = []

    def deadline() -> None:
        at_stop.append(sim.state.requests["delete"])
        shutdown.on_deadline()

    after_deletes(sim, 6, deadline)

    ran = await cleanup(tmp_path, shutdown=shutdown, config_file=config, **SLOW)

    assert ran.exit_code == 1
    assert ran.report["summary"]["deadline_reached"] is True
    truth = sim.state.snapshot()
    # After the stop only requests already on the wire may arrive: one per target at most.
    in_flight = sum(truth["peak_in_flight_by_project"].values())
    assert at_stop == [6]
    assert truth["requests"]["delete"] - 6 <= in_flight - 1
    seen = {(d["project_id"], d["task_id"]) for d in truth["deletions"]}
    by_outcome: dict[str, set[tuple[str, int]]] = {}
    for task in ran.report["tasks"]:
        by_outcome.setdefault(task["outcome"], set()).add((task["project_id"], task["id"]))
    assert by_outcome.get("failed", set()) == set()
    assert by_outcome["deleted"] == seen
    assert by_outcome["not_attempted"].isdisjoint(seen)
    assert len(by_outcome["not_attempted"]) == 120 - len(seen)
    for block in ran.report["summary"]["targets"]:
        sent = block["requests_sent"]["by_kind"]["delete"]
        assert sent == block["deleted"], block
    assert_counts_add_up(ran.report)


async def test_a_failed_listing_stops_a_target_already_deleting(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """One target deletes while another's listing fails (403): the deleting one stops too."""
    quick = await make_simulator(tasks_per_project=40, population=ALL_SUCCEEDED)
    # SECOND_PROJECT is not hosted there: its first page is a 403, a second and a half late.
    refusing = await make_simulator(faults=FaultConfig(latency_ms=1500))
    at_refusal: list[int] = []
    hosts = refusing.state.hosts

    def hosted(project_id: str) -> bool:
        answer = hosts(project_id)
        if not answer:
            at_refusal.append(quick.state.requests["delete"])
        return answer

    refusing.state.hosts = hosted  # type: ignore[method-assign]
    config = targets_toml(
        tmp_path / "t.toml", (quick, DEFAULT_PROJECT_ID), (refusing, SECOND_PROJECT)
    )

    ran = await cleanup(tmp_path, config_file=config, **SLOW)

    assert ran.exit_code == 4
    (deletes_then,) = at_refusal
    assert 0 < deletes_then < 40, "the quick target should have been deleting by then"
    truth = quick.state.snapshot()
    # Only a delete already on the wire (one at a time at --rate 5) may still arrive.
    assert truth["requests"]["delete"] - deletes_then <= truth["peak_in_flight"] - 1
    blocks = ran.blocks()
    assert blocks[SECOND_PROJECT]["listing"] == "failed"
    assert blocks[SECOND_PROJECT]["error"]["error_code"] == "OMS.0206"
    assert blocks[DEFAULT_PROJECT_ID]["deleted"] == len(truth["deletions"])
    assert blocks[DEFAULT_PROJECT_ID]["failed"] == 0
    assert_counts_add_up(ran.report)


async def test_confirmation_waits_for_every_listing_and_percentages_stay_per_target(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """With a prompt: one question after every listing, of the targets within their own cap."""
    small = await make_simulator(
        project_ids=(SECOND_PROJECT,), tasks_per_project=20, population=ALL_SUCCEEDED
    )
    big = await make_simulator(
        tasks_per_project=300,
        population=PopulationConfig(status_weights=((SUCCEEDED, 0.05), (MIGRATING, 0.95))),
    )
    config = targets_toml(tmp_path / "t.toml", (small, SECOND_PROJECT), (big, DEFAULT_PROJECT_ID))
    asked: list[tuple[int, list[str], int]] = []

    def confirm(count: int, projects: Any) -> bool:
        asked.append((count, list(projects), big.state.requests["list"]))
        return True

    settings = load_settings(
        {
            "report": str(tmp_path / "r.json"),
            "older_than": "1d",
            "execute": True,
            "max_deletions": "25%",
            "rate": "2000",
        },
        config_file=config,
        environ={},
    )
    code = await run_async(
        settings=settings,
        credentials=DEFAULT_CLIENT_CREDENTIALS,
        confirm=confirm,
        handle_signals=False,
    )
    report = validated(tmp_path / "r.json")

    blocks = {b["project_id"]: b for b in report["summary"]["targets"]}
    big_selected = blocks[DEFAULT_PROJECT_ID]["selected"]
    assert 0 < big_selected <= 75, "population does not fit the test"
    # Asked once, after the big target's three pages, about the big target's tasks only.
    assert asked == [(big_selected, [DEFAULT_PROJECT_ID], 3)]
    assert code == 3
    assert small.state.requests["delete"] == 0
    assert blocks[SECOND_PROJECT]["max_deletions"]["exceeded"] is True
    assert blocks[DEFAULT_PROJECT_ID]["deleted"] == big_selected
    assert_counts_add_up(report)


@pytest.mark.parametrize("cut", ["second-signal", "grace-over"])
async def test_only_requests_on_the_wire_are_failed_when_cut_off(
    make_simulator: SimulatorFactory, tmp_path: Path, cut: str
) -> None:
    """Deletes cut off on the wire are failed ("may have reached"); the queued ones untried."""
    release = asyncio.Event()
    three_on_the_wire = asyncio.Event()
    held = 0
    shutdown = Shutdown()

    async def hold_deletes(seconds: float) -> None:
        # The simulator's latency: none for the listing, until released for every delete.
        nonlocal held
        if sim.state.requests["list"] == 0:
            return
        held += 1
        if held == 3:
            shutdown.on_signal("SIGTERM")
            if cut == "second-signal":
                shutdown.on_signal("SIGTERM")
            three_on_the_wire.set()
        await release.wait()

    sim = await make_simulator(
        tasks_per_project=60,
        population=ALL_SUCCEEDED,
        faults=FaultConfig(latency_ms=1),
        sleep=hold_deletes,
    )
    try:
        ran = await cleanup(
            tmp_path,
            shutdown=shutdown,
            endpoint=sim.url,
            project_id=DEFAULT_PROJECT_ID,
            shutdown_grace="1s",
            **SLOW,
        )
    finally:
        release.set()

    assert three_on_the_wire.is_set()
    assert ran.exit_code == 143
    failed = [t for t in ran.report["tasks"] if t["outcome"] == "failed"]
    assert len(failed) == held == 3
    for task in failed:
        assert task["attempts"] == 1
        assert "may have reached OMS" in task["last_error"]["error_msg"]
    summary = ran.report["summary"]
    assert summary["not_attempted"] == 57
    assert summary["requests_sent"]["by_kind"]["delete"] == 3
    assert_counts_add_up(ran.report)
