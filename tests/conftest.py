"""Shared fixtures: a controllable clock and OMS simulators running on free loopback ports.

Server fixtures are function-scoped on purpose: a session-scoped server used from
function-scoped tests hangs under pytest-asyncio 1.x (see the library notes).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import hypothesis
import pytest

from worker import logs
from worker.simulator.config import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, SimulatorConfig
from worker.simulator.server import SimulatorHandle, run_simulator

# CI explores the same examples on every run, so a red build is reproducible and never a
# roll of the dice; developers' runs stay random and keep finding new cases.
hypothesis.settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

FAKE_EPOCH = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when told to; pass `clock.now` where a `now` callable is taken."""

    def __init__(self, start: datetime = FAKE_EPOCH) -> None:
        self.current = start

    def now(self) -> datetime:
        """The current fake moment."""
        return self.current

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by `delta`; returns the new moment."""
        self.current += delta
        return self.current


class SimulatorFactory(Protocol):
    """`await make_simulator(config=None, *, now=..., sleep=..., monotonic=..., **overrides)`.

    Overrides replace fields of `config` (or of the default SimulatorConfig).
    """

    def __call__(
        self,
        config: SimulatorConfig | None = None,
        *,
        now: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        monotonic: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> Awaitable[SimulatorHandle]: ...


@pytest.fixture
def fake_clock() -> FakeClock:
    """A FakeClock at a fixed moment (2026-11-27 12:00 UTC)."""
    return FakeClock()


@pytest.fixture
async def make_simulator() -> AsyncIterator[SimulatorFactory]:
    """Start simulators with custom configs; all of them stop when the test ends."""
    async with AsyncExitStack() as stack:

        async def factory(
            config: SimulatorConfig | None = None,
            *,
            now: Callable[[], datetime] | None = None,
            sleep: Callable[[float], Awaitable[None]] | None = None,
            monotonic: Callable[[], float] | None = None,
            **overrides: Any,
        ) -> SimulatorHandle:
            base = config if config is not None else SimulatorConfig()
            chosen = dataclasses.replace(base, **overrides) if overrides else base
            clocks: dict[str, Any] = {
                name: value
                for name, value in (("now", now), ("sleep", sleep), ("monotonic", monotonic))
                if value is not None
            }
            return await stack.enter_async_context(run_simulator(chosen, **clocks))

        yield factory


@pytest.fixture
async def simulator(make_simulator: SimulatorFactory) -> SimulatorHandle:
    """A simulator with the default config (one project, 200 tasks, no faults) on a free port."""
    return await make_simulator()


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Only the simulator's AK/SK among our variables; the temp dir as cwd; logging reset after."""
    for name in list(os.environ):
        if name.startswith(("OMS_CLEANUP_", "HUAWEICLOUD_SDK_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OMS_CLEANUP_AK", DEFAULT_ACCESS_KEY)
    monkeypatch.setenv("OMS_CLEANUP_SK", DEFAULT_SECRET_KEY)
    monkeypatch.chdir(tmp_path)
    yield
    logs.reset()
