"""The command line: `oms-cleanup run | validate | merge-reports | demo | simulate`.

Flags only override what the environment and the config file say: every flag defaults to
None (absent), and settings.load_settings does the merging. Every bad input ends as one line
on stderr, `oms-cleanup: error: <option>: <what is wrong>`, and exit code 2, before anything
is sent.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from worker import __version__
from worker.credentials import load_credentials
from worker.exit_codes import EXIT_OK, EXIT_TASKS_LEFT, EXIT_USAGE
from worker.oms.auth import AkSk, Credentials
from worker.settings import (
    ConfigError,
    RunSettings,
    load_settings,
    masked_settings,
)

PROG = "oms-cleanup"

Confirm = Callable[[int, Sequence[str]], bool]

# Options that are not settings fields: they say where settings come from.
_NOT_SETTINGS = frozenset({"command", "config"})


class UsageError(Exception):
    """The command line itself is malformed (unknown flag, missing value)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and an exit code, not usage text and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by `run` and `validate` (each maps to a RunSettings field)."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (also $OMS_CLEANUP_CONFIG); flags and environment override it",
    )
    where = parser.add_argument_group("targets")
    where.add_argument("--region", help="region name, e.g. cn-north-4")
    where.add_argument("--endpoint", metavar="URL", help="OMS endpoint URL instead of a region")
    where.add_argument("--project-id", help="project id (also $HUAWEICLOUD_SDK_PROJECT_ID)")

    select = parser.add_argument_group("selection")
    select.add_argument(
        "--older-than", metavar="DURATION", help="start time at least this long ago (90s, 30d, 2w)"
    )
    select.add_argument(
        "--started-before", metavar="TIMESTAMP", help="started before this ISO 8601 time (UTC)"
    )
    select.add_argument(
        "--states", metavar="LIST", help="comma-separated states (default: succeeded,failed)"
    )
    select.add_argument(
        "--name-include", action="append", metavar="GLOB", help="select only matching names"
    )
    select.add_argument(
        "--name-exclude", action="append", metavar="GLOB", help="never select matching names"
    )
    select.add_argument(
        "--protect-id",
        dest="protect_ids",
        action="append",
        metavar="ID",
        help="never delete this task id (repeatable)",
    )
    select.add_argument("--group-id", metavar="ID", help="only tasks of this task group")
    select.add_argument(
        "--stop-running",
        action=argparse.BooleanOptionalAction,
        help="allow active states in --states: stop such tasks, then delete them",
    )
    select.add_argument(
        "--list-by-status",
        action=argparse.BooleanOptionalAction,
        help="list only the selected states (status filter): fewer pages, narrower counts",
    )

    pace = parser.add_argument_group("pace and limits")
    pace.add_argument("--rate", metavar="N", help="API requests per second per target")
    pace.add_argument("--concurrency", metavar="N", help="requests in flight per target")
    pace.add_argument(
        "--requeue-delay", metavar="DURATION", help="wait before retrying a running task"
    )
    pace.add_argument("--max-attempts", metavar="N", help="delete attempts per task")
    pace.add_argument("--deadline", metavar="DURATION", help="time limit for the whole run")
    pace.add_argument(
        "--max-staleness",
        metavar="DURATION",
        help="read a task again before deleting it on a judgement older than this",
    )
    pace.add_argument(
        "--max-deletions", metavar="N|N%", help="refuse the run if more would be deleted"
    )
    pace.add_argument(
        "--shutdown-grace", metavar="DURATION", help="time in-flight requests get after a stop"
    )

    act = parser.add_argument_group("acting")
    act.add_argument(
        "--execute",
        action=argparse.BooleanOptionalAction,
        help="really delete (without it, a dry run)",
    )
    act.add_argument(
        "--yes", action="store_const", const=True, help="do not ask for confirmation on a TTY"
    )

    shard = parser.add_argument_group("sharding (a Kubernetes Indexed Job)")
    shard.add_argument(
        "--shard-count", metavar="N", help="split the targets into N shards (default: 1)"
    )
    shard.add_argument(
        "--shard-index",
        metavar="I",
        help="the shard this run handles, 0 to N-1 (default: $JOB_COMPLETION_INDEX, else 0)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--report", metavar="PATH", help="JSON report path; {shard} becomes the shard index"
    )
    out.add_argument("--log-format", metavar="json|console|auto", help="default: auto")
    out.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error")
    out.add_argument(
        "--pushgateway", metavar="URL", help="push run metrics to this Prometheus Pushgateway"
    )
    out.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="write run metrics for node-exporter's textfile collector (*.prom)",
    )

    conn = parser.add_argument_group("connection")
    conn.add_argument("--connect-timeout", metavar="DURATION", help="seconds or a duration")
    conn.add_argument("--request-timeout", metavar="DURATION", help="seconds or a duration")
    conn.add_argument("--ca-bundle", metavar="FILE", help="PEM file of trusted CAs")
    conn.add_argument(
        "--allow-insecure-http",
        action=argparse.BooleanOptionalAction,
        help="allow http:// endpoints on non-loopback hosts",
    )
    conn.add_argument(
        "--secrets-dir",
        metavar="DIR",
        help="directory holding credential files ak, sk, security_token or auth_token",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser (the `simulate` options are parsed by its own module)."""
    parser = _Parser(
        prog=PROG,
        description="Delete Huawei Cloud OMS migration tasks that a policy selects.",
        epilog="Credentials come from OMS_CLEANUP_AK/_SK[/_SECURITY_TOKEN], "
        "OMS_CLEANUP_AUTH_TOKEN, HUAWEICLOUD_SDK_AK/_SK, or --secrets-dir; never from flags.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="one cleanup run (a dry run unless --execute)")
    _add_run_options(run)
    validate = commands.add_parser(
        "validate", help="print the effective settings (secrets masked); exit 2 if invalid"
    )
    _add_run_options(validate)
    merge = commands.add_parser(
        "merge-reports",
        help="combine the reports of disjoint runs (e.g. shards) into one report",
        description="Combine reports of disjoint targets (the shards of one run) into one: "
        "summaries recomputed, the most severe exit code, every input's run id listed. "
        "Every input is checked (schema, counts) and all must share one policy, dry-run flag "
        "and shard count. Exit 0 when written, 1 when written with shards missing, 2 when an "
        "input is unusable (nothing written).",
    )
    merge.add_argument("output", type=Path, metavar="OUT", help="the merged report to write")
    merge.add_argument(
        "inputs", type=Path, nargs="+", metavar="IN", help="reports to merge (at least one)"
    )
    commands.add_parser("demo", help="a local simulator and an executing run against it")
    commands.add_parser(
        "simulate", help="serve an OMS-compatible simulator (see: simulate --help)", add_help=False
    )
    return parser


def flags_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gave, keyed by settings field; absent flags left out."""
    return {
        key: value
        for key, value in vars(args).items()
        if key not in _NOT_SETTINGS and value is not None
    }


def build_confirm(settings: RunSettings, *, stdin: TextIO, stderr: TextIO) -> Confirm | None:
    """The question asked before deleting, or None when nobody can or needs to answer it."""
    if settings.dry_run or settings.yes or not (stdin.isatty() and stderr.isatty()):
        return None

    def confirm(count: int, projects: Sequence[str]) -> bool:
        tasks = "task" if count == 1 else "tasks"
        where = "project" if len(projects) == 1 else "projects"
        stderr.write(
            f"About to delete {count} {tasks} in {where} {', '.join(projects)}. Continue? [y/N] "
        )
        stderr.flush()
        try:
            answer = stdin.readline()
        except KeyboardInterrupt:
            answer = ""
        # Anything but an explicit yes (an empty line, EOF, Ctrl-C) keeps the tasks.
        return answer.strip().lower() in {"y", "yes"}

    return confirm


def _load(args: argparse.Namespace) -> tuple[RunSettings, Credentials]:
    settings = load_settings(flags_from(args), config_file=args.config)
    credentials = load_credentials(secrets_dir=settings.secrets_dir)
    return settings, credentials


def _validate(args: argparse.Namespace, *, stdout: TextIO) -> int:
    settings, credentials = _load(args)
    shown = masked_settings(settings, credentials=credentials)
    stdout.write(json.dumps(shown, indent=2) + "\n")
    return EXIT_OK


def _run(args: argparse.Namespace, *, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    settings, credentials = _load(args)
    # Imported here so that `validate` and argument errors stay fast and independent of it.
    from worker import logs, runner

    if isinstance(credentials, AkSk):
        secrets = [credentials.secret_key, credentials.security_token]
    else:
        secrets = [credentials.token]
    logs.register_secrets(secret.get_secret_value() for secret in secrets if secret is not None)
    # Events go to stdout, the stream a scheduler collects; stderr keeps the progress line,
    # the confirmation prompt and one-line errors.
    logs.configure(
        fmt=settings.log_format or logs.default_format(stdout),
        level=settings.log_level,
        stream=stdout,
    )
    confirm = build_confirm(settings, stdin=stdin, stderr=stderr)
    return runner.run(settings=settings, credentials=credentials, confirm=confirm)


def _merge_reports(args: argparse.Namespace, *, stdout: TextIO, stderr: TextIO) -> int:
    from worker.merge import MergeError, merge_report_files

    try:
        merged = merge_report_files(args.output, args.inputs)
    except MergeError as exc:
        raise UsageError(f"merge-reports: {exc}") from None
    stdout.write(
        f"merged {len(args.inputs)} reports ({len(merged['tasks'])} tasks, exit code "
        f"{merged['exit_code']}) into {args.output}\n"
    )
    missing = merged["missing_shards"]
    if missing:
        # Written, but incomplete: the missing shards' targets may have work left.
        count = merged["settings"]["shard_count"]
        stderr.write(
            f"{PROG}: warning: merge-reports: no report for shard(s) "
            f"{', '.join(map(str, missing))} of {count}: their targets are not in "
            f"{args.output}\n"
        )
        return EXIT_TASKS_LEFT
    return EXIT_OK


def _demo() -> int:
    # Looked up at call time: nothing else here depends on the demo module.
    try:
        demo = importlib.import_module("worker.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "worker.demo":
            raise
        raise UsageError("demo: not available in this installation") from None
    return int(demo.main())


def _simulate(argv: Sequence[str]) -> int:
    from worker.simulator import command

    parser = _Parser(prog=f"{PROG} simulate", description="Serve an OMS-compatible simulator.")
    command.add_arguments(parser)
    return command.run(parser.parse_args(list(argv)))


def run_cli(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Parse `argv` (default: sys.argv[1:]) and run the command; the process exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        if arguments[:1] == ["simulate"]:
            return _simulate(arguments[1:])
        args = build_parser().parse_args(arguments)
        if args.command == "validate":
            return _validate(args, stdout=stdout)
        if args.command == "run":
            return _run(args, stdin=stdin, stdout=stdout, stderr=stderr)
        if args.command == "merge-reports":
            return _merge_reports(args, stdout=stdout, stderr=stderr)
        return _demo()
    except UsageError as exc:
        stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except ConfigError as exc:
        for problem in exc.problems:
            stderr.write(f"{PROG}: error: {problem}\n")
        return EXIT_USAGE
    except SystemExit as exc:
        # --help and --version print, then exit through argparse.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run the command line and exit with its code."""
    raise SystemExit(run_cli(argv))
