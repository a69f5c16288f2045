"""The confirmation an executing run asks for on a terminal, through a real run."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from conftest import SimulatorFactory

from worker.report import load_report
from worker.runner import run_async
from worker.settings import RunSettings, load_settings
from worker.shutdown import Shutdown
from worker.simulator.config import (
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_PROJECT_ID,
)


def _settings(url: str, report: Path) -> RunSettings:
    return load_settings(
        {
            "endpoint": url,
            "project_id": DEFAULT_PROJECT_ID,
            "older_than": "1d",
            "execute": True,
            "report": str(report),
        },
        environ={},
    )


async def test_declined_confirmation_deletes_nothing(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Answering no is a safety abort: exit 3, no delete sent, every task not attempted."""
    sim = await make_simulator(tasks_per_project=50)
    asked: list[tuple[int, list[str]]] = []

    def decline(count: int, projects: Sequence[str]) -> bool:
        asked.append((count, list(projects)))
        return False

    code = await run_async(
        settings=_settings(sim.url, tmp_path / "r.json"),
        credentials=DEFAULT_CLIENT_CREDENTIALS,
        confirm=decline,
        handle_signals=False,
    )
    report = load_report(tmp_path / "r.json")
    assert code == 3
    assert sim.state.requests["delete"] == 0
    assert asked == [(report["summary"]["selected"], [DEFAULT_PROJECT_ID])]
    assert report["summary"]["not_attempted"] == report["summary"]["selected"] > 0


async def test_signal_while_prompting_stops_the_run(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """A signal during an unanswered prompt ends the run (130) with a report and no delete."""
    sim = await make_simulator(tasks_per_project=50)
    shutdown = Shutdown()
    prompting = threading.Event()
    never_answered = threading.Event()

    def wait_forever(count: int, projects: Sequence[str]) -> bool:
        prompting.set()
        never_answered.wait(timeout=30)
        return True

    async def interrupt_when_prompting() -> None:
        await asyncio.to_thread(prompting.wait, 30)
        shutdown.on_signal("SIGINT")

    interrupter = asyncio.create_task(interrupt_when_prompting())
    code = await run_async(
        settings=_settings(sim.url, tmp_path / "r.json"),
        credentials=DEFAULT_CLIENT_CREDENTIALS,
        confirm=wait_forever,
        shutdown=shutdown,
        handle_signals=False,
    )
    never_answered.set()
    await interrupter
    report = load_report(tmp_path / "r.json")
    assert code == 130
    assert report["interrupted"] == "SIGINT"
    assert sim.state.requests["delete"] == 0
