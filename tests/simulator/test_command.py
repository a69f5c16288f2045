"""`oms-cleanup simulate`: flags map onto the config, and the server runs until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from worker.simulator import command
from worker.simulator.config import DEFAULT_ACCESS_KEY, DEFAULT_PROJECT_ID, SimulatorConfig
from worker.simulator.faults import FaultConfig
from worker.simulator.server import SimulatorHandle

REPO = Path(__file__).resolve().parents[2]
_ENTRY = (
    "import argparse, sys\n"
    "from worker.simulator import command\n"
    "parser = argparse.ArgumentParser()\n"
    "command.add_arguments(parser)\n"
    "sys.exit(command.run(parser.parse_args(sys.argv[1:])))\n"
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_match_the_default_config() -> None:
    """With no flags the config is the default one (one project, test credentials, no faults)."""
    args = _parse()
    assert command.config_from_args(args) == SimulatorConfig()
    assert (args.host, args.port) == ("127.0.0.1", command.DEFAULT_PORT)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--tasks", "7", "--seed", "3"], {"tasks_per_project": 7, "seed": 3}),
        (
            ["--project-id", "a" * 32, "--project-id", "b" * 32],
            {"project_ids": ("a" * 32, "b" * 32)},
        ),
        (
            ["--latency-ms", "5", "--jitter-ms", "2", "--rate-limit", "50", "--no-retry-after"],
            {"faults": FaultConfig(latency_ms=5, jitter_ms=2, rate_limit=50, retry_after=False)},
        ),
        (
            ["--error-rate", "0.1", "--drop-rate", "0.2", "--drop-after-processing"],
            {"faults": FaultConfig(error_rate=0.1, drop_rate=0.2, drop_after_processing=True)},
        ),
        (
            ["--slow-rate", "0.3", "--slow-seconds", "9", "--malformed-rate", "0.4"],
            {"faults": FaultConfig(slow_rate=0.3, slow_seconds=9, malformed_rate=0.4)},
        ),
        (["--token-expires-after", "4"], {"faults": FaultConfig(token_expires_after=4)}),
    ],
)
def test_flags_map_onto_the_config(argv: list[str], expected: dict[str, Any]) -> None:
    """Each flag lands in its config field and nothing else changes."""
    config = command.config_from_args(_parse(*argv))
    defaults = SimulatorConfig()
    for name in ("project_ids", "tasks_per_project", "seed", "faults"):
        assert getattr(config, name) == expected.get(name, getattr(defaults, name))


def test_credential_flags_configure_the_accepted_key() -> None:
    """--ak/--sk/--security-token make the accepted key; --auth-token the IAM token."""
    args = _parse("--ak", "AK1", "--sk", "SK1", "--security-token", "ST1", "--auth-token", "T1")
    credentials = command.config_from_args(args).credentials
    (key,) = credentials.access_keys
    assert (key.access_key, key.secret_key, key.security_token) == ("AK1", "SK1", "ST1")
    assert credentials.iam_token == "T1"


@pytest.mark.parametrize(
    "argv",
    [
        ["--error-rate", "1.5"],
        ["--drop-rate", "-0.1"],
        ["--rate-limit", "0"],
        ["--tasks", "-1"],
        ["--latency-ms", "-3"],
        ["--port", "x"],
    ],
)
def test_bad_flag_values_are_usage_errors(argv: list[str]) -> None:
    """Out-of-range values stop argparse with exit code 2."""
    with pytest.raises(SystemExit) as caught:
        _parse(*argv)
    assert caught.value.code == 2


def test_banner_names_endpoint_projects_and_credentials(simulator: SimulatorHandle) -> None:
    """The start banner says where to point the tool and with what."""
    banner = command.describe(simulator)
    assert banner.splitlines()[0] == f"OMS simulator listening on {simulator.url}"
    assert DEFAULT_PROJECT_ID in banner
    assert f"HUAWEICLOUD_SDK_AK={DEFAULT_ACCESS_KEY}" in banner
    assert simulator.config.credentials.access_keys[0].secret_key in banner
    assert f"{simulator.url}/_sim/state" in banner
    assert f"--endpoint {simulator.url} --project-id {DEFAULT_PROJECT_ID}" in banner


async def test_serves_until_sigterm() -> None:
    """The command prints its endpoint, answers requests, and exits 0 on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ENTRY,
        "--port",
        "0",
        "--tasks",
        "5",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        url = first.strip().rsplit(" ", 1)[-1]
        assert first.startswith("OMS simulator listening on http://127.0.0.1:")
        async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/state") as resp:
            state = await resp.json()
        assert state["remaining"][DEFAULT_PROJECT_ID]["total"] == 5
        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert "OMS simulator stopped." in rest.decode()
