"""Run metrics through the whole stack: a real run writes the node-exporter textfile."""

from __future__ import annotations

from pathlib import Path

from conftest import SimulatorFactory

from worker.report import load_report
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_PROJECT_ID,
)


def _samples(text: str) -> dict[str, float]:
    """metric name -> value, labels dropped (one sample per metric here)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_and_labels, value = line.rsplit(" ", 1)
            values[name_and_labels.split("{", 1)[0]] = float(value)
    return values


async def test_run_writes_metrics_textfile(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """An executing run's textfile holds the report's counts and a last-success timestamp."""
    sim = await make_simulator(tasks_per_project=80)
    settings = load_settings(
        {
            "endpoint": sim.url,
            "project_id": DEFAULT_PROJECT_ID,
            "older_than": "1d",
            "execute": True,
            "report": str(tmp_path / "r.json"),
            "metrics_textfile": str(tmp_path / "oms.prom"),
        },
        environ={},
    )
    code = await run_async(
        settings=settings,
        credentials=DEFAULT_CLIENT_CREDENTIALS,
        handle_signals=False,
    )
    summary = load_report(tmp_path / "r.json")["summary"]
    samples = _samples((tmp_path / "oms.prom").read_text())
    assert code == 0
    assert samples["oms_cleanup_tasks_deleted"] == summary["deleted"] == len(sim.state.deletions)
    assert samples["oms_cleanup_tasks_selected"] == summary["selected"]
    assert samples["oms_cleanup_run_exit_code"] == 0
    assert samples["oms_cleanup_last_success_timestamp_seconds"] > 0
