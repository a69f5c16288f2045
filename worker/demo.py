"""`oms-cleanup demo`: a local OMS simulator and one executing cleanup run against it.

Everything is real but the cloud: the run lists, signs, rate-limits and deletes over HTTP
on a loopback socket, the simulator checks every signature, and the report is written.
The simulator's own record of what was deleted is printed beside the report's summary.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from worker import logs
from worker.report import load_report
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_PROJECT_ID,
    SimulatorConfig,
    TimingConfig,
)
from worker.simulator.faults import FaultConfig
from worker.simulator.server import run_simulator

DEMO_TASKS = 3000
DEMO_REPORT = Path("oms-cleanup-demo-report.json")

# What an operator would typically ask for: finished, failed and paused tasks older than a
# week, paused ones included, and database dumps kept by name.
DEMO_FLAGS: dict[str, Any] = {
    "older_than": "7d",
    "states": "succeeded,failed,paused",
    "name_exclude": ["*db-dumps*"],
    "rate": "300",
    "concurrency": "32",
    "requeue_delay": "1s",
    "max_attempts": "8",
    "deadline": "5m",
    "execute": True,
    "yes": True,
}


def simulator_config(tasks: int = DEMO_TASKS) -> SimulatorConfig:
    """A realistic account: mostly finished tasks, a few active ones, some 20 ms latency."""
    return SimulatorConfig(
        tasks_per_project=tasks,
        timing=TimingConfig(
            finish_after=(timedelta(seconds=2), timedelta(seconds=8)),
            sticky_pause_share=0.5,
        ),
        faults=FaultConfig(latency_ms=20, jitter_ms=10),
    )


async def run_demo(
    *, tasks: int = DEMO_TASKS, report: Path = DEMO_REPORT, out: TextIO = sys.stdout
) -> int:
    """Start the simulator, run one executing cleanup over HTTP, print what happened."""
    async with run_simulator(simulator_config(tasks)) as sim:
        out.write(f"OMS simulator on {sim.url}: {tasks} tasks in project {DEFAULT_PROJECT_ID}\n")
        settings = load_settings(
            {
                **DEMO_FLAGS,
                "endpoint": sim.url,
                "project_id": DEFAULT_PROJECT_ID,
                "report": str(report),
            },
            environ={},
        )
        credentials = DEFAULT_CLIENT_CREDENTIALS
        out.write(
            "Cleanup: states succeeded,failed,paused; older than 7d; names *db-dumps* excluded; "
            "300 requests/s, 32 in flight\n"
        )
        exit_code = await run_async(settings=settings, credentials=credentials)
        truth = sim.state.snapshot()
    summary = load_report(report)["summary"]
    out.write(_render(summary, deleted_by_simulator=len(truth["deletions"]), report=report))
    out.write(f"exit code {exit_code}\n")
    return exit_code


def _render(summary: dict[str, Any], *, deleted_by_simulator: int, report: Path) -> str:
    kept = ", ".join(f"{reason} {n}" for reason, n in sorted(summary["not_selected"].items()))
    lines = [
        f"listed {summary['listed']}, selected {summary['selected']} (kept: {kept})",
        f"deleted {summary['deleted']}, already gone {summary['already_gone']}, "
        f"still running {summary['still_running']}, failed {summary['failed']}, "
        f"not attempted {summary['not_attempted']}",
        f"requests sent {summary['requests_sent']['total']} in {summary['duration_seconds']:.1f} s",
        f"the simulator recorded {deleted_by_simulator} deletions",
        f"report: {report.resolve()}",
    ]
    return "".join(f"  {line}\n" for line in lines)


def main() -> int:
    """Console entry for `oms-cleanup demo`."""
    logs.configure(fmt=logs.default_format(sys.stderr), level="warning", stream=sys.stderr)
    return asyncio.run(run_demo())
