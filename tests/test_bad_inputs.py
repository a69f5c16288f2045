"""Bad inputs never reach the API: one error line naming the option, exit 2, zero requests.

Unlike the command-line tests, nothing here is stubbed: every case is a real `run --execute
--yes` pointed at a running simulator, so a bad value that slipped through validation would
show up as requests (or deletions) in the simulator's counters.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cleanup_command import run_arguments
from conftest import SimulatorFactory

from worker.cli import run_cli
from worker.simulator.config import DEFAULT_PROJECT_ID


@dataclass(frozen=True, slots=True)
class Case:
    """One bad input: extra flags, environment changes, files to write, the option blamed."""

    flags: tuple[str, ...]
    blamed: str
    env: dict[str, str | None] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    # Whether the command line gives the (valid) age criterion `--older-than 1d`.
    with_age: bool = True


CASES: dict[str, Case] = {
    # pace and limits
    "negative-rate": Case(("--rate", "-1"), "--rate: must be greater than 0"),
    "zero-rate": Case(("--rate", "0"), "--rate: must be greater than 0"),
    "nan-rate": Case(("--rate", "nan"), "--rate: "),
    "infinite-rate": Case(("--rate", "inf"), "--rate: "),
    "zero-concurrency": Case(("--concurrency", "0"), "--concurrency: must be at least 1"),
    "fractional-concurrency": Case(("--concurrency", "2.5"), "--concurrency: "),
    "zero-attempts": Case(("--max-attempts", "0"), "--max-attempts: must be at least 1"),
    "zero-requeue-delay": Case(("--requeue-delay", "0s"), "--requeue-delay: must be longer"),
    "zero-deadline": Case(("--deadline", "0s"), "--deadline: must be longer than 0s"),
    "deadline-in-years": Case(("--deadline", "1y"), "--deadline: invalid duration '1y'"),
    "zero-grace": Case(("--shutdown-grace", "0"), "--shutdown-grace: must be longer"),
    "zero-max-staleness": Case(("--max-staleness", "0s"), "--max-staleness: must be longer"),
    "max-staleness-no-unit": Case(("--max-staleness", "600"), "--max-staleness: "),
    "max-deletions-over-100%": Case(("--max-deletions", "150%"), "--max-deletions: "),
    "max-deletions-negative": Case(("--max-deletions", "-3"), "--max-deletions: "),
    "max-deletions-words": Case(("--max-deletions", "ten"), "--max-deletions: "),
    # selection
    "older-than-unit": Case(("--older-than", "5x"), "--older-than: invalid duration '5x'"),
    "older-than-negative": Case(("--older-than=-1d",), "--older-than: invalid duration"),
    "no-age-criterion": Case((), "--older-than: an age criterion", with_age=False),
    "started-before-words": Case(("--started-before", "yesterday"), "--started-before: "),
    "empty-states": Case(("--states", ""), "--states: name at least one state"),
    "unknown-state": Case(("--states", "finished"), "--states: unknown task state 'finished'"),
    "unknown-among-states": Case(("--states", "succeeded,bogus"), "--states: unknown task"),
    "state-unknown": Case(("--states", "unknown"), "--states: 'unknown' is not a selectable"),
    "active-state-without-stop": Case(("--states", "migrating"), "--states: migrating is an"),
    "protect-id-words": Case(("--protect-id", "abc"), "--protect-id: expected task ids"),
    "protect-id-negative": Case(("--protect-id", "-5"), "--protect-id: expected task ids"),
    "empty-group-id": Case(("--group-id", ""), "--group-id: must not be empty"),
    "empty-name-include": Case(("--name-include", ""), "--name-include: a name pattern"),
    # a list that names nothing, from any layer, never empties a list
    "env-exclude-a-comma": Case(
        (), "--name-exclude (OMS_CLEANUP_NAME_EXCLUDE): ", env={"OMS_CLEANUP_NAME_EXCLUDE": ","}
    ),
    "env-protect-ids-blank": Case(
        (), "--protect-id (OMS_CLEANUP_PROTECT_IDS): ", env={"OMS_CLEANUP_PROTECT_IDS": " , "}
    ),
    "env-include-blank": Case(
        (), "--name-include (OMS_CLEANUP_NAME_INCLUDE): ", env={"OMS_CLEANUP_NAME_INCLUDE": " , "}
    ),
    "file-exclude-a-comma": Case(
        ("--config", "c.toml"),
        "--name-exclude (config file 'c.toml'): ",
        files={"c.toml": b'name_exclude = ","\n'},
    ),
    # durations too long for anything (and for timedelta)
    "older-than-overflow": Case(("--older-than", "99999999999w"), "--older-than: duration"),
    "deadline-overflow": Case(("--deadline", "99999999999w"), "--deadline: duration"),
    "requeue-delay-overflow": Case(("--requeue-delay", "99999999999w"), "--requeue-delay: "),
    "grace-overflow": Case(("--shutdown-grace", "99999999999w"), "--shutdown-grace: duration"),
    "config-deadline-overflow": Case(
        ("--config", "c.toml"),
        "--deadline (config file 'c.toml'): duration '1000000000d' is too long",
        files={"c.toml": b'deadline = "1000000000d"\n'},
    ),
    # booleans are not numbers
    "config-attempts-true": Case(
        ("--config", "c.toml"),
        "--max-attempts (config file 'c.toml'): expected a whole number (got true)",
        files={"c.toml": b"max_attempts = true\n"},
    ),
    "config-rate-true": Case(
        ("--config", "c.toml"), "--rate (config file 'c.toml'): ", files={"c.toml": b"rate = true"}
    ),
    "config-yes-no-one": Case(
        ("--config", "c.toml"),
        "--list-by-status (config file 'c.toml'): expected true or false (got 1)",
        files={"c.toml": b"list_by_status = 1"},
    ),
    # targets and connection
    "endpoint-malformed": Case(("--endpoint", "https//oms.example.com"), "--endpoint: "),
    "endpoint-ftp": Case(("--endpoint", "ftp://127.0.0.1:9"), "--endpoint: "),
    "endpoint-http-remote": Case(
        ("--endpoint", "http://10.1.2.3:8080"), "--endpoint: endpoint 'http://10.1.2.3:8080'"
    ),
    "endpoint-port-range": Case(("--endpoint", "http://127.0.0.1:99999"), "--endpoint: "),
    "endpoint-userinfo": Case(("--endpoint", "http://u:p@127.0.0.1:9"), "--endpoint: "),
    "endpoint-and-region": Case(("--region", "cn-north-4"), "--endpoint: give either"),
    "project-id-path": Case(("--project-id", "../etc"), "--project-id: must be letters"),
    "ca-bundle-missing": Case(("--ca-bundle", "no-such.pem"), "--ca-bundle: "),
    "timeout-negative": Case(("--connect-timeout", "-1"), "--connect-timeout: "),
    "timeout-words": Case(("--request-timeout", "abc"), "--request-timeout: "),
    # output
    "report-dir-missing": Case(("--report", "no/such/dir/r.json"), "--report: directory"),
    "log-format": Case(("--log-format", "xml"), "--log-format: "),
    "log-level": Case(("--log-level", "verbose"), "--log-level: "),
    # sharding
    "shard-count-zero": Case(("--shard-count", "0"), "--shard-count: must be at least 1"),
    "shard-index-too-big": Case(("--shard-index", "3", "--shard-count", "2"), "--shard-index: "),
    # command line shape
    "unknown-flag": Case(("--bogus",), "unrecognized arguments: --bogus"),
    "missing-value": Case(("--rate",), "argument --rate: expected one argument"),
    # config files
    "config-missing": Case(("--config", "missing.toml"), "--config: cannot read 'missing.toml'"),
    "config-is-directory": Case(("--config", "."), "--config: cannot read '.'"),
    "config-not-utf8": Case(
        ("--config", "c.toml"), "--config: 'c.toml' is not UTF-8", files={"c.toml": b"\xff\xfe"}
    ),
    "config-not-toml": Case(
        ("--config", "c.toml"), "is not valid TOML", files={"c.toml": b"rate = [\n"}
    ),
    "config-unknown-key": Case(
        ("--config", "c.toml"),
        "config file 'c.toml': unknown key 'bogus_key'",
        files={"c.toml": b"rate = 1\nbogus_key = 2\n"},
    ),
    "config-bare-number-age": Case(
        ("--config", "c.toml"),
        "--older-than (config file 'c.toml'): expected a duration with a unit",
        files={"c.toml": b"older_than = 30\n"},
        with_age=False,
    ),
    "config-wrong-type": Case(
        ("--config", "c.toml"), "--rate (config file 'c.toml'): ", files={"c.toml": b'rate = "x"'}
    ),
    # environment and credentials
    "env-unknown-setting": Case(
        (), "OMS_CLEANUP_PROTECT_ID: unknown", env={"OMS_CLEANUP_PROTECT_ID": "1"}
    ),
    "env-bad-value": Case((), "--rate (OMS_CLEANUP_RATE): ", env={"OMS_CLEANUP_RATE": "fast"}),
    "env-config-missing": Case(
        (), "--config: cannot read", env={"OMS_CLEANUP_CONFIG": "nope.toml"}
    ),
    "no-credentials": Case(
        (), "credentials: none found", env={"OMS_CLEANUP_AK": None, "OMS_CLEANUP_SK": None}
    ),
    "ak-without-sk": Case((), "OMS_CLEANUP_SK: missing", env={"OMS_CLEANUP_SK": None}),
    "sk-with-newline": Case((), "OMS_CLEANUP_SK: contains control", env={"OMS_CLEANUP_SK": "a\nb"}),
    "ak-with-comma": Case((), "OMS_CLEANUP_AK: must be letters", env={"OMS_CLEANUP_AK": "AK,1"}),
    "token-and-keys": Case(
        (), "OMS_CLEANUP_AUTH_TOKEN: give either", env={"OMS_CLEANUP_AUTH_TOKEN": "t"}
    ),
    "secrets-dir-missing": Case(("--secrets-dir", "nowhere"), "--secrets-dir: no such directory"),
}


# Only the simulator's valid AK/SK in the environment; a scratch working directory; logging
# reset afterwards in case a case wrongly reached the run.
pytestmark = pytest.mark.usefixtures("cli_environment")


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_bad_input_sends_nothing(
    make_simulator: SimulatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: Case,
) -> None:
    """A bad value: exit 2, one stderr line naming the option, no request to the simulator."""
    sim = await make_simulator(tasks_per_project=20)
    for name, content in case.files.items():
        (tmp_path / name).write_bytes(content)
    age = ["--older-than", "1d"] if case.with_age else []
    for name, value in case.env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    argv = run_arguments(sim.url, *age, "--execute", "--yes", *case.flags)
    stdout, stderr = io.StringIO(), io.StringIO()

    # The command runs its own event loop: a thread keeps this test's loop serving.
    code = await asyncio.to_thread(run_cli, argv, stdin=io.StringIO(), stdout=stdout, stderr=stderr)

    err = stderr.getvalue()
    assert code == 2, err
    assert stdout.getvalue() == ""
    assert err.count("\n") == 1, err
    assert err.startswith("oms-cleanup: error: ")
    assert case.blamed in err
    truth = sim.state.snapshot()
    assert sum(truth["requests"].values()) == 0
    assert sum(truth["rejected"].values()) == 0
    assert truth["remaining"][DEFAULT_PROJECT_ID]["total"] == 20
    assert not (tmp_path / "oms-cleanup-report.json").exists()
