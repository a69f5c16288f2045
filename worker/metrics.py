"""Run metrics for scheduled runs: a Prometheus Pushgateway push and a node-exporter textfile.

Everything is computed from the finished report, so the metrics cannot disagree with it and
the runner only hands the report over. Publishing is best effort: the report is the record of
the run, and a monitoring outage must not turn a good cleanup into a failed Job, so every
failure is logged and none is raised.

Gauges, all carrying the grouping labels (by default `shard` and `targets`, so that shards and
independent deployments never overwrite each other's series):

    oms_cleanup_tasks_{listed,selected,deleted,already_gone,still_running,failed,
                       would_delete,not_attempted,changed}
                                                       the run's totals (per project: the report)
    oms_cleanup_run_duration_seconds                   finished_at - started_at
    oms_cleanup_run_exit_code                          the process exit code
    oms_cleanup_run_dry_run                            1 for a dry run, else 0
    oms_cleanup_last_run_timestamp_seconds             when the run finished
    oms_cleanup_last_success_timestamp_seconds         when a run last finished with exit code 0

The last success must survive failed runs, or "no success for a day" could never be alerted
on. A successful run PUTs its group (replacing every metric in it, last success included); a
failed run POSTs (pushadd), which replaces only the metrics it sends and leaves the
Pushgateway's last success alone. The textfile is rewritten whole, so a failed run carries the
previous file's last success over.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import (
    push_to_gateway,
    pushadd_to_gateway,
    write_to_textfile,
)
from prometheus_client.parser import text_string_to_metric_families

log = structlog.get_logger("oms_cleanup.metrics")

JOB = "oms_cleanup"
PREFIX = "oms_cleanup"
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"
# The report's summary counts published as oms_cleanup_tasks_<name>.
TASK_COUNTS = (
    "listed",
    "selected",
    "deleted",
    "already_gone",
    "still_running",
    "failed",
    "would_delete",
    "not_attempted",
    "changed",
)
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def default_grouping(report: Mapping[str, Any]) -> dict[str, str]:
    """The grouping key of a run: its shard index and its targets' project ids."""
    settings = report.get("settings") or {}
    shard = settings.get("shard_index", 0)
    projects = sorted(
        {
            str(target["project_id"])
            for target in settings.get("targets") or []
            if isinstance(target, Mapping) and "project_id" in target
        }
    )
    return {"shard": str(shard), "targets": ",".join(projects)}


def build_registry(
    report: Mapping[str, Any], *, labels: Mapping[str, str], last_success: float | None
) -> CollectorRegistry:
    """A fresh registry holding the run's metrics (none from this process's global registry).

    `last_success` is the timestamp to publish as the last success: this run's finish when it
    succeeded, else whatever the caller carries over (None leaves the metric out).
    """
    registry = CollectorRegistry(auto_describe=True)
    names = sorted(labels)

    def gauge(name: str, documentation: str, value: float) -> None:
        metric = Gauge(f"{PREFIX}_{name}", documentation, names, registry=registry)
        (metric.labels(**labels) if names else metric).set(value)

    summary = report["summary"]
    for count in TASK_COUNTS:
        what = count.replace("_", " ")
        gauge(f"tasks_{count}", f"Tasks {what} in the last run.", float(summary[count]))
    gauge(
        "run_duration_seconds",
        "Wall-clock duration of the last run.",
        float(summary["duration_seconds"]),
    )
    gauge("run_exit_code", "Exit code of the last run (0 = success).", float(report["exit_code"]))
    gauge("run_dry_run", "1 if the last run was a dry run, else 0.", float(bool(report["dry_run"])))
    gauge(
        "last_run_timestamp_seconds",
        "Unix time the last run finished.",
        _unix_time(report["finished_at"]),
    )
    if last_success is not None:
        gauge(
            "last_success_timestamp_seconds",
            "Unix time the last run with exit code 0 finished.",
            last_success,
        )
    return registry


def publish(
    report: Mapping[str, Any],
    *,
    pushgateway: str | None,
    textfile: Path | None,
    job: str = JOB,
    grouping: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> None:
    """Publish the run's metrics to a Pushgateway and/or a textfile; never raises.

    Blocking (the push uses urllib, for up to `timeout` seconds): from async code, call it
    through `asyncio.to_thread`. `grouping` defaults to default_grouping(report).
    """
    if pushgateway is None and textfile is None:
        return
    try:
        labels = _grouping_labels(report, grouping)
        succeeded = report["exit_code"] == 0
        finished = _unix_time(report["finished_at"])
    except (KeyError, TypeError, ValueError) as exc:
        log.error("metrics_not_published", error=f"{type(exc).__name__}: {exc}")
        return
    if textfile is not None:
        _write_textfile(report, textfile, labels=labels, finished=finished, succeeded=succeeded)
    if pushgateway is not None:
        _push(
            report,
            pushgateway,
            job=job,
            labels=labels,
            finished=finished,
            succeeded=succeeded,
            timeout=timeout,
        )


def _write_textfile(
    report: Mapping[str, Any],
    path: Path,
    *,
    labels: Mapping[str, str],
    finished: float,
    succeeded: bool,
) -> None:
    try:
        last_success = finished if succeeded else previous_last_success(path)
        registry = build_registry(report, labels=labels, last_success=last_success)
        # Atomic by itself: written to a temporary name beside `path`, then renamed.
        write_to_textfile(str(path), registry)
    except Exception as exc:  # whatever it is, metrics must never fail the run
        log.warning("metrics_textfile_failed", path=str(path), error=f"{type(exc).__name__}: {exc}")
        return
    log.info("metrics_textfile_written", path=str(path))


def _push(
    report: Mapping[str, Any],
    gateway: str,
    *,
    job: str,
    labels: Mapping[str, str],
    finished: float,
    succeeded: bool,
    timeout: float,
) -> None:
    try:
        registry = build_registry(
            report, labels=labels, last_success=finished if succeeded else None
        )
        # PUT replaces the group, POST only the metrics sent: see the module docstring.
        send = push_to_gateway if succeeded else pushadd_to_gateway
        send(gateway, job=job, registry=registry, grouping_key=dict(labels), timeout=timeout)
    except Exception as exc:  # whatever it is, metrics must never fail the run
        log.warning(
            "metrics_push_failed", pushgateway=gateway, error=f"{type(exc).__name__}: {exc}"
        )
        return
    log.info("metrics_pushed", pushgateway=gateway, method="PUT" if succeeded else "POST")


def previous_last_success(path: Path) -> float | None:
    """The last-success timestamp in an existing textfile; None when absent or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and math.isfinite(sample.value):
                    return float(sample.value)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("metrics_textfile_unreadable", path=str(path), error=str(exc))
    return None


def _unix_time(text: Any) -> float:
    moment = datetime.fromisoformat(str(text))
    if moment.utcoffset() is None:
        raise ValueError(f"naive timestamp {text!r}")
    return moment.timestamp()


def _grouping_labels(
    report: Mapping[str, Any], grouping: Mapping[str, str] | None
) -> dict[str, str]:
    labels = dict(default_grouping(report) if grouping is None else grouping)
    bad = [name for name in labels if not _valid_label(name)]
    if bad:
        raise ValueError(f"invalid grouping label names: {', '.join(sorted(bad))}")
    return labels


def _valid_label(name: str) -> bool:
    # "job" is the Pushgateway's own grouping label; "__" names are reserved by Prometheus.
    return bool(_LABEL_NAME_RE.fullmatch(name)) and name != "job" and not name.startswith("__")
