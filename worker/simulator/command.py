"""`oms-cleanup simulate`: serve an OMS-compatible simulator until SIGINT or SIGTERM.

It prints the endpoint, the project ids and the simulator's own test credentials: printing
those is the point of the command, they open nothing but this local simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TextIO

from worker.simulator.config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_IAM_TOKEN,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
    SimAccessKey,
    SimCredentials,
    SimulatorConfig,
)
from worker.simulator.faults import FaultConfig
from worker.simulator.server import SimulatorHandle, run_simulator

DEFAULT_PORT = 8990
_DEFAULTS = SimulatorConfig()


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction between 0 and 1")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` flags."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=_count, default=DEFAULT_PORT, help="port to listen on (0 picks a free one)"
    )
    parser.add_argument(
        "--tasks", type=_count, default=_DEFAULTS.tasks_per_project, help="tasks per project"
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="population seed")
    parser.add_argument(
        "--project-id",
        action="append",
        dest="project_ids",
        metavar="PROJECT_ID",
        help=f"a hosted project (repeatable; default {DEFAULT_PROJECT_ID})",
    )
    creds = parser.add_argument_group("credentials the simulator accepts")
    creds.add_argument("--ak", default=DEFAULT_ACCESS_KEY, help="access key")
    creds.add_argument("--sk", default=DEFAULT_SECRET_KEY, help="secret key")
    creds.add_argument(
        "--security-token", default=None, help="make the AK temporary: requests must carry this"
    )
    creds.add_argument("--auth-token", default=DEFAULT_IAM_TOKEN, help="accepted X-Auth-Token")
    creds.add_argument(
        "--token-expires-after",
        type=_positive,
        default=None,
        metavar="N",
        help="the IAM token expires after N requests",
    )
    faults = parser.add_argument_group("injected faults")
    faults.add_argument("--latency-ms", type=_non_negative, default=0.0)
    faults.add_argument("--jitter-ms", type=_non_negative, default=0.0)
    faults.add_argument(
        "--rate-limit", type=_positive, default=None, help="requests per second before 429"
    )
    faults.add_argument(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send Retry-After with 429",
    )
    faults.add_argument("--error-rate", type=_fraction, default=0.0, help="share of 5xx answers")
    faults.add_argument("--drop-rate", type=_fraction, default=0.0, help="share of dropped calls")
    faults.add_argument(
        "--drop-after-processing",
        action="store_true",
        help="drop connections after the call took effect",
    )
    faults.add_argument("--slow-rate", type=_fraction, default=0.0, help="share of slow answers")
    faults.add_argument("--slow-seconds", type=_non_negative, default=5.0)
    faults.add_argument(
        "--malformed-rate", type=_fraction, default=0.0, help="share of broken list answers"
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The SimulatorConfig the parsed flags describe."""
    return SimulatorConfig(
        project_ids=tuple(args.project_ids or [DEFAULT_PROJECT_ID]),
        tasks_per_project=args.tasks,
        seed=args.seed,
        credentials=SimCredentials(
            access_keys=(
                SimAccessKey(
                    access_key=args.ak, secret_key=args.sk, security_token=args.security_token
                ),
            ),
            iam_token=args.auth_token or None,
        ),
        faults=FaultConfig(
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            rate_limit=args.rate_limit,
            retry_after=args.retry_after,
            error_rate=args.error_rate,
            drop_rate=args.drop_rate,
            drop_after_processing=args.drop_after_processing,
            slow_rate=args.slow_rate,
            slow_seconds=args.slow_seconds,
            malformed_rate=args.malformed_rate,
            token_expires_after=args.token_expires_after,
        ),
    )


def describe(handle: SimulatorHandle) -> str:
    """The start banner: where to point the tool and with which credentials."""
    config = handle.config
    key = config.credentials.access_keys[0]
    lines = [
        f"OMS simulator listening on {handle.url}",
        f"  projects:  {', '.join(config.project_ids)} "
        f"({config.tasks_per_project} tasks each, seed {config.seed})",
        f"  AK / SK:   {key.access_key} / {key.secret_key}",
    ]
    if key.security_token is not None:
        lines.append(f"  security token: {key.security_token}")
    if config.credentials.iam_token is not None:
        lines.append(f"  IAM token: {config.credentials.iam_token}")
    lines += [
        f"  admin:     {handle.url}/_sim/state",
        f"  point the tool at it: --endpoint {handle.url} --project-id {config.project_ids[0]}",
        "  environment for the tool:",
        f"    HUAWEICLOUD_SDK_AK={key.access_key}",
        f"    HUAWEICLOUD_SDK_SK={key.secret_key}",
    ]
    if key.security_token is not None:
        lines.append(f"    HUAWEICLOUD_SDK_SECURITY_TOKEN={key.security_token}")
    lines += [
        f"    HUAWEICLOUD_SDK_PROJECT_ID={config.project_ids[0]}",
        "Serving until SIGINT or SIGTERM.",
    ]
    return "\n".join(lines)


async def serve(config: SimulatorConfig, *, host: str, port: int, out: TextIO = sys.stdout) -> int:
    """Serve until SIGINT/SIGTERM; the exit code."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stopping.set)
    try:
        async with run_simulator(config, host=host, port=port) as handle:
            print(describe(handle), file=out, flush=True)
            await stopping.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    print("OMS simulator stopped.", file=out, flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of `oms-cleanup simulate`; the process exit code."""
    config = config_from_args(args)
    try:
        return asyncio.run(serve(config, host=args.host, port=args.port))
    except OSError as exc:
        print(
            f"oms-cleanup simulate: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
