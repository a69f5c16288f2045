"""run_simulator: a real listening socket for the life of the block, and its handle."""

from __future__ import annotations

import aiohttp
import pytest

from worker.simulator.app import STATE_KEY
from worker.simulator.config import SimulatorConfig
from worker.simulator.server import run_simulator


async def test_handle_points_at_a_live_server_until_exit() -> None:
    """The handle's URL answers while the block runs and refuses connections afterwards."""
    config = SimulatorConfig(tasks_per_project=3)
    async with aiohttp.ClientSession() as session:
        async with run_simulator(config) as handle:
            assert handle.url == f"http://127.0.0.1:{handle.port}"
            assert handle.port > 0
            assert handle.config is config
            assert handle.app[STATE_KEY] is handle.state
            async with session.get(f"{handle.url}/_sim/state") as response:
                assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(f"{handle.url}/_sim/state")


async def test_two_simulators_listen_on_different_ports() -> None:
    """Port 0 picks a free port per simulator, so several can run side by side."""
    async with (
        run_simulator(SimulatorConfig(tasks_per_project=1)) as first,
        run_simulator(SimulatorConfig(tasks_per_project=1)) as second,
    ):
        assert first.port != second.port
