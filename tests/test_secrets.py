"""Secrets never leave: every command at debug level, then a search for the values in all output.

Known SK, security token and IAM token values are accepted by a simulator; every signature the
client computes is recorded as it is made. Then stdout, stderr, the report and exception texts
are searched for those values and for any `Signature=<hex>`. The error paths (a refused SK, a
token expiring mid-run) are included: error messages are where secrets usually slip out.

`simulate` is left out on purpose: its banner prints the simulator's own test credentials,
which is the point of that command (they open nothing but the local simulator).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yarl
from cleanup_command import run_arguments
from conftest import SimulatorFactory
from pydantic import SecretStr

from worker import logs
from worker.cli import run_cli
from worker.demo import run_demo
from worker.oms import auth
from worker.oms.auth import AkSk, Credentials, IamToken
from worker.oms.client import ClientConfig, OmsClient
from worker.oms.errors import AuthFailed
from worker.oms.retry import RetryPolicy
from worker.simulator.config import (
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
    SimAccessKey,
    SimCredentials,
    SimulatorConfig,
)
from worker.simulator.faults import FaultConfig
from worker.simulator.server import SimulatorHandle

AK = "AKSECRETSTEST0001"
SK = "SKsecret-value-7f3a9c-do-not-print"
TEMP_AK = "AKSECRETSTEMP0002"
TEMP_SK = "SKtemporary-value-b81e-do-not-print"
SECURITY_TOKEN = "STSsecurity-token-51d2-do-not-print"
IAM_TOKEN = "MIIiam-token-88e1-do-not-print"
WRONG_SK = "SKwrong-but-still-secret-0c4d"
SECRETS = (SK, TEMP_SK, SECURITY_TOKEN, IAM_TOKEN, WRONG_SK)
SIGNATURE_RE = re.compile(r"Signature=\s*[0-9a-fA-F]{8,}")

SIMULATOR_CREDENTIALS = SimCredentials(
    access_keys=(
        SimAccessKey(access_key=AK, secret_key=SK),
        SimAccessKey(access_key=TEMP_AK, secret_key=TEMP_SK, security_token=SECURITY_TOKEN),
    ),
    iam_token=IAM_TOKEN,
)

ENVIRONMENTS: dict[str, dict[str, str]] = {
    "ak-sk": {"OMS_CLEANUP_AK": AK, "OMS_CLEANUP_SK": SK},
    "temporary": {
        "OMS_CLEANUP_AK": TEMP_AK,
        "OMS_CLEANUP_SK": TEMP_SK,
        "OMS_CLEANUP_SECURITY_TOKEN": SECURITY_TOKEN,
    },
    "iam-token": {"OMS_CLEANUP_AUTH_TOKEN": IAM_TOKEN},
    "wrong-sk": {"OMS_CLEANUP_AK": AK, "OMS_CLEANUP_SK": WRONG_SK},
    "sdk-names": {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK},
}


@dataclass
class Signatures:
    """Every signature hex the client put into an Authorization header during the test."""

    values: list[str]


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> Signatures:
    """Record the signatures the client computes, as it computes them."""
    seen = Signatures(values=[])
    original = auth.auth_headers

    def recording(credentials: Credentials, **kwargs: Any) -> dict[str, str]:
        headers = original(credentials, **kwargs)
        authorization = headers.get("Authorization", "")
        seen.values.extend(re.findall(r"Signature=([0-9a-f]+)", authorization))
        return headers

    # Patched where the client looks it up, so every send of every client is seen.
    monkeypatch.setattr("worker.oms.client.auth_headers", recording)
    return seen


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No ambient credentials; a scratch directory; logging reset afterwards."""
    for name in list(os.environ):
        if name.startswith(("OMS_CLEANUP_", "HUAWEICLOUD_SDK_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    logs.reset()


def assert_no_secret(text: str, signatures: Signatures, *, where: str) -> None:
    """None of the known secrets, recorded signatures, or any `Signature=<hex>` in `text`."""
    for secret in SECRETS:
        assert secret not in text, f"a secret value appears in {where}"
    for signature in signatures.values:
        assert signature not in text, f"a request signature appears in {where}"
    assert SIGNATURE_RE.search(text) is None, f"a Signature= value appears in {where}"


async def command(argv: list[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """`oms-cleanup <argv>` with `env` set, in a thread (it runs its own loop); code, out, err."""
    for name, value in env.items():
        os.environ[name] = value
    try:
        stdout, stderr = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(
            run_cli, argv, stdin=io.StringIO(), stdout=stdout, stderr=stderr
        )
    finally:
        for name in env:
            os.environ.pop(name, None)
        logs.reset()
    return code, stdout.getvalue(), stderr.getvalue()


async def simulator(make_simulator: SimulatorFactory, **faults: Any) -> SimulatorHandle:
    """A simulator that accepts the test's credentials."""
    return await make_simulator(
        SimulatorConfig(
            tasks_per_project=40,
            credentials=SIMULATOR_CREDENTIALS,
            faults=FaultConfig(**faults),
        )
    )


RUNS = [
    # (id, credentials, extra flags, simulator faults, expected exit code)
    ("dry-run", "ak-sk", ["--log-format", "json"], {}, 0),
    ("execute", "ak-sk", ["--execute", "--yes", "--log-format", "json"], {}, 0),
    ("execute-console", "temporary", ["--execute", "--yes", "--log-format", "console"], {}, 0),
    ("execute-token", "iam-token", ["--execute", "--yes", "--log-format", "json"], {}, 0),
    ("execute-sdk-env", "sdk-names", ["--execute", "--yes", "--log-format", "console"], {}, 0),
    ("retries", "ak-sk", ["--execute", "--yes", "--log-format", "json"], {"error_rate": 0.2}, 0),
    ("refused-sk", "wrong-sk", ["--execute", "--yes", "--log-format", "json"], {}, 4),
    ("refused-sk-console", "wrong-sk", ["--execute", "--log-format", "console"], {}, 4),
    (
        "token-expires",
        "iam-token",
        ["--execute", "--yes", "--log-format", "console"],
        {"token_expires_after": 4},
        4,
    ),
]


@pytest.mark.parametrize(
    ("credentials", "flags", "faults", "exit_code"),
    [case[1:] for case in RUNS],
    ids=[case[0] for case in RUNS],
)
async def test_run_at_debug_level_shows_no_secret(
    make_simulator: SimulatorFactory,
    tmp_path: Path,
    signatures: Signatures,
    credentials: str,
    flags: list[str],
    faults: dict[str, Any],
    exit_code: int,
) -> None:
    """`run` (dry, executing, refused, expiring): no secret in stdout, stderr or the report."""
    sim = await simulator(make_simulator, **faults)
    report = tmp_path / "report.json"
    argv = run_arguments(
        sim.url,
        "--older-than",
        "1d",
        "--rate",
        "1000",
        "--log-level",
        "debug",
        "--report",
        str(report),
        *flags,
    )

    code, out, err = await command(argv, ENVIRONMENTS[credentials])

    assert code == exit_code, err
    if credentials != "iam-token":
        assert signatures.values, "no request was signed: the test proves nothing"
    # The logs did talk: a silent run would hide nothing by accident.
    assert "run_finished" in out  # the events go to stdout
    assert_no_secret(out, signatures, where="stdout")
    assert_no_secret(err, signatures, where="stderr")
    assert_no_secret(report.read_text(encoding="utf-8"), signatures, where="the report")
    if exit_code == 4:
        assert "APIG.0301" in out + report.read_text(encoding="utf-8")


@pytest.mark.parametrize("credentials", sorted(ENVIRONMENTS))
async def test_validate_shows_no_secret(credentials: str) -> None:
    """`validate` prints the effective settings with every credential masked."""
    code, out, err = await command(
        ["validate", "--region", "cn-north-4", "--project-id", "p1", "--older-than", "1d"],
        ENVIRONMENTS[credentials],
    )

    assert code == 0, err
    assert '"auth_mode"' in out
    assert_no_secret(out + err, Signatures(values=[]), where="validate's output")


async def test_secrets_dir_credentials_stay_hidden(
    make_simulator: SimulatorFactory, tmp_path: Path, signatures: Signatures
) -> None:
    """Credentials read from --secrets-dir files are as hidden as those from the environment."""
    sim = await simulator(make_simulator)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "ak").write_text(AK + "\n", encoding="utf-8")
    (secrets / "sk").write_text(SK + "\n", encoding="utf-8")
    argv = ["--endpoint", sim.url, "--project-id", DEFAULT_PROJECT_ID, "--older-than", "1d"]
    argv += ["--secrets-dir", str(secrets), "--log-level", "debug", "--log-format", "json"]

    shown = await command(["validate", *argv], {})
    ran = await command(["run", *argv, "--execute", "--yes", "--report", "r.json"], {})

    assert shown[0] == ran[0] == 0
    assert signatures.values
    for text in (*shown[1:], *ran[1:], (tmp_path / "r.json").read_text(encoding="utf-8")):
        assert_no_secret(text, signatures, where="secrets-dir run")


async def test_refused_request_exception_text_shows_no_secret(
    make_simulator: SimulatorFactory, signatures: Signatures
) -> None:
    """The error a refused request raises: its str, repr, info and traceback hold no secret."""
    sim = await simulator(make_simulator)
    config = ClientConfig(
        endpoint=yarl.URL(sim.url), project_id=DEFAULT_PROJECT_ID, retry=RetryPolicy()
    )
    refused: list[AuthFailed] = []
    for credentials in (
        AkSk(access_key=AK, secret_key=SecretStr(WRONG_SK)),
        AkSk(
            access_key=TEMP_AK,
            secret_key=SecretStr(TEMP_SK),
            security_token=SecretStr(SECURITY_TOKEN + "x"),
        ),
        IamToken(token=SecretStr(IAM_TOKEN + "x")),
    ):
        async with OmsClient(config, credentials=credentials) as client:
            with pytest.raises(AuthFailed) as raised:
                await client.delete_task(123456789012345)
            assert_no_secret(repr(client), signatures, where="the client's repr")
        refused.append(raised.value)

    assert sim.state.snapshot()["rejected"]["auth"] == 3
    for error in refused:
        text = "\n".join(
            [str(error), repr(error), repr(error.info), *traceback.format_exception(error)]
        )
        assert error.request_id
        assert_no_secret(text, signatures, where="the exception")


async def test_demo_shows_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signatures: Signatures
) -> None:
    """The demo signs with the simulator's default key: it must not print that key either."""
    log_stream = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=log_stream)
    out = io.StringIO()

    code = await run_demo(tasks=60, report=tmp_path / "demo.json", out=out)

    assert code == 0
    assert signatures.values
    texts = {
        "demo output": out.getvalue(),
        "demo logs": log_stream.getvalue(),
        "the demo report": (tmp_path / "demo.json").read_text(encoding="utf-8"),
        "captured output": "".join(capsys.readouterr()),
    }
    assert "task_outcome" in texts["demo logs"]
    for where, text in texts.items():
        assert DEFAULT_SECRET_KEY not in text, f"the demo's SK appears in {where}"
        assert_no_secret(text, signatures, where=where)
