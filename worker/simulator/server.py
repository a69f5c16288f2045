"""Run the simulator on a real socket: for tests, the demo, benchmarks and `simulate`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from worker.simulator.app import STATE_KEY, Sleep, create_app, utc_now
from worker.simulator.config import SimulatorConfig
from worker.simulator.state import SimulatorState


@dataclass(frozen=True, slots=True)
class SimulatorHandle:
    """A running simulator: where it listens, what it was configured with, its live state."""

    url: str
    config: SimulatorConfig
    state: SimulatorState
    app: web.Application

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return int(self.url.rsplit(":", 1)[1])


@asynccontextmanager
async def run_simulator(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    now: Callable[[], datetime] = utc_now,
    sleep: Sleep = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> AsyncIterator[SimulatorHandle]:
    """Serve a simulator on `host:port` (0 picks a free port) until the block exits."""
    config = config if config is not None else SimulatorConfig()
    app = create_app(config, now=now, sleep=sleep, monotonic=monotonic)
    # No access log: at 1,000 requests/s a line per request costs more than the request.
    # A short shutdown grace: slow-fault handlers must not hold a test's teardown.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield SimulatorHandle(
            url=f"http://{url_host}:{bound_port}", config=config, state=app[STATE_KEY], app=app
        )
    finally:
        await runner.cleanup()
