"""The report is never lost: its path is proved writable before the first request, and a
report that still cannot be written at the end leaves its summary in the log (exit 5)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import structlog.testing
from conftest import SimulatorFactory

from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import DEFAULT_CLIENT_CREDENTIALS, DEFAULT_PROJECT_ID
from worker.simulator.server import SimulatorHandle


def _settings(sim: SimulatorHandle, report: Path) -> dict[str, str | bool]:
    return {
        "endpoint": sim.url,
        "project_id": DEFAULT_PROJECT_ID,
        "older_than": "1d",
        "execute": True,
        "report": str(report),
        "rate": "2000",
    }


@pytest.mark.parametrize(
    "where",
    ["proc", "sys"],
)
async def test_unwritable_report_path_sends_nothing(
    make_simulator: SimulatorFactory, tmp_path: Path, where: str
) -> None:
    """A report that cannot be written (even by root): one line, exit 2, no request at all."""
    sim = await make_simulator(tasks_per_project=20)
    # procfs and sysfs take no new files, whoever asks (tests run as root: chmod would not do).
    # A missing directory, or a directory as the path, is refused earlier, by the settings.
    report = {"proc": Path("/proc/self/report.json"), "sys": Path("/sys/report.json")}[where]
    stderr = io.StringIO()

    code = await run_async(
        settings=load_settings(_settings(sim, report), environ={}),
        credentials=DEFAULT_CLIENT_CREDENTIALS,
        handle_signals=False,
        stderr=stderr,
    )

    assert code == 2
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("oms-cleanup: error: report ")
    assert str(report) in lines[0]
    truth = sim.state.snapshot()
    assert sum(truth["requests"].values()) + sum(truth["rejected"].values()) == 0


async def test_report_lost_at_the_end_goes_to_the_log_with_exit_5(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """The report's directory vanishes mid-run: summary in one log event, one line, exit 5."""
    sim = await make_simulator(tasks_per_project=40)
    directory = tmp_path / "reports"
    directory.mkdir()
    original = sim.state.delete_task

    def delete_then_lose_the_directory(project_id: str, task_id: int, *, by: str) -> None:
        original(project_id, task_id, by=by)
        shutil.rmtree(directory, ignore_errors=True)

    sim.state.delete_task = delete_then_lose_the_directory  # type: ignore[method-assign]
    stderr = io.StringIO()

    with structlog.testing.capture_logs() as events:
        code = await run_async(
            settings=load_settings(_settings(sim, directory / "report.json"), environ={}),
            credentials=DEFAULT_CLIENT_CREDENTIALS,
            handle_signals=False,
            stderr=stderr,
        )

    assert code == 5
    assert sim.state.deletions, "the run should have deleted before the report was lost"
    (lost,) = [e for e in events if e["event"] == "report_unwritten"]
    assert lost["summary"]["deleted"] == len(sim.state.deletions)
    assert lost["summary"]["selected"] == lost["summary"]["deleted"]
    assert lost["exit_code"] == 5
    assert events[-1]["event"] == "run_finished"
    assert events[-1]["exit_code"] == 5
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1
    assert "could not be written" in lines[0]
    assert "exit 5" in lines[0]
