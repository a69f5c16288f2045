"""oms-cleanup's `run` command against a simulator: its arguments; started in a process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from worker.simulator.config import DEFAULT_ACCESS_KEY, DEFAULT_PROJECT_ID, DEFAULT_SECRET_KEY


def run_arguments(endpoint: str, *flags: str) -> list[str]:
    """`run --endpoint <endpoint> --project-id <the simulator's default project> <flags>`."""
    return ["run", "--endpoint", endpoint, "--project-id", DEFAULT_PROJECT_ID, *flags]


async def start_run_process(
    endpoint: str,
    *flags: str,
    stderr: int,
    environment: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> asyncio.subprocess.Process:
    """`python -m worker run` (see run_arguments) in its own process; stdin closed, stdout a pipe.

    The process sees this one's environment without any OMS_CLEANUP_ or HUAWEICLOUD_SDK_
    variable, plus the simulator's AK/SK and `environment`.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OMS_CLEANUP_", "HUAWEICLOUD_SDK_"))
    }
    env.update(OMS_CLEANUP_AK=DEFAULT_ACCESS_KEY, OMS_CLEANUP_SK=DEFAULT_SECRET_KEY)
    env.update(environment or {})
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *run_arguments(endpoint, *flags),
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )
