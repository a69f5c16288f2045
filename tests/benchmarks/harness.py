"""What every benchmark needs: a simulator in its own process, a worker run, one JSON line.

The simulator runs in a separate (spawned) process so that its CPU does not count against the
worker's and its event loop does not share the worker's: on a 2-core machine that is one core
each, as closely as a shared machine allows.
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from worker import logs
from worker.report import load_report
from worker.runner import run_async
from worker.settings import load_settings
from worker.simulator.config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
    SimulatorConfig,
)
from worker.simulator.faults import FaultConfig
from worker.simulator.population import DEFAULT_STATUS_WEIGHTS, PopulationConfig
from worker.simulator.server import run_simulator

PROJECT_ID = DEFAULT_PROJECT_ID
# Every task of an all-finished population is older than this, so every task is selected.
OLDER_THAN = "12h"
LATENCY_MS = 20.0
JITTER_MS = 5.0

SUCCEEDED_ONLY: tuple[tuple[int, float], ...] = ((5, 1.0),)
# An account where the policy "failed only" selects few: most tasks succeeded long ago.
MOSTLY_SUCCEEDED: tuple[tuple[int, float], ...] = DEFAULT_STATUS_WEIGHTS


def simulator_config(
    *,
    tasks: int,
    latency_ms: float = LATENCY_MS,
    jitter_ms: float = JITTER_MS,
    rate_limit: int | None = None,
    status_weights: tuple[tuple[int, float], ...] = SUCCEEDED_ONLY,
) -> SimulatorConfig:
    """One project of `tasks` tasks, all with a start time (so age alone decides)."""
    return SimulatorConfig(
        tasks_per_project=tasks,
        population=PopulationConfig(
            status_weights=status_weights,
            zero_start_time_share=0.0,
            absent_start_time_share=0.0,
        ),
        faults=FaultConfig(latency_ms=latency_ms, jitter_ms=jitter_ms, rate_limit=rate_limit),
    )


def _serve(config: SimulatorConfig, conn: multiprocessing.connection.Connection) -> None:
    """The simulator process: serve until SIGTERM, then report its own CPU seconds."""
    asyncio.run(_serve_async(config, conn))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(usage.ru_utime + usage.ru_stime)
    conn.close()


async def _serve_async(
    config: SimulatorConfig, conn: multiprocessing.connection.Connection
) -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    async with run_simulator(config) as sim:
        conn.send(sim.url)
        await stopping.wait()


class SimulatorProcess:
    """`with SimulatorProcess(config) as sim:` a simulator on a free port in another process."""

    def __init__(self, config: SimulatorConfig, *, start_timeout: float = 120.0) -> None:
        self.config = config
        self._start_timeout = start_timeout
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, args=(config, child), daemon=True)
        self._child = child
        self.url = ""
        self.cpu_seconds: float | None = None

    def __enter__(self) -> Self:
        self._process.start()
        self._child.close()
        if not self._conn.poll(self._start_timeout):
            self._process.kill()
            raise RuntimeError("the simulator did not start")
        self.url = str(self._conn.recv())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._process.terminate()
        if self._conn.poll(30):
            self.cpu_seconds = float(self._conn.recv())
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def state(self) -> dict[str, Any]:
        """The simulator's own record (`/_sim/state`)."""
        with urllib.request.urlopen(f"{self.url}/_sim/state", timeout=60) as answer:  # noqa: S310
            state: dict[str, Any] = json.load(answer)
        return state


@dataclass(frozen=True, slots=True)
class Truth:
    """What the simulator saw: deletions with their times, requests by kind, refusals."""

    deleted: frozenset[int]
    deletion_times: tuple[float, ...]
    requests: dict[str, int]
    rejected: dict[str, int]

    @classmethod
    def of(cls, state: dict[str, Any]) -> Truth:
        """Read a `/_sim/state` document."""
        times = sorted(datetime.fromisoformat(d["at"]).timestamp() for d in state["deletions"])
        return cls(
            deleted=frozenset(d["task_id"] for d in state["deletions"]),
            deletion_times=tuple(times),
            requests=dict(state["requests"]),
            rejected=dict(state["rejected"]),
        )

    @property
    def deletion_rate(self) -> float:
        """Deletions per second over the deletion phase (first to last deletion)."""
        times = self.deletion_times
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


class _Discard(io.StringIO):
    """A text stream that drops what it is given (the rendering cost stays in the figures)."""

    def write(self, text: str) -> int:
        return len(text)


@dataclass(frozen=True, slots=True)
class RunResult:
    """One worker run: exit code, report, and what it cost."""

    exit_code: int
    report: dict[str, Any]
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """The report's summary."""
        summary: dict[str, Any] = self.report["summary"]
        return summary


def run_flags(
    url: str,
    report: Path,
    *,
    rate: float,
    concurrency: int,
    states: str = "succeeded,failed",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings of an executing, unattended run against `url`."""
    return {
        "endpoint": url,
        "project_id": PROJECT_ID,
        "older_than": OLDER_THAN,
        "states": states,
        "rate": str(rate),
        "concurrency": str(concurrency),
        "deadline": "30m",
        "requeue_delay": "1s",
        "execute": True,
        "yes": True,
        "report": str(report),
        **(extra or {}),
    }


async def run_worker(
    flags: dict[str, Any], *, log_level: str = "info", list_by_status: bool = False
) -> RunResult:
    """A run in this process; log lines are rendered at `log_level`, then dropped."""
    settings = load_settings({**flags, "list_by_status": list_by_status}, environ={})
    logs.configure(fmt="json", level=log_level, stream=_Discard())
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        exit_code = await run_async(
            settings=settings,
            credentials=DEFAULT_CLIENT_CREDENTIALS,
            handle_signals=False,
        )
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        logs.reset()
    return RunResult(
        exit_code=exit_code,
        report=load_report(settings.report),
        wall_seconds=wall,
        cpu_seconds=cpu,
    )


def run_worker_process(args: list[str], *, report: Path, stderr: Path) -> RunResult:
    """`python -m worker run ARGS` as a child process: its peak RSS and CPU from wait4."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HUAWEICLOUD_SDK_AK": DEFAULT_ACCESS_KEY,
        "HUAWEICLOUD_SDK_SK": DEFAULT_SECRET_KEY,
    }
    with stderr.open("wb") as errors:
        wall0 = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", *args, "--report", str(report)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - wall0
        child.returncode = os.waitstatus_to_exitcode(status)
    return RunResult(
        exit_code=child.returncode,
        report=load_report(report),
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        # Linux reports ru_maxrss in KiB.
        peak_rss_mb=usage.ru_maxrss / 1024,
    )


def emit(name: str, **figures: Any) -> dict[str, Any]:
    """Print the benchmark's one JSON line and return it."""
    line = {"benchmark": name, "cpus": os.cpu_count(), **figures}
    print(json.dumps(line, sort_keys=False, default=_plain), flush=True)
    return line


def _plain(value: object) -> object:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def rounded(value: float, digits: int = 3) -> float:
    """Figures for humans: a few significant decimals."""
    return round(value, digits)
