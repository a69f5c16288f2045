"""The demo: a simulator and an executing run, end to end over HTTP."""

from __future__ import annotations

import io
from pathlib import Path

from worker.demo import run_demo
from worker.report import load_report


async def test_demo_deletes_what_it_reports(tmp_path: Path) -> None:
    """The demo's report and the simulator's record agree, and the summary is printed."""
    out = io.StringIO()
    report_path = tmp_path / "demo.json"
    code = await run_demo(tasks=300, report=report_path, out=out)
    report = load_report(report_path)
    summary = report["summary"]
    assert code == 0
    assert summary["deleted"] == summary["selected"] > 0
    assert f"the simulator recorded {summary['deleted']} deletions" in out.getvalue()
    assert "exit code 0" in out.getvalue()
