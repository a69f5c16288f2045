"""Run metrics: what a Pushgateway receives over a real socket, the textfile, and failures."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import SimulatorFactory
from prometheus_client.parser import text_string_to_metric_families

from worker import metrics
from worker.outcomes import Outcome
from worker.report import TargetSummary, TaskRecord, build_report, load_report
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
)

FINISHED = datetime(2026, 11, 27, 3, 4, 5, tzinfo=UTC)
OUTCOMES = ["deleted"] * 3 + ["already_gone"] * 2 + ["still_running", "failed"]


def a_report(
    *, exit_code: int = 0, dry_run: bool = False, projects: tuple[str, ...] = ("pb", "pa")
) -> dict[str, Any]:
    """A report of 7 selected tasks in the first project (10 listed per project)."""
    records = [
        TaskRecord(
            id=index,
            name=f"t{index}",
            project_id=projects[0],
            status="succeeded",
            start_time=None,
            outcome=Outcome(outcome),
            attempts=1,
        )
        for index, outcome in enumerate(OUTCOMES if projects else [], start=1)
    ]
    targets = [
        TargetSummary(
            label=f"cn-north-4/{project}",
            project_id=project,
            region="cn-north-4",
            endpoint="https://oms.cn-north-4.myhuaweicloud.com",
            listed=10,
        )
        for project in projects
    ]
    return build_report(
        run_id="run-1",
        started_at=FINISHED - timedelta(seconds=95.5),
        finished_at=FINISHED,
        dry_run=dry_run,
        exit_code=exit_code,
        interrupted=None,
        settings={
            "shard_index": 1,
            "shard_count": 2,
            "targets": [{"project_id": project} for project in projects],
        },
        targets=targets,
        records=records,
    )


def values(text: str) -> dict[str, float]:
    """Sample name -> value, from the Prometheus text format."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_labels(text: str) -> set[tuple[tuple[str, str], ...]]:
    """The distinct label sets of the samples in `text`."""
    return {
        tuple(sorted(sample.labels.items()))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# ------------------------------------------------------------------------------------------
# A Pushgateway stand-in on a free loopback port


@dataclass
class Received:
    """One request the stand-in Pushgateway received."""

    method: str
    path: str
    body: str


@dataclass
class Gateway:
    """A tiny HTTP server that records pushes and answers with `status` after `delay`."""

    url: str
    received: list[Received] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours proxy variables; pushes to loopback in these tests must go direct."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    """A recording Pushgateway stand-in, stopped after the test."""
    state = Gateway(url="")

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8")
            state.received.append(Received(self.command, self.path, body))
            time.sleep(state.delay)
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        # http.server dispatches to do_<METHOD>.
        do_PUT = do_POST = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # A short poll interval keeps shutdown (and so each test's teardown) quick.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def publish(report: Mapping[str, Any], **kwargs: Any) -> list[MutableMapping[str, Any]]:
    """metrics.publish with its log events captured and returned."""
    options: dict[str, Any] = {"pushgateway": None, "textfile": None, **kwargs}
    with structlog.testing.capture_logs() as logs:
        metrics.publish(report, **options)
    return logs


# ------------------------------------------------------------------------------------------
# Pushgateway


def test_successful_run_puts_everything(gateway: Gateway) -> None:
    """Exit 0: one PUT to /metrics/job/oms_cleanup/<grouping> with every metric and value."""
    report = a_report()
    logs = publish(report, pushgateway=gateway.url)
    (push,) = gateway.received
    assert push.method == "PUT"
    assert push.path == "/metrics/job/oms_cleanup/shard/1/targets/pa%2Cpb"
    got = values(push.body)
    summary = report["summary"]
    for count in metrics.TASK_COUNTS:
        assert got[f"oms_cleanup_tasks_{count}"] == summary[count]
    assert (got["oms_cleanup_tasks_deleted"], got["oms_cleanup_tasks_failed"]) == (3, 1)
    assert got["oms_cleanup_tasks_listed"] == 20
    assert got["oms_cleanup_run_duration_seconds"] == pytest.approx(95.5)
    assert got["oms_cleanup_run_exit_code"] == 0
    assert got["oms_cleanup_run_dry_run"] == 0
    assert got["oms_cleanup_last_run_timestamp_seconds"] == FINISHED.timestamp()
    assert got[metrics.LAST_SUCCESS] == FINISHED.timestamp()
    assert sample_labels(push.body) == {(("shard", "1"), ("targets", "pa,pb"))}
    assert [event["event"] for event in logs] == ["metrics_pushed"]


@pytest.mark.parametrize("code", [1, 3, 4, 143])
def test_failed_run_posts_without_last_success(gateway: Gateway, code: int) -> None:
    """A failed run POSTs (pushadd) and sends no last-success, so the gateway keeps the old one."""
    publish(a_report(exit_code=code), pushgateway=gateway.url)
    (push,) = gateway.received
    assert push.method == "POST"
    got = values(push.body)
    assert got["oms_cleanup_run_exit_code"] == code
    assert metrics.LAST_SUCCESS not in got
    assert got["oms_cleanup_last_run_timestamp_seconds"] == FINISHED.timestamp()


def test_custom_job_and_grouping(gateway: Gateway) -> None:
    """The job name and grouping key given are the path; their labels are on every sample."""
    publish(
        a_report(dry_run=True),
        pushgateway=gateway.url + "/",
        job="nightly",
        grouping={"region": "cn-north-4", "env": "prod"},
    )
    (push,) = gateway.received
    assert push.path == "/metrics/job/nightly/env/prod/region/cn-north-4"
    assert sample_labels(push.body) == {(("env", "prod"), ("region", "cn-north-4"))}
    assert values(push.body)["oms_cleanup_run_dry_run"] == 1


def test_empty_shard_pushes_an_empty_targets_label(gateway: Gateway) -> None:
    """A shard without targets still reports, under targets="" (base64-encoded in the path)."""
    publish(a_report(projects=()), pushgateway=gateway.url)
    (push,) = gateway.received
    assert push.path == "/metrics/job/oms_cleanup/shard/1/targets@base64/="
    assert values(push.body)["oms_cleanup_tasks_selected"] == 0


def test_gateway_error_is_logged_not_raised(gateway: Gateway) -> None:
    """A 5xx from the gateway is a warning in the log; publish returns normally."""
    gateway.status = 503
    logs = publish(a_report(), pushgateway=gateway.url)
    assert len(gateway.received) == 1
    (event,) = logs
    assert event["event"] == "metrics_push_failed"
    assert event["log_level"] == "warning"
    assert "503" in event["error"]


def test_unreachable_gateway_is_logged_not_raised(tmp_path: Path) -> None:
    """A refused connection is logged, and the textfile is still written."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    path = tmp_path / "m.prom"
    logs = publish(a_report(), pushgateway=f"http://127.0.0.1:{closed}", textfile=path, timeout=2)
    events = [event["event"] for event in logs]
    assert events == ["metrics_textfile_written", "metrics_push_failed"]
    assert "URLError" in logs[1]["error"]
    assert values(path.read_text(encoding="utf-8"))["oms_cleanup_tasks_deleted"] == 3


def test_slow_gateway_times_out(gateway: Gateway) -> None:
    """A gateway that does not answer within the timeout is given up on, and logged."""
    gateway.delay = 1.0
    logs = publish(a_report(), pushgateway=gateway.url, timeout=0.2)
    assert [event["event"] for event in logs] == ["metrics_push_failed"]
    assert "timed out" in logs[0]["error"]


@pytest.mark.parametrize("grouping", [{"job": "x"}, {"bad-name": "x"}, {"__x": "y"}])
def test_invalid_grouping_sends_nothing(gateway: Gateway, grouping: dict[str, str]) -> None:
    """Grouping labels Prometheus would refuse are logged; nothing is sent or raised."""
    logs = publish(a_report(), pushgateway=gateway.url, grouping=grouping)
    assert gateway.received == []
    assert [event["event"] for event in logs] == ["metrics_not_published"]


def test_nothing_configured_does_nothing(gateway: Gateway) -> None:
    """Without a gateway or a textfile, publish sends and logs nothing."""
    assert publish(a_report()) == []
    assert gateway.received == []


# ------------------------------------------------------------------------------------------
# node-exporter textfile


def test_textfile_holds_the_same_metrics(gateway: Gateway, tmp_path: Path) -> None:
    """The textfile parses back to exactly what was pushed, and no temporary file is left."""
    path = tmp_path / "oms_cleanup.prom"
    publish(a_report(), pushgateway=gateway.url, textfile=path)
    text = path.read_text(encoding="utf-8")
    assert values(text) == values(gateway.received[0].body)
    assert sample_labels(text) == {(("shard", "1"), ("targets", "pa,pb"))}
    assert [p.name for p in tmp_path.iterdir()] == ["oms_cleanup.prom"]


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        # exit codes of successive runs -> which run's finish is the last success (None: none)
        ([0], 0),
        ([0, 1], 0),
        ([0, 4, 143], 0),
        ([1], None),
        ([0, 1, 0], 2),
    ],
)
def test_textfile_keeps_last_success_across_failures(
    tmp_path: Path, codes: list[int], expected: int | None
) -> None:
    """A failed run rewrites the file but carries the previous last success over."""
    path = tmp_path / "m.prom"
    finishes = []
    for run, code in enumerate(codes):
        report = a_report(exit_code=code)
        finished = FINISHED + timedelta(hours=run)
        report["finished_at"] = finished.isoformat().replace("+00:00", "Z")
        finishes.append(finished.timestamp())
        publish(report, textfile=path)
        got = values(path.read_text(encoding="utf-8"))
        assert got["oms_cleanup_run_exit_code"] == code
        assert got["oms_cleanup_last_run_timestamp_seconds"] == finished.timestamp()
    final = values(path.read_text(encoding="utf-8"))
    if expected is None:
        assert metrics.LAST_SUCCESS not in final
    else:
        assert final[metrics.LAST_SUCCESS] == finishes[expected]


def test_textfile_failure_is_logged_not_raised(tmp_path: Path) -> None:
    """A textfile that cannot be written is a warning, not an exception."""
    logs = publish(a_report(), textfile=tmp_path / "missing" / "m.prom")
    assert [event["event"] for event in logs] == ["metrics_textfile_failed"]


def test_unreadable_previous_textfile_is_ignored(tmp_path: Path) -> None:
    """A previous file that is not the text format loses its last success, not the run."""
    path = tmp_path / "m.prom"
    path.write_text("this is { not prometheus\n", encoding="utf-8")
    logs = publish(a_report(exit_code=1), textfile=path)
    assert "metrics_textfile_written" in [event["event"] for event in logs]
    assert metrics.LAST_SUCCESS not in values(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (
            {"settings": {"shard_index": 3, "targets": [{"project_id": "b"}, {"project_id": "a"}]}},
            {"shard": "3", "targets": "a,b"},
        ),
        (
            {"settings": {"targets": [{"project_id": "a"}, {"project_id": "a"}]}},
            {"shard": "0", "targets": "a"},
        ),
        ({"settings": {}}, {"shard": "0", "targets": ""}),
        ({}, {"shard": "0", "targets": ""}),
    ],
)
def test_default_grouping(report: dict[str, Any], expected: dict[str, str]) -> None:
    """Shard index and sorted unique project ids, so shards never overwrite each other."""
    assert metrics.default_grouping(report) == expected


# ------------------------------------------------------------------------------------------
# A real run's report


async def test_a_real_runs_report_publishes(
    make_simulator: SimulatorFactory, tmp_path: Path, gateway: Gateway
) -> None:
    """The report the runner writes has everything publish needs, and the numbers agree."""
    sim = await make_simulator(tasks_per_project=20)
    settings = load_settings(
        {
            "endpoint": sim.url,
            "project_id": DEFAULT_PROJECT_ID,
            "older_than": "7d",
            "rate": "2000",
            "report": str(tmp_path / "r.json"),
        },
        environ={},
    )
    credentials = DEFAULT_CLIENT_CREDENTIALS
    code = await run_async(settings=settings, credentials=credentials, handle_signals=False)
    report = load_report(tmp_path / "r.json")
    publish(report, pushgateway=gateway.url, textfile=tmp_path / "m.prom")
    (push,) = gateway.received
    assert push.path == f"/metrics/job/oms_cleanup/shard/0/targets/{DEFAULT_PROJECT_ID}"
    got = values(push.body)
    assert got["oms_cleanup_run_exit_code"] == code == 0
    assert got["oms_cleanup_tasks_listed"] == 20
    assert got["oms_cleanup_tasks_would_delete"] == report["summary"]["would_delete"]
    assert got["oms_cleanup_run_dry_run"] == 1
    assert DEFAULT_SECRET_KEY not in push.body
