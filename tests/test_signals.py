"""A real `python -m worker run --execute` process, stopped mid-deletion by a real signal.

The simulator runs in the test's own event loop, so its record (`state`) is the truth the
interrupted run's report is held against. The command line sends its JSON log lines to stdout;
the test reads them as they come, which also shows that outcomes are logged while running.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cleanup_command import start_run_process
from conftest import SimulatorFactory
from expectations import validated

from worker.simulator.config import DEFAULT_PROJECT_ID
from worker.simulator.faults import FaultConfig
from worker.simulator.population import PopulationConfig
from worker.simulator.server import SimulatorHandle

# Long enough for a slow CI machine; a healthy run of these tests takes a few seconds.
PATIENCE = 30.0
EVENT_KEYS = {"task_id", "outcome", "attempt", "error_code", "request_id"}


@dataclass
class RunProcess:
    """A running `python -m worker run` and the JSON events it has logged so far."""

    process: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    logged: asyncio.Condition = field(default_factory=asyncio.Condition)

    def outcome_events(self) -> list[dict[str, Any]]:
        """The `task_outcome` events logged so far."""
        return [event for event in self.events if event.get("event") == "task_outcome"]

    async def until_outcomes(self, count: int, *outcomes: str) -> None:
        """Wait until `count` task outcomes among `outcomes` were logged (at most PATIENCE)."""

        def enough() -> bool:
            return sum(e["outcome"] in outcomes for e in self.outcome_events()) >= count

        async with asyncio.timeout(PATIENCE), self.logged:
            await self.logged.wait_for(enough)

    async def wait(self) -> int:
        """The exit code, once the process has ended (bounded by PATIENCE)."""
        return await asyncio.wait_for(self.process.wait(), timeout=PATIENCE)


async def _read_events(stream: asyncio.StreamReader, run: RunProcess) -> None:
    async for raw in stream:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            run.other_lines.append(line)
            continue
        async with run.logged:
            run.events.append(event)
            run.logged.notify_all()


@asynccontextmanager
async def cleanup_process(
    sim: SimulatorHandle, report: Path, *flags: str
) -> AsyncIterator[RunProcess]:
    """`python -m worker run --execute --yes` against `sim`, credentials in its environment."""
    process = await start_run_process(
        sim.url,
        "--older-than",
        "1d",
        "--execute",
        "--yes",
        "--log-format",
        "json",
        "--report",
        str(report),
        *flags,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=report.parent,
    )
    assert process.stdout is not None
    run = RunProcess(process)
    reader = asyncio.create_task(_read_events(process.stdout, run))
    try:
        yield run
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(reader, timeout=PATIENCE)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
async def test_signal_mid_deletion_writes_a_true_report(
    make_simulator: SimulatorFactory, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """A signal mid-run: exit 130/143, report written and true, untried tasks not_attempted."""
    sim = await make_simulator(tasks_per_project=60, faults=FaultConfig(latency_ms=30))
    report = tmp_path / "report.json"

    async with cleanup_process(sim, report, "--rate", "10", "--concurrency", "2") as run:
        # Logged once the answer came: the simulator has applied these deletes by then.
        await run.until_outcomes(3, "deleted")
        logged_before_signal = len(run.outcome_events())
        run.process.send_signal(sig)
        assert await run.wait() == code, run.other_lines

    written = validated(report)
    assert written["exit_code"] == code
    assert written["interrupted"] == sig.name
    deleted = {t["id"] for t in written["tasks"] if t["outcome"] in ("deleted", "already_gone")}
    assert deleted == {d["task_id"] for d in sim.state.snapshot()["deletions"]}
    untried = {t["id"] for t in written["tasks"] if t["outcome"] == "not_attempted"}
    assert untried, "the run finished before the signal: nothing left to check"
    for task in written["tasks"]:
        # A graceful stop lets in-flight deletes finish: every task was deleted or never tried.
        assert task["outcome"] in ("deleted", "not_attempted"), task
        assert (task["attempts"] == 0) == (task["outcome"] == "not_attempted"), task
    assert untried <= set(sim.state.projects[DEFAULT_PROJECT_ID].tasks)

    # One structured event per outcome, logged as it happened rather than at the end.
    assert logged_before_signal > 0
    events = run.outcome_events()
    assert all(set(event) >= EVENT_KEYS for event in events)
    assert len(events) == len(written["tasks"])
    assert {(e["task_id"], e["outcome"], e["attempt"]) for e in events} == {
        (t["id"], t["outcome"], t["attempts"]) for t in written["tasks"]
    }


class HeldRequests:
    """A simulator `sleep` that holds every request after the first `free` ones for a minute."""

    def __init__(self, *, free: int, expected: int) -> None:
        self.free = free
        self.expected = expected
        self.held = 0
        self.all_held = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        if self.free > 0:
            self.free -= 1
            return
        self.held += 1
        if self.held >= self.expected:
            self.all_held.set()
        await asyncio.sleep(60)


async def test_second_signal_stops_at_once(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """A second signal cancels in-flight deletes the grace period would wait for; report written."""
    # The one list page goes through; both workers' first deletes hang.
    hold = HeldRequests(free=1, expected=2)
    sleep: Callable[[float], Awaitable[None]] = hold
    sim = await make_simulator(
        tasks_per_project=40,
        # Every task finished long ago, so all 40 are selected.
        population=PopulationConfig(
            status_weights=((5, 1.0),), zero_start_time_share=0, absent_start_time_share=0
        ),
        faults=FaultConfig(latency_ms=1),
        sleep=sleep,
    )
    report = tmp_path / "report.json"

    async with cleanup_process(
        sim, report, "--rate", "100", "--concurrency", "2", "--shutdown-grace", "5m"
    ) as run:
        await asyncio.wait_for(hold.all_held.wait(), timeout=PATIENCE)
        run.process.send_signal(signal.SIGTERM)
        # The first signal ends the queued tasks at once, and waits for the two in flight.
        await run.until_outcomes(38, "not_attempted")
        assert run.process.returncode is None, "did not wait for the in-flight deletes"
        assert hold.held == 2
        run.process.send_signal(signal.SIGTERM)
        # Well before the held requests (60 s) or the grace period (5 min) could end.
        assert await run.wait() == 143, run.other_lines

    written = validated(report)
    assert written["interrupted"] == "SIGTERM"
    assert sim.state.snapshot()["deletions"] == []
    cut_off = [t for t in written["tasks"] if t["outcome"] == "failed"]
    assert len(cut_off) == 2
    for task in cut_off:
        assert "cancelled at shutdown" in task["last_error"]["error_msg"]
    assert {t["outcome"] for t in written["tasks"]} == {"failed", "not_attempted"}
