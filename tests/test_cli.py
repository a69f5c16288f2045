"""The command line: exit codes, one-line errors, validate's output, wiring into the runner."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import types
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cleanup_command import start_run_process
from conftest import SimulatorFactory

from worker import __version__, cli, logs, runner
from worker.oms.auth import AkSk
from worker.oms.models import ACTIVE_STATES, TaskStatus
from worker.settings import RunSettings, load_settings
from worker.simulator.config import DEFAULT_PROJECT_ID, DEFAULT_SECRET_KEY

AK = "AKTESTAKTEST0042"
SK = "SKtestSKtestSKtestSKtestSKtestSKtest0001"
TOKEN = "MIItoken-value-0001"
SECURITY_TOKEN = "SECURITYTOKEN-EXAMPLE-0001"
TARGET = ["--region", "cn-north-4", "--project-id", "p1", "--older-than", "30d"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient OMS, Huawei SDK or Job index variables; valid AK/SK; work in a temp dir."""
    for name in list(os.environ):
        if name.startswith(("OMS_CLEANUP_", "HUAWEICLOUD_SDK_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.setenv("OMS_CLEANUP_AK", AK)
    monkeypatch.setenv("OMS_CLEANUP_SK", SK)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reaches the runner."""

    def refuse(**kwargs: Any) -> int:
        raise AssertionError("the runner must not be called")

    monkeypatch.setattr(runner, "run", refuse)


def exit_code(argv: Sequence[str]) -> int:
    """Run the console-script entry point and return the code it exits with."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert isinstance(exited.value.code, int)
    return exited.value.code


BAD_INPUTS = [
    # (argv, environment changes, text the one error line must contain)
    ([*TARGET, "--rate", "-1"], {}, "--rate: must be greater than 0 (got -1)"),
    ([*TARGET, "--concurrency", "0"], {}, "--concurrency: must be at least 1 (got 0)"),
    ([*TARGET, "--older-than", "5x"], {}, "--older-than: invalid duration '5x'"),
    (["--region", "cn-north-4", "--project-id", "p1"], {}, "--older-than: an age criterion"),
    ([*TARGET, "--states", ""], {}, "--states: name at least one state"),
    ([*TARGET, "--states", "finished"], {}, "--states: unknown task state 'finished'"),
    ([*TARGET, "--states", "unknown"], {}, "--states: 'unknown' is not a selectable"),
    ([*TARGET, "--states", "migrating"], {}, "--states: migrating is an active state"),
    ([*TARGET, "--max-deletions", "ten"], {}, "--max-deletions: expected a number of tasks"),
    ([*TARGET, "--requeue-delay", "0s"], {}, "--requeue-delay: must be longer than 0s"),
    ([*TARGET, "--deadline", "1y"], {}, "--deadline: invalid duration '1y'"),
    ([*TARGET, "--started-before", "31/01/2026"], {}, "--started-before: expected an ISO 8601"),
    ([*TARGET, "--protect-id", "abc"], {}, "--protect-id: expected task ids"),
    ([*TARGET, "--log-format", "xml"], {}, "--log-format: Input should be 'json' or 'console'"),
    ([*TARGET, "--report", "/no/such/dir/r.json"], {}, "--report: directory '/no/such/dir'"),
    ([*TARGET, "--endpoint", "https://h"], {}, "--endpoint: give either a region or"),
    (
        ["--endpoint", "https//oms.example.com", "--project-id", "p1", "--older-than", "1d"],
        {},
        "--endpoint: endpoint 'https//oms.example.com'",
    ),
    (
        ["--endpoint", "http://oms.example.com", "--project-id", "p1", "--older-than", "1d"],
        {},
        "--endpoint: endpoint 'http://oms.example.com' uses plain http to a non-loopback host",
    ),
    (["--region", "cn-north-4", "--older-than", "1d"], {}, "--project-id: Field required"),
    (["--older-than", "1d"], {}, "--region: no target"),
    ([*TARGET, "--region", "cn-north-99999"], {}, "--region: region 'cn-north-99999'"),
    (TARGET, {"OMS_CLEANUP_RATE": "fast"}, "--rate (OMS_CLEANUP_RATE): Input should be a valid"),
    (TARGET, {"OMS_CLEANUP_STATE": "paused"}, "OMS_CLEANUP_STATE: unknown setting"),
    (TARGET, {"OMS_CLEANUP_AK": None, "OMS_CLEANUP_SK": None}, "credentials: none found"),
    (TARGET, {"OMS_CLEANUP_SK": None}, "OMS_CLEANUP_SK: missing"),
    (TARGET, {"OMS_CLEANUP_AUTH_TOKEN": TOKEN}, "OMS_CLEANUP_AUTH_TOKEN: give either"),
    (
        TARGET,
        {"OMS_CLEANUP_AK": None, "OMS_CLEANUP_SK": None, "HUAWEICLOUD_SDK_AK": AK},
        "HUAWEICLOUD_SDK_SK: missing",
    ),
    ([*TARGET, "--config", "missing.toml"], {}, "--config: cannot read 'missing.toml'"),
    ([*TARGET, "--config", "."], {}, "--config: cannot read '.': Is a directory"),
    ([*TARGET, "--bogus"], {}, "unrecognized arguments: --bogus"),
    ([*TARGET, "--rate"], {}, "argument --rate: expected one argument"),
    ([*TARGET, "--secrets-dir", "nowhere"], {}, "--secrets-dir: no such directory"),
    ([*TARGET, "--shard-count", "0"], {}, "--shard-count: must be at least 1 (got 0)"),
    ([*TARGET, "--shard-index", "2"], {}, "--shard-index: must be below --shard-count (1)"),
    (
        [*TARGET, "--shard-count", "3"],
        {"JOB_COMPLETION_INDEX": "3"},
        "--shard-index (JOB_COMPLETION_INDEX): must be below --shard-count (3) (got 3)",
    ),
    ([*TARGET, "--pushgateway", "gw:9091"], {}, "--pushgateway: expected an http(s) URL"),
    ([*TARGET, "--metrics-textfile", "m.json"], {}, "--metrics-textfile: must end in .prom"),
]


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize(("argv", "env", "expected"), BAD_INPUTS)
@pytest.mark.usefixtures("no_runner")
def test_bad_input_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    argv: list[str],
    env: dict[str, str | None],
    expected: str,
) -> None:
    """Every bad input: exit 2, one line on stderr naming the option, nothing else."""
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    assert exit_code([command, *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("oms-cleanup: error: ")
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("rate = [\n", "is not valid TOML"),
        ('[[targets]]\nregion = "cn-north-4"\nproject_id = "p"\nrate = 1\n', "before the first"),
        ("rate = 0\n", "--rate (config file"),
    ],
)
@pytest.mark.usefixtures("no_runner")
def test_bad_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    """A bad config file is one error line naming the file, and exit 2."""
    config = tmp_path / "cleanup.toml"
    config.write_text(text, encoding="utf-8")
    assert exit_code(["validate", *TARGET, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert expected in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], "the following arguments are required: COMMAND"), (["prune"], "invalid choice")],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    """A missing or unknown subcommand is one line and exit 2, not argparse's usage text."""
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert expected in err


@pytest.mark.parametrize(
    ("env", "mode", "hidden"),
    [
        ({}, "ak_sk", [SK]),
        ({"OMS_CLEANUP_SECURITY_TOKEN": SECURITY_TOKEN}, "ak_sk_temporary", [SK, SECURITY_TOKEN]),
        (
            {"OMS_CLEANUP_AK": None, "OMS_CLEANUP_SK": None, "OMS_CLEANUP_AUTH_TOKEN": TOKEN},
            "iam_token",
            [TOKEN],
        ),
        (
            {
                "OMS_CLEANUP_AK": None,
                "OMS_CLEANUP_SK": None,
                "HUAWEICLOUD_SDK_AK": AK,
                "HUAWEICLOUD_SDK_SK": SK,
            },
            "ak_sk",
            [SK],
        ),
    ],
)
def test_validate_prints_masked_settings(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str | None],
    mode: str,
    hidden: list[str],
) -> None:
    """validate prints the effective settings as JSON, exit 0, with no secret in it."""
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    assert exit_code(["validate", *TARGET, "--rate", "5", "--protect-id", "9"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert err == ""
    assert shown["auth_mode"] == mode
    assert shown["rate"] == 5.0
    assert shown["protect_ids"] == [{"id": 9, "from": ["flags"]}]
    assert shown["targets"] == [{"project_id": "p1", "region": "cn-north-4", "endpoint": None}]
    assert shown["dry_run"] is True
    for secret in hidden:
        assert secret not in out


def test_validate_reads_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Credentials from --secrets-dir files are used, and their values stay hidden."""
    monkeypatch.delenv("OMS_CLEANUP_AK")
    monkeypatch.delenv("OMS_CLEANUP_SK")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "auth_token").write_text(TOKEN + "\n", encoding="utf-8")
    assert exit_code(["validate", *TARGET, "--secrets-dir", str(secrets)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["auth_mode"] == "iam_token"
    assert TOKEN not in out


def test_validate_with_config_and_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flags override the config file's values and its targets; the rest comes from the file."""
    config = tmp_path / "c.toml"
    config.write_text(
        'rate = 3\nstates = ["paused"]\n[[targets]]\nregion = "cn-north-4"\nproject_id = "a"\n',
        encoding="utf-8",
    )
    argv = ["validate", "--config", str(config), "--rate", "4", "--older-than", "1d"]
    assert exit_code([*argv, "--endpoint", "http://127.0.0.1:9", "--project-id", "b"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rate"] == 4.0
    assert shown["states"] == ["paused"]
    assert shown["targets"] == [
        {"project_id": "b", "region": None, "endpoint": "http://127.0.0.1:9"}
    ]


def test_validate_shows_shard_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shard comes from JOB_COMPLETION_INDEX, {shard} is filled in, metrics options show."""
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    argv = [
        "validate",
        *TARGET,
        "--shard-count",
        "2",
        "--report",
        "report-{shard}.json",
        "--metrics-textfile",
        "oms-{shard}.prom",
        "--pushgateway",
        "http://127.0.0.1:9091",
    ]
    assert exit_code(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["shard_index"], shown["shard_count"]) == (1, 2)
    # One target, two shards: the target belongs to shard 0, so shard 1 has none.
    assert shown["targets"] == []
    assert shown["report"] == "report-1.json"
    assert shown["metrics_textfile"] == "oms-1.prom"
    assert shown["pushgateway"] == "http://127.0.0.1:9091"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version and exits 0."""
    assert exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"oms-cleanup {__version__}"


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["validate", "-h"], ["merge-reports", "--help"]]
)
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Help exits 0 and mentions the options."""
    assert exit_code(argv) == 0
    assert "usage: oms-cleanup" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# run: wiring into the runner


class Recorder:
    """Stands in for runner.run and remembers what it was given."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> int:
        self.calls.append(kwargs)
        return self.code


class FakeTerminal(io.StringIO):
    """A text stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("code", [0, 1, 3])
def test_run_calls_runner(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """run hands the loaded settings and credentials to the runner and exits with its code."""
    recorder = Recorder(code)
    monkeypatch.setattr(runner, "run", recorder)
    monkeypatch.setattr(logs, "configure", lambda **kwargs: None)
    assert exit_code(["run", *TARGET, "--execute", "--rate", "7"]) == code
    (call,) = recorder.calls
    settings = call["settings"]
    assert isinstance(settings, RunSettings)
    assert settings.execute
    assert settings.rate == 7.0
    assert call["credentials"] == AkSk(access_key=AK, secret_key=call["credentials"].secret_key)
    assert call["credentials"].secret_key.get_secret_value() == SK
    # The test's stdin is not a terminal: nobody to ask.
    assert call["confirm"] is None


def test_run_registers_secrets_for_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets in use are registered so that no log line can show them."""
    registered: list[str] = []
    monkeypatch.setattr(runner, "run", Recorder(0))

    monkeypatch.setattr(logs, "configure", lambda **kwargs: None)
    monkeypatch.setattr(logs, "register_secrets", lambda values: registered.extend(values))
    monkeypatch.setenv("OMS_CLEANUP_SECURITY_TOKEN", SECURITY_TOKEN)
    assert exit_code(["run", *TARGET]) == 0
    assert sorted(registered) == sorted([SK, SECURITY_TOKEN])


def test_run_configures_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The log format and level from the settings reach the log configuration."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(runner, "run", Recorder(0))
    monkeypatch.setattr(logs, "configure", lambda **kwargs: seen.append(kwargs))
    assert exit_code(["run", *TARGET, "--log-format", "json", "--log-level", "warning"]) == 0
    assert seen[0]["fmt"] == "json"
    assert seen[0]["level"] == "warning"


def settings_for(*flags: str) -> RunSettings:
    """Settings from command-line style flags, for confirmation tests."""
    args = cli.build_parser().parse_args(["run", *TARGET, *flags])
    return load_settings(cli.flags_from(args), environ={})


@pytest.mark.parametrize(
    ("flags", "tty", "asks"),
    [
        ([], True, False),
        (["--execute"], True, True),
        (["--execute", "--yes"], True, False),
        (["--execute"], False, False),
        (["--execute", "--no-execute"], True, False),
    ],
)
def test_confirm_only_when_someone_can_answer(flags: list[str], tty: bool, asks: bool) -> None:
    """A question only for an executing run on a terminal without --yes."""
    stream: io.StringIO = FakeTerminal() if tty else io.StringIO()
    confirm = cli.build_confirm(settings_for(*flags), stdin=stream, stderr=stream)
    assert (confirm is not None) == asks


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("y\n", True),
        ("YES\n", True),
        (" yes \n", True),
        ("\n", False),
        ("n\n", False),
        ("", False),
        ("yess\n", False),
    ],
)
def test_confirm_answer(answer: str, expected: bool) -> None:
    """Only an explicit yes goes ahead; anything else keeps the tasks."""
    stdin, stderr = FakeTerminal(answer), FakeTerminal()
    confirm = cli.build_confirm(settings_for("--execute"), stdin=stdin, stderr=stderr)
    assert confirm is not None
    assert confirm(12, ["p1", "p2"]) is expected
    assert stderr.getvalue() == "About to delete 12 tasks in projects p1, p2. Continue? [y/N] "


def test_confirm_singular() -> None:
    """The question reads naturally for one task in one project."""
    stdin, stderr = FakeTerminal("n\n"), FakeTerminal()
    confirm = cli.build_confirm(settings_for("--execute"), stdin=stdin, stderr=stderr)
    assert confirm is not None
    confirm(1, ["p1"])
    assert stderr.getvalue() == "About to delete 1 task in project p1. Continue? [y/N] "


# ------------------------------------------------------------------------------------------
# demo and simulate


def test_demo_calls_demo_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """demo runs worker.demo.main() and exits with its code."""
    fake = types.ModuleType("worker.demo")
    fake.main = lambda: 5  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "worker.demo", fake)
    assert exit_code(["demo"]) == 5


def test_simulate_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    """simulate's own options are parsed by its module, errors still one line with exit 2."""
    assert exit_code(["simulate", "--port", "not-a-port"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--port" in err


def test_simulate_help(capsys: pytest.CaptureFixture[str]) -> None:
    """simulate --help shows the simulator's options."""
    assert exit_code(["simulate", "--help"]) == 0
    assert "usage: oms-cleanup simulate" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# End to end: the installed command against a simulator, over HTTP, in a real process


async def test_run_end_to_end(make_simulator: SimulatorFactory, tmp_path: Path) -> None:
    """`python -m worker run --execute --yes` deletes exactly what the policy allows."""
    sim = await make_simulator(tasks_per_project=40)
    before = {
        task_id: dict(task)
        for task_id, task in sim.state.projects[DEFAULT_PROJECT_ID].tasks.items()
    }
    now = datetime.now(UTC)
    eligible = sorted(
        task_id
        for task_id, task in before.items()
        if task["status"] in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)
        and task.get("start_time")
        and now - datetime.fromtimestamp(task["start_time"] / 1000, UTC) > timedelta(days=8)
    )
    assert len(eligible) >= 2, "population too small for this test"
    protected = eligible[0]
    report = tmp_path / "report.json"
    process = await start_run_process(
        sim.url,
        "--older-than",
        "7d",
        "--protect-id",
        str(protected),
        "--requeue-delay",
        "100ms",
        "--execute",
        "--yes",
        "--report",
        str(report),
        stderr=asyncio.subprocess.PIPE,
        environment={"OMS_CLEANUP_LOG_FORMAT": "json"},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    deleted = {record.task_id for record in sim.state.deletions}
    assert protected not in deleted
    assert set(eligible[1:]) <= deleted
    for task_id in deleted:
        task = before[task_id]
        assert TaskStatus.from_code(task["status"]) not in ACTIVE_STATES
        assert now - datetime.fromtimestamp(task["start_time"] / 1000, UTC) >= timedelta(days=7)
    written = json.loads(report.read_text(encoding="utf-8"))
    assert {task["id"] for task in written["tasks"] if task["outcome"] == "deleted"} == deleted
    assert DEFAULT_SECRET_KEY not in out.decode() + err.decode() + report.read_text()
