"""Run settings and credentials: sources, precedence, validation, masking."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from worker.credentials import load_credentials
from worker.oms.auth import AkSk, IamToken
from worker.oms.models import TaskStatus
from worker.settings import (
    ConfigError,
    MaxDeletions,
    RunSettings,
    Target,
    load_settings,
    masked_settings,
)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "cleanup.example.toml"
TARGET = {"region": "cn-north-4", "project_id": "p1", "older_than": "30d"}
SK = "SKtestSKtestSKtestSKtestSKtestSKtest0001"
TOKEN = "MIItoken-value-0001"


def write(path: Path, text: str) -> Path:
    """Write `text` to `path` and return the path."""
    path.write_text(text, encoding="utf-8")
    return path


def problems(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    """The one-line problems a ConfigError carries."""
    return [str(problem) for problem in error.value.problems]


# ------------------------------------------------------------------------------------------
# Precedence: flag > environment > file > default (protections accumulate instead, below)

PRECEDENCE_TABLE = [
    # (field, flag, env, file (TOML value), expected attribute value)
    ("rate", "5", "6", "7.0", 5.0),
    ("rate", None, "6", "7.0", 6.0),
    ("rate", None, None, "7.0", 7.0),
    ("rate", None, None, None, 20.0),
    ("concurrency", None, "3", "4", 3),
    ("older_than", "1h", "2h", '"3h"', timedelta(hours=1)),
    ("older_than", None, "2h", '"3h"', timedelta(hours=2)),
    ("older_than", None, None, '"3h"', timedelta(hours=3)),
    ("states", "paused", "failed", '["succeeded"]', frozenset({TaskStatus.PAUSED})),
    (
        "states",
        None,
        "failed,paused",
        '["succeeded"]',
        frozenset({TaskStatus.FAILED, TaskStatus.PAUSED}),
    ),
    ("states", None, None, '["succeeded"]', frozenset({TaskStatus.SUCCEEDED})),
    ("states", None, None, None, frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED})),
    ("log_level", "DEBUG", "error", '"warning"', "debug"),
    ("log_level", None, None, None, "info"),
    ("execute", True, "false", "false", True),
    ("execute", False, "true", "true", False),
    ("execute", None, "true", "false", True),
    ("execute", None, None, "true", True),
    ("execute", None, None, None, False),
    ("name_include", ["n*"], "a*,b*", '["c*"]', ("n*",)),
    ("name_include", None, "a*,b*", '["c*"]', ("a*", "b*")),
    ("name_include", None, None, '["c*"]', ("c*",)),
    ("max_deletions", "10%", "5", "3", MaxDeletions(percent=10)),
    ("max_deletions", None, "5", "3", MaxDeletions(count=5)),
    ("max_deletions", None, None, "3", MaxDeletions(count=3)),
    ("max_deletions", None, None, None, None),
    ("requeue_delay", None, "1m", '"5s"', timedelta(minutes=1)),
    ("max_staleness", "2m", "3m", '"4m"', timedelta(minutes=2)),
    ("max_staleness", None, "3m", '"4m"', timedelta(minutes=3)),
    ("max_staleness", None, None, '"4m"', timedelta(minutes=4)),
    ("max_staleness", None, None, None, timedelta(minutes=10)),
    ("connect_timeout", "2.5", None, '"9s"', timedelta(seconds=2.5)),
    ("connect_timeout", None, None, "3", timedelta(seconds=3)),
    ("log_format", "auto", "json", '"console"', None),
    ("log_format", None, "json", '"console"', "json"),
    ("shard_count", "4", "3", "2", 4),
    ("shard_count", None, "3", "2", 3),
    ("shard_count", None, None, "2", 2),
    ("shard_count", None, None, None, 1),
    ("pushgateway", "http://a:9091", "http://b:9091", '"http://c:9091"', "http://a:9091"),
    ("pushgateway", None, None, '"https://c/gw"', "https://c/gw"),
    ("pushgateway", None, " ", None, None),
]


@pytest.mark.parametrize(("field", "flag", "env", "file", "expected"), PRECEDENCE_TABLE)
def test_precedence(
    tmp_path: Path, field: str, flag: Any, env: str | None, file: str | None, expected: Any
) -> None:
    """The most specific source that gives an option wins."""
    config = write(tmp_path / "c.toml", f"{field} = {file}\n" if file is not None else "")
    flags = {**TARGET, field: flag}
    environ = {f"OMS_CLEANUP_{field.upper()}": env} if env is not None else {}
    settings = load_settings(flags, config_file=config, environ=environ)
    assert getattr(settings, field) == expected


ACCUMULATION_TABLE = [
    # (field, flag, env, file (TOML value), expected value, expected origins by value)
    (
        "protect_ids",
        ["9"],
        "7,8",
        "[1]",
        frozenset({1, 7, 8, 9}),
        {1: ("file",), 7: ("environment",), 8: ("environment",), 9: ("flags",)},
    ),
    (
        "protect_ids",
        ["7"],
        "7, 8",
        "[7, 1]",
        frozenset({1, 7, 8}),
        {1: ("file",), 7: ("file", "environment", "flags"), 8: ("environment",)},
    ),
    ("protect_ids", None, None, "[1, 2]", frozenset({1, 2}), {1: ("file",), 2: ("file",)}),
    ("protect_ids", None, None, "[]", frozenset(), {}),
    ("protect_ids", ["3"], None, None, frozenset({3}), {3: ("flags",)}),
    (
        "name_exclude",
        ["n*"],
        "a*,b*",
        '["c*", "a*"]',
        ("c*", "a*", "b*", "n*"),
        {"c*": ("file",), "a*": ("file", "environment"), "b*": ("environment",), "n*": ("flags",)},
    ),
    ("name_exclude", None, None, None, (), {}),
]


@pytest.mark.parametrize(
    ("field", "flag", "env", "file", "expected", "origins"), ACCUMULATION_TABLE
)
def test_protections_accumulate(
    tmp_path: Path,
    field: str,
    flag: Any,
    env: str | None,
    file: str | None,
    expected: Any,
    origins: dict[Any, tuple[str, ...]],
) -> None:
    """Protections are the union of every layer's, and each value names the layers it came from."""
    config = write(tmp_path / "c.toml", f"{field} = {file}\n" if file is not None else "")
    flags = {**TARGET, field: flag}
    environ = {f"OMS_CLEANUP_{field.upper()}": env} if env is not None else {}
    settings = load_settings(flags, config_file=config, environ=environ)
    assert getattr(settings, field) == expected
    assert dict(settings.protection_origins[field]) == origins


def test_validate_shows_each_protection_with_its_layers(tmp_path: Path) -> None:
    """masked_settings lists every protection with the layers that gave it, lowest first."""
    config = write(tmp_path / "c.toml", 'protect_ids = [5, 6]\nname_exclude = ["*-keep"]\n')
    settings = load_settings(
        {**TARGET, "protect_ids": ["6", "8"], "name_exclude": ["prod-*"]},
        config_file=config,
        environ={"OMS_CLEANUP_PROTECT_IDS": "5"},
    )
    shown = masked_settings(settings)
    assert shown["protect_ids"] == [
        {"id": 5, "from": ["file", "environment"]},
        {"id": 6, "from": ["file", "flags"]},
        {"id": 8, "from": ["flags"]},
    ]
    assert shown["name_exclude"] == [
        {"pattern": "*-keep", "from": ["file"]},
        {"pattern": "prod-*", "from": ["flags"]},
    ]
    assert shown["dropped_targets"] == []


TARGET_TABLE = [
    # (flags, environ, file text, expected targets)
    (
        {"region": "cn-north-4", "project_id": "p1"},
        {},
        "",
        (Target(region="cn-north-4", project_id="p1"),),
    ),
    (
        {"region": "cn-north-4"},
        {"OMS_CLEANUP_PROJECT_ID": "p2"},
        'project_id = "p3"\n',
        (Target(region="cn-north-4", project_id="p2"),),
    ),
    (
        {},
        {},
        'region = "ap-southeast-1"\nproject_id = "p3"\n',
        (Target(region="ap-southeast-1", project_id="p3"),),
    ),
    (
        {"endpoint": "http://127.0.0.1:8080"},
        {},
        'region = "ap-southeast-1"\nproject_id = "p3"\n',
        (Target(endpoint="http://127.0.0.1:8080", project_id="p3"),),
    ),
    (
        {},
        {"OMS_CLEANUP_REGION": "af-south-1"},
        'endpoint = "https://oms.example.com"\nproject_id = "p3"\n',
        (Target(region="af-south-1", project_id="p3"),),
    ),
    (
        {},
        {"HUAWEICLOUD_SDK_PROJECT_ID": "sdk"},
        'region = "ap-southeast-1"\n',
        (Target(region="ap-southeast-1", project_id="sdk"),),
    ),
    (
        {},
        {"HUAWEICLOUD_SDK_PROJECT_ID": "sdk"},
        'region = "ap-southeast-1"\nproject_id = "file"\n',
        (Target(region="ap-southeast-1", project_id="file"),),
    ),
    (
        {},
        {"HUAWEICLOUD_SDK_PROJECT_ID": "sdk"},
        '[[targets]]\nregion = "cn-north-4"\nproject_id = "a"\n'
        '[[targets]]\nendpoint = "https://oms.example.com/base"\nproject_id = "b"\n',
        (
            Target(region="cn-north-4", project_id="a"),
            Target(endpoint="https://oms.example.com/base", project_id="b"),
        ),
    ),
    (
        {"region": "la-south-2", "project_id": "flag"},
        {},
        '[[targets]]\nregion = "cn-north-4"\nproject_id = "a"\n',
        (Target(region="la-south-2", project_id="flag"),),
    ),
    (
        {},
        {"OMS_CLEANUP_REGION": "me-east-1", "OMS_CLEANUP_PROJECT_ID": "env"},
        'region = "cn-north-4"\nproject_id = "a"\n',
        (Target(region="me-east-1", project_id="env"),),
    ),
    (
        {"endpoint": "https://oms.example.com"},
        {"HUAWEICLOUD_SDK_PROJECT_ID": "sdk"},
        "",
        (Target(endpoint="https://oms.example.com", project_id="sdk"),),
    ),
]


@pytest.mark.parametrize(("flags", "environ", "file", "expected"), TARGET_TABLE)
def test_targets(
    tmp_path: Path,
    flags: dict[str, str],
    environ: dict[str, str],
    file: str,
    expected: tuple[Target, ...],
) -> None:
    """Flat target options combine across sources and replace the file's [[targets]]."""
    config = write(tmp_path / "c.toml", file)
    settings = load_settings({"older_than": "1d", **flags}, config_file=config, environ=environ)
    assert settings.targets == expected


TWO_TARGETS = (
    '[[targets]]\nregion = "cn-north-4"\nproject_id = "a"\n'
    '[[targets]]\nendpoint = "https://oms.example.com"\nproject_id = "c"\n'
)


def test_flags_replacing_the_files_targets_keep_the_dropped_ones(tmp_path: Path) -> None:
    """Flags may replace the file's targets; the dropped ones stay known for the warning."""
    config = write(tmp_path / "c.toml", TWO_TARGETS)
    flags = {"older_than": "1d", "region": "la-south-2", "project_id": "b"}
    settings = load_settings(flags, config_file=config, environ={})
    assert settings.targets == (Target(region="la-south-2", project_id="b"),)
    assert settings.dropped_targets == (
        Target(region="cn-north-4", project_id="a"),
        Target(endpoint="https://oms.example.com", project_id="c"),
    )
    assert masked_settings(settings)["dropped_targets"] == [
        {"project_id": "a", "region": "cn-north-4", "endpoint": None},
        {"project_id": "c", "region": None, "endpoint": "https://oms.example.com"},
    ]


def test_the_files_own_targets_drop_nothing(tmp_path: Path) -> None:
    """Targets from the file alone, or one flat target, replace nothing."""
    config = write(tmp_path / "c.toml", TWO_TARGETS)
    environ = {"HUAWEICLOUD_SDK_PROJECT_ID": "sdk"}
    assert (
        load_settings({"older_than": "1d"}, config_file=config, environ=environ).dropped_targets
        == ()
    )
    assert load_settings(TARGET, environ={}).dropped_targets == ()


def test_config_file_from_environment(tmp_path: Path) -> None:
    """$OMS_CLEANUP_CONFIG names the config file when --config is not given."""
    config = write(tmp_path / "c.toml", 'region = "cn-north-4"\nproject_id = "p"\nrate = 3\n')
    settings = load_settings({"older_than": "1d"}, environ={"OMS_CLEANUP_CONFIG": str(config)})
    assert settings.rate == 3.0


def test_example_config_loads() -> None:
    """The shipped example config is valid and says what it documents."""
    settings = load_settings({}, config_file=EXAMPLE_CONFIG, environ={})
    assert len(settings.targets) == 2
    assert settings.older_than == timedelta(days=30)
    assert settings.dry_run
    assert settings.max_deletions == MaxDeletions(percent=10)
    assert 191297407830872 in settings.protect_ids


def test_example_config_documents_every_option() -> None:
    """Every settable option appears in the example config (set or commented out)."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    missing = [
        name
        for name in [*RunSettings.model_fields, "region", "endpoint", "project_id"]
        if f"{name} = " not in text and f"[[{name}]]" not in text
    ]
    assert missing == []


# ------------------------------------------------------------------------------------------
# Parsing details


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-31T00:00:00Z", datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31T00:00:00", datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31T08:00:00+08:00", datetime(2026, 1, 31, tzinfo=UTC)),
    ],
)
def test_started_before(value: str, expected: datetime) -> None:
    """ISO 8601 timestamps parse to aware datetimes; naive ones are UTC."""
    flags = {"region": "cn-north-4", "project_id": "p", "started_before": value}
    settings = load_settings(flags, environ={})
    assert settings.started_before == expected
    assert settings.started_before is not None
    assert settings.started_before.utcoffset() is not None


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("started_before = 2026-01-31T00:00:00", datetime(2026, 1, 31, tzinfo=UTC)),
        ("started_before = 2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
        ("started_before = 2026-01-31T02:00:00+02:00", datetime(2026, 1, 31, tzinfo=UTC)),
    ],
)
def test_started_before_toml_types(tmp_path: Path, toml: str, expected: datetime) -> None:
    """TOML's own date and datetime values are accepted, naive ones as UTC."""
    config = write(tmp_path / "c.toml", f'region = "cn-north-4"\nproject_id = "p"\n{toml}\n')
    assert load_settings({}, config_file=config, environ={}).started_before == expected


@pytest.mark.parametrize(
    ("cap", "listed", "expected"),
    [
        (MaxDeletions(count=100), 1000, 100),
        (MaxDeletions(count=100), 40, 40),
        (MaxDeletions(count=0), 40, 0),
        (MaxDeletions(percent=10), 1000, 100),
        (MaxDeletions(percent=10), 30, 3),
        (MaxDeletions(percent=10), 9, 0),
        (MaxDeletions(percent=100), 7, 7),
        (MaxDeletions(percent=0.5), 1000, 5),
        (MaxDeletions(percent=33), 0, 0),
    ],
)
def test_max_deletions_limit(cap: MaxDeletions, listed: int, expected: int) -> None:
    """A count caps directly; a percentage of the listed tasks rounds down."""
    assert cap.limit(listed) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500", MaxDeletions(count=500)),
        (" 10% ", MaxDeletions(percent=10)),
        ("0", MaxDeletions(count=0)),
    ],
)
def test_max_deletions_parse(text: str, expected: MaxDeletions) -> None:
    """Counts and percentages parse from their flag spelling."""
    assert MaxDeletions.parse(text) == expected
    assert MaxDeletions.parse(str(expected)) == expected


def test_settings_are_frozen() -> None:
    """Loaded settings cannot be changed afterwards."""
    settings = load_settings(TARGET, environ={})
    with pytest.raises(ValueError, match="frozen"):
        settings.rate = 1.0  # type: ignore[misc]


def test_environment_is_not_read_implicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit environ mapping replaces the process environment entirely."""
    for name in list(os.environ):
        if name.startswith(("OMS_CLEANUP_", "HUAWEICLOUD_SDK_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OMS_CLEANUP_RATE", "1")
    assert load_settings(TARGET, environ={}).rate == 20.0
    assert load_settings(TARGET).rate == 1.0


# ------------------------------------------------------------------------------------------
# Bad inputs: one problem each, naming the option (and where it came from)

BAD_TABLE = [
    # (flags, environ, file text, expected problem line)
    ({"rate": "-1"}, {}, None, "--rate: must be greater than 0 (got -1)"),
    ({"rate": "0"}, {}, None, "--rate: must be greater than 0 (got 0)"),
    ({"rate": "nan"}, {}, None, "--rate: must be greater than 0 (got nan)"),
    ({}, {"OMS_CLEANUP_RATE": "-1"}, None, "--rate (OMS_CLEANUP_RATE): must be greater than 0"),
    ({}, {}, "rate = -2", "--rate (config file"),
    ({"concurrency": "0"}, {}, None, "--concurrency: must be at least 1 (got 0)"),
    ({"concurrency": "x"}, {}, None, "--concurrency: Input should be a valid integer"),
    ({"max_attempts": "0"}, {}, None, "--max-attempts: must be at least 1"),
    ({"older_than": "5x"}, {}, None, "--older-than: invalid duration '5x'"),
    ({"older_than": None}, {}, "older_than = 30", "--older-than (config file"),
    ({"requeue_delay": "0s"}, {}, None, "--requeue-delay: must be longer than 0s"),
    ({"deadline": "soon"}, {}, None, "--deadline: invalid duration 'soon'"),
    ({"request_timeout": "-1"}, {}, None, "--request-timeout: must be longer than 0s (got -1s)"),
    ({"started_before": "yesterday"}, {}, None, "--started-before: expected an ISO 8601"),
    ({"states": ""}, {}, None, "--states: name at least one state"),
    ({"states": " , "}, {}, None, "--states: name at least one state"),
    ({}, {"OMS_CLEANUP_STATES": ","}, None, "--states (OMS_CLEANUP_STATES): name at least one"),
    # A list that names nothing is a mistake in any layer, never a way to empty a list.
    (
        {},
        {"OMS_CLEANUP_NAME_EXCLUDE": ","},
        None,
        "--name-exclude (OMS_CLEANUP_NAME_EXCLUDE): name",
    ),
    ({}, {"OMS_CLEANUP_PROTECT_IDS": " , "}, None, "--protect-id (OMS_CLEANUP_PROTECT_IDS): name"),
    ({}, {"OMS_CLEANUP_NAME_INCLUDE": " , "}, None, "--name-include (OMS_CLEANUP_NAME_INCLUDE): "),
    ({}, {}, 'name_exclude = ","', "--name-exclude (config file"),
    ({}, {}, 'name_include = " , "', "--name-include (config file"),
    ({}, {}, 'protect_ids = ","', "--protect-id (config file"),
    (
        {},
        {"OMS_CLEANUP_PROTECT_IDS": "x"},
        None,
        "--protect-id (OMS_CLEANUP_PROTECT_IDS): expected",
    ),
    ({}, {}, "protect_ids = [1, true]", "--protect-id (config file"),
    # Booleans are not numbers, numbers are not booleans, fractions are not whole numbers.
    ({}, {}, "max_attempts = true", "--max-attempts (config file 'c.toml'): expected a whole"),
    ({}, {}, "concurrency = false", "--concurrency (config file 'c.toml'): expected a whole"),
    ({}, {}, "concurrency = 2.0", "--concurrency (config file 'c.toml'): expected a whole"),
    ({}, {}, "shard_count = true", "--shard-count (config file 'c.toml'): expected a whole"),
    ({}, {}, "rate = true", "--rate (config file 'c.toml'): expected a number (got true)"),
    ({}, {}, "max_deletions = true", "--max-deletions (config file 'c.toml'): expected a number"),
    ({}, {}, "max_deletions = 2.5", "--max-deletions (config file 'c.toml'): expected a number"),
    ({}, {}, "execute = 1", "--execute (config file 'c.toml'): expected true or false (got 1)"),
    ({}, {}, "stop_running = 0", "--stop-running (config file 'c.toml'): expected true or"),
    ({}, {}, "requeue_delay = true", "--requeue-delay (config file 'c.toml'): expected a dur"),
    ({}, {}, "request_timeout = true", "--request-timeout (config file 'c.toml'): expected"),
    ({}, {"OMS_CLEANUP_MAX_ATTEMPTS": "true"}, None, "--max-attempts (OMS_CLEANUP_MAX_ATTEMPTS)"),
    # Durations beyond what anything here means (and beyond what timedelta holds).
    ({"older_than": "99999999999w"}, {}, None, "--older-than: duration '99999999999w' is too"),
    ({"deadline": "99999999999w"}, {}, None, "--deadline: duration '99999999999w' is too long"),
    ({"requeue_delay": "99999999999w"}, {}, None, "--requeue-delay: duration '99999999999w'"),
    ({"shutdown_grace": "99999999999w"}, {}, None, "--shutdown-grace: duration '99999999999w'"),
    ({"connect_timeout": "99999999999w"}, {}, None, "--connect-timeout: duration"),
    ({}, {}, 'deadline = "1000000000d"', "--deadline (config file 'c.toml'): duration"),
    ({}, {"OMS_CLEANUP_DEADLINE": "1000000000d"}, None, "--deadline (OMS_CLEANUP_DEADLINE): "),
    ({"states": "done"}, {}, None, "--states: unknown task state 'done'"),
    ({"states": "unknown"}, {}, None, "--states: 'unknown' is not a selectable task state"),
    ({"states": "succeeded,migrating"}, {}, None, "--states: migrating is an active state"),
    ({"states": "waiting,retrying"}, {}, None, "--states: retrying, waiting are active states"),
    ({"protect_ids": ["12", "x"]}, {}, None, "--protect-id: expected task ids"),
    ({"protect_ids": ["0"]}, {}, None, "--protect-id: task ids are positive"),
    ({"max_deletions": "lots"}, {}, None, "--max-deletions: expected a number of tasks"),
    ({"max_deletions": "150%"}, {}, None, "--max-deletions: a percentage must be above 0"),
    ({"max_deletions": "-1"}, {}, None, "--max-deletions: must be 0 or more"),
    ({"log_format": "xml"}, {}, None, "--log-format: Input should be 'json' or 'console'"),
    ({"log_level": "loud"}, {}, None, "--log-level: Input should be"),
    ({"report": "/nonexistent-dir/r.json"}, {}, None, "--report: directory '/nonexistent-dir'"),
    ({"ca_bundle": "/nonexistent.pem"}, {}, None, "--ca-bundle: no such file"),
    ({"secrets_dir": "/nonexistent-dir"}, {}, None, "--secrets-dir: no such directory"),
    ({"older_than": None}, {}, None, "--older-than: an age criterion is required"),
    ({"region": None}, {}, None, "--region: give a region"),
    ({"region": "north"}, {}, None, "--region: region 'north' is not a region name"),
    ({"project_id": "a/b"}, {}, None, "--project-id: must be letters, digits"),
    ({"region": None, "project_id": None}, {}, None, "--region: no target"),
    ({"endpoint": "https://oms.example.com"}, {}, None, "--endpoint: give either a region or"),
    ({"region": None, "endpoint": "not a url"}, {}, None, "--endpoint: endpoint 'not a url'"),
    ({"region": None, "endpoint": "ftp://h"}, {}, None, "--endpoint: endpoint 'ftp://h' must"),
    (
        {"region": None, "endpoint": "http://10.1.2.3:80"},
        {},
        None,
        "--endpoint: endpoint 'http://10.1.2.3:80' uses plain http to a non-loopback host",
    ),
    ({}, {"OMS_CLEANUP_PROTECT_ID": "5"}, None, "OMS_CLEANUP_PROTECT_ID: unknown setting"),
    ({}, {}, "bogus = 1", "unknown key 'bogus'"),
    ({}, {}, "[[targets]]\nregion = 'cn-north-4'\nproject_id = 'p'\nrate = 1", "before the first"),
    (
        {"region": None, "project_id": None},
        {},
        "[[targets]]\nregion = 'cn-north-4'\nproject_id = 'p/q'",
        "targets[0].project_id: must be letters",
    ),
    (
        {"region": None, "project_id": None},
        {},
        "region = 'cn-north-4'\n[[targets]]\nregion = 'cn-north-4'\nproject_id = 'p'",
        "top-level region and [[targets]] cannot be combined",
    ),
    ({}, {}, "x = [", "--config: "),
    (
        {"region": None, "project_id": None},
        {},
        "targets = 'x'",
        "c.toml': targets: Input should be",
    ),
    ({}, {}, "targets = 'x'", "c.toml': targets: Input should be"),
    ({"shard_count": "0"}, {}, None, "--shard-count: must be at least 1 (got 0)"),
    ({"shard_count": "two"}, {}, None, "--shard-count: Input should be a valid integer"),
    ({"shard_index": "-1"}, {}, None, "--shard-index: must be at least 0 (got -1)"),
    ({"shard_index": "2", "shard_count": "2"}, {}, None, "--shard-index: must be below"),
    ({}, {"JOB_COMPLETION_INDEX": "1"}, None, "--shard-index (JOB_COMPLETION_INDEX): must be"),
    ({}, {"JOB_COMPLETION_INDEX": "x"}, None, "--shard-index (JOB_COMPLETION_INDEX): Input"),
    ({}, {"OMS_CLEANUP_SHARD_INDEX": "3"}, "shard_count = 3", "(OMS_CLEANUP_SHARD_INDEX): must"),
    ({}, {}, "shard_index = 1", "shard_index cannot be set in a file every shard reads"),
    # Targets come from one place: the file's [[targets]], or flags that replace them.
    (
        {"region": None, "project_id": None},
        {"OMS_CLEANUP_ENDPOINT": "https://oms.example.com"},
        TWO_TARGETS,
        "OMS_CLEANUP_ENDPOINT: the targets come from the [[targets]] of config file 'c.toml'",
    ),
    (
        {},
        {"OMS_CLEANUP_REGION": "me-east-1", "OMS_CLEANUP_PROJECT_ID": "env"},
        TWO_TARGETS,
        "OMS_CLEANUP_REGION, OMS_CLEANUP_PROJECT_ID: the targets come from the [[targets]]",
    ),
    (
        {"region": None, "project_id": None},
        {"OMS_CLEANUP_PROJECT_ID": "env"},
        TWO_TARGETS,
        "OMS_CLEANUP_PROJECT_ID: the targets come from",
    ),
    # The SDK's project id does not complete a flag's target that replaces the file's.
    (
        {"project_id": None},
        {"HUAWEICLOUD_SDK_PROJECT_ID": "sdk"},
        TWO_TARGETS,
        "--project-id: Field required",
    ),
    ({"pushgateway": "pushgateway:9091"}, {}, None, "--pushgateway: expected an http(s) URL"),
    ({"pushgateway": "ftp://h:21"}, {}, None, "--pushgateway: expected an http(s) URL"),
    ({"pushgateway": "http://"}, {}, None, "--pushgateway: expected an http(s) URL"),
    ({"pushgateway": "http://u:pw@h:9091"}, {}, None, "--pushgateway: credentials in the URL"),
    ({"pushgateway": "http://h:9091/?a=1"}, {}, None, "--pushgateway: give the Pushgateway's"),
    ({"metrics_textfile": "m.txt"}, {}, None, "--metrics-textfile: must end in .prom"),
    ({"metrics_textfile": "/nonexistent-dir/m.prom"}, {}, None, "directory '/nonexistent-dir'"),
    ({"report": "/nonexistent-{shard}/r.json"}, {}, None, "directory '/nonexistent-0'"),
]


@pytest.mark.parametrize(("flags", "environ", "file", "expected"), BAD_TABLE)
def test_bad_input(
    tmp_path: Path,
    flags: dict[str, Any],
    environ: dict[str, str],
    file: str | None,
    expected: str,
) -> None:
    """Each bad input gives exactly one problem, naming the option."""
    config = write(tmp_path / "c.toml", file) if file is not None else None
    with pytest.raises(ConfigError) as error:
        load_settings({**TARGET, **flags}, config_file=config, environ=environ)
    lines = problems(error)
    assert len(lines) == 1, lines
    # 'c.toml' in a row stands for the file's full path, as the problem names it.
    assert expected.replace("'c.toml'", repr(str(config))) in lines[0]
    assert "\n" not in lines[0]


DUPLICATE_TABLE = [
    # (the [[targets]] (location key, value, project id), the problem's end)
    (
        [("region", "cn-north-4", "a"), ("region", "cn-north-4", "a")],
        "targets[1].project_id: project a is already targets[0] (cn-north-4)",
    ),
    (
        [("endpoint", "http://localhost:8080", "a"), ("endpoint", "http://127.0.0.1:8080", "a")],
        "targets[1].project_id: project a is already targets[0] (http://localhost:8080)",
    ),
    (
        [
            ("region", "cn-north-4", "a"),
            ("region", "af-south-1", "b"),
            ("endpoint", "https://oms.cn-north-4.myhuaweicloud.com", "a"),
        ],
        "targets[2].project_id: project a is already targets[0] (cn-north-4)",
    ),
    (
        [
            ("endpoint", "https://one.example.com", "a"),
            ("endpoint", "https://two.example.com", "a"),
        ],
        "targets[1].project_id: project a is already targets[0] (https://one.example.com)",
    ),
]


@pytest.mark.parametrize(("targets", "expected"), DUPLICATE_TABLE)
@pytest.mark.parametrize("shard_index", ["0", "1"])
def test_duplicate_project_ids_are_refused(
    tmp_path: Path, targets: list[tuple[str, str, str]], expected: str, shard_index: str
) -> None:
    """One project id twice in the whole target list is refused, by every shard alike."""
    text = "older_than = '1d'\nshard_count = 2\n" + "".join(
        f'[[targets]]\n{key} = "{value}"\nproject_id = "{project}"\n'
        for key, value, project in targets
    )
    config = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as error:
        load_settings({}, config_file=config, environ={"JOB_COMPLETION_INDEX": shard_index})
    lines = problems(error)
    assert len(lines) == 1, lines
    assert lines[0] == f"config file {str(config)!r}: {expected}; list each project once"


def test_allow_insecure_http() -> None:
    """Plain http to a remote host is accepted only when explicitly allowed."""
    flags = {**TARGET, "region": None, "endpoint": "http://10.1.2.3:8080/oms/"}
    settings = load_settings({**flags, "allow_insecure_http": True}, environ={})
    url = settings.targets[0].base_url(allow_insecure_http=True)
    assert str(url) == "http://10.1.2.3:8080/oms"


def test_several_problems_each_on_a_line() -> None:
    """Independent bad inputs are all reported, one line each."""
    with pytest.raises(ConfigError) as error:
        load_settings({**TARGET, "rate": "0", "concurrency": "0"}, environ={})
    assert sorted(problems(error)) == [
        "--concurrency: must be at least 1 (got 0)",
        "--rate: must be greater than 0 (got 0)",
    ]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_config_file(tmp_path: Path, kind: str) -> None:
    """A named config file that cannot be read is an error, not silently ignored."""
    path = tmp_path / "missing.toml"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(ConfigError) as error:
        load_settings(TARGET, config_file=path, environ={})
    assert problems(error) == [
        f"--config: cannot read {str(path)!r}: "
        + ("No such file or directory" if kind == "missing" else "Is a directory")
    ]


# ------------------------------------------------------------------------------------------
# Credentials

CREDENTIAL_TABLE = [
    # (environ, secret files, expected)
    (
        {"OMS_CLEANUP_AK": "AK1", "OMS_CLEANUP_SK": SK},
        {},
        AkSk(access_key="AK1", secret_key=SecretStr(SK)),
    ),
    (
        {"OMS_CLEANUP_AK": "AK1", "OMS_CLEANUP_SK": SK, "OMS_CLEANUP_SECURITY_TOKEN": TOKEN},
        {},
        AkSk(access_key="AK1", secret_key=SecretStr(SK), security_token=SecretStr(TOKEN)),
    ),
    ({"OMS_CLEANUP_AUTH_TOKEN": TOKEN}, {}, IamToken(token=SecretStr(TOKEN))),
    (
        {"HUAWEICLOUD_SDK_AK": "AK2", "HUAWEICLOUD_SDK_SK": SK},
        {},
        AkSk(access_key="AK2", secret_key=SecretStr(SK)),
    ),
    (
        {
            "HUAWEICLOUD_SDK_AK": "AK2",
            "HUAWEICLOUD_SDK_SK": SK,
            "HUAWEICLOUD_SDK_SECURITY_TOKEN": TOKEN,
        },
        {},
        AkSk(access_key="AK2", secret_key=SecretStr(SK), security_token=SecretStr(TOKEN)),
    ),
    (
        {
            "OMS_CLEANUP_AK": "AK1",
            "OMS_CLEANUP_SK": SK,
            "HUAWEICLOUD_SDK_AK": "AK2",
            "HUAWEICLOUD_SDK_SK": "x",
        },
        {},
        AkSk(access_key="AK1", secret_key=SecretStr(SK)),
    ),
    (
        {"OMS_CLEANUP_AUTH_TOKEN": TOKEN, "HUAWEICLOUD_SDK_AK": "AK2", "HUAWEICLOUD_SDK_SK": SK},
        {},
        IamToken(token=SecretStr(TOKEN)),
    ),
    ({}, {"ak": "AK3\n", "sk": SK + "\n"}, AkSk(access_key="AK3", secret_key=SecretStr(SK))),
    (
        {},
        {"ak": "AK3", "sk": SK, "security_token": TOKEN},
        AkSk(access_key="AK3", secret_key=SecretStr(SK), security_token=SecretStr(TOKEN)),
    ),
    ({}, {"auth_token": TOKEN + "\n"}, IamToken(token=SecretStr(TOKEN))),
    (
        {"OMS_CLEANUP_AUTH_TOKEN": TOKEN},
        {"ak": "AK3", "sk": SK},
        IamToken(token=SecretStr(TOKEN)),
    ),
    (
        {"OMS_CLEANUP_AK": "  ", "OMS_CLEANUP_SK": ""},
        {"ak": "AK3", "sk": SK},
        AkSk(access_key="AK3", secret_key=SecretStr(SK)),
    ),
]


@pytest.mark.parametrize(("environ", "files", "expected"), CREDENTIAL_TABLE)
def test_credentials(
    tmp_path: Path, environ: dict[str, str], files: dict[str, str], expected: AkSk | IamToken
) -> None:
    """Credentials come whole from the first source that holds any."""
    for name, text in files.items():
        write(tmp_path / name, text)
    assert load_credentials(environ=environ, secrets_dir=tmp_path) == expected


BAD_CREDENTIAL_TABLE = [
    ({}, {}, "credentials: none found"),
    ({"OMS_CLEANUP_AK": "AK1"}, {}, "OMS_CLEANUP_SK: missing: OMS_CLEANUP_AK is set"),
    ({"OMS_CLEANUP_SK": SK}, {}, "OMS_CLEANUP_AK: missing"),
    ({"OMS_CLEANUP_SECURITY_TOKEN": TOKEN}, {}, "OMS_CLEANUP_AK: missing"),
    ({"OMS_CLEANUP_AK": "AK1", "HUAWEICLOUD_SDK_SK": SK}, {}, "OMS_CLEANUP_SK: missing"),
    (
        {"OMS_CLEANUP_AK": "AK1", "OMS_CLEANUP_SK": SK, "OMS_CLEANUP_AUTH_TOKEN": TOKEN},
        {},
        "OMS_CLEANUP_AUTH_TOKEN: give either an AK/SK pair or an auth token, not both",
    ),
    ({"HUAWEICLOUD_SDK_AK": "AK2"}, {}, "HUAWEICLOUD_SDK_SK: missing"),
    ({}, {"ak": "AK3"}, "/sk': missing"),
    ({}, {"ak": "AK3", "sk": SK, "auth_token": TOKEN}, "/auth_token': give either"),
    ({"OMS_CLEANUP_AK": "AK 1", "OMS_CLEANUP_SK": SK}, {}, "OMS_CLEANUP_AK: must be letters"),
    ({}, {"ak": "AK3", "sk": "a\nb"}, "/sk': contains control characters"),
]


@pytest.mark.parametrize(("environ", "files", "expected"), BAD_CREDENTIAL_TABLE)
def test_bad_credentials(
    tmp_path: Path, environ: dict[str, str], files: dict[str, str], expected: str
) -> None:
    """Missing, partial, mixed or malformed credentials give one problem naming the source."""
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError) as error:
        load_credentials(environ=environ, secrets_dir=tmp_path)
    lines = problems(error)
    assert len(lines) >= 1
    assert expected in lines[0]
    for secret in (SK, TOKEN):
        assert secret not in str(error.value)


def test_unreadable_secret_file(tmp_path: Path) -> None:
    """A secret file that cannot be read is reported, naming the file."""
    (tmp_path / "sk").mkdir()
    write(tmp_path / "ak", "AK3")
    with pytest.raises(ConfigError) as error:
        load_credentials(environ={}, secrets_dir=tmp_path)
    assert problems(error) == [
        f"--secrets-dir: cannot read {str(tmp_path / 'sk')!r}: Is a directory"
    ]


# ------------------------------------------------------------------------------------------
# Masking


@pytest.mark.parametrize(
    ("credentials", "mode"),
    [
        (AkSk(access_key="AKTESTAKTEST0042", secret_key=SecretStr(SK)), "ak_sk"),
        (
            AkSk(
                access_key="AKTESTAKTEST0042",
                secret_key=SecretStr(SK),
                security_token=SecretStr(TOKEN),
            ),
            "ak_sk_temporary",
        ),
        (IamToken(token=SecretStr(TOKEN)), "iam_token"),
    ],
)
def test_masked_settings(credentials: AkSk | IamToken, mode: str) -> None:
    """The shown settings are JSON, name the credential mode, and hold no secret."""
    settings = load_settings({**TARGET, "protect_ids": ["3", "1"]}, environ={})
    shown = masked_settings(settings, credentials=credentials)
    text = json.dumps(shown)
    assert shown["auth_mode"] == mode
    assert shown["protect_ids"] == [{"id": 1, "from": ["flags"]}, {"id": 3, "from": ["flags"]}]
    assert shown["older_than"] == "30d"
    assert SK not in text
    assert TOKEN not in text
    assert "AKTESTAKTEST0042" not in text
    if isinstance(credentials, AkSk):
        assert shown["access_key"] == "****0042"


def test_masked_settings_durations_read_back() -> None:
    """Durations shown by masked_settings load back to the same settings."""
    settings = load_settings(
        {**TARGET, "older_than": "36h", "deadline": "90m", "requeue_delay": "1500ms"}, environ={}
    )
    shown = masked_settings(settings)
    again = load_settings(
        {
            **TARGET,
            "older_than": shown["older_than"],
            "deadline": shown["deadline"],
            "requeue_delay": shown["requeue_delay"],
        },
        environ={},
    )
    assert again == settings


# ------------------------------------------------------------------------------------------
# Sharding (an Indexed Job): where the index comes from, and what the settings then hold

FOUR_TARGETS = "".join(
    f'[[targets]]\nregion = "{region}"\nproject_id = "{project}"\n'
    for region, project in [
        ("cn-north-4", "a"),
        ("cn-north-4", "b"),
        ("af-south-1", "c"),
        ("cn-east-3", "d"),
    ]
)


@pytest.mark.parametrize(
    ("flag", "env", "job", "expected"),
    [
        ("2", "1", "0", 2),
        (None, "1", "0", 1),
        (None, None, "3", 3),
        (None, " ", " ", 0),
        (None, None, None, 0),
    ],
)
def test_shard_index_sources(
    flag: str | None, env: str | None, job: str | None, expected: int
) -> None:
    """--shard-index beats OMS_CLEANUP_SHARD_INDEX beats JOB_COMPLETION_INDEX beats 0."""
    environ = {
        name: value
        for name, value in (("OMS_CLEANUP_SHARD_INDEX", env), ("JOB_COMPLETION_INDEX", job))
        if value is not None
    }
    flags = {**TARGET, "shard_count": "4", "shard_index": flag}
    assert load_settings(flags, environ=environ).shard_index == expected


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_of_the_config_cover_every_target_once(tmp_path: Path, count: int) -> None:
    """Loading the config once per index yields every configured target exactly once."""
    config = write(tmp_path / "c.toml", f"older_than = '1d'\nshard_count = {count}\n{FOUR_TARGETS}")
    shards = [
        load_settings({}, config_file=config, environ={"JOB_COMPLETION_INDEX": str(index)})
        for index in range(count)
    ]
    found = [target.project_id for shard in shards for target in shard.targets]
    assert sorted(found) == ["a", "b", "c", "d"]
    assert all(shard.shard_count == count for shard in shards)
    assert [shard.shard_index for shard in shards] == list(range(count))


def test_one_shard_keeps_the_configured_order(tmp_path: Path) -> None:
    """Without sharding the targets stay as configured (not re-sorted)."""
    config = write(tmp_path / "c.toml", f"older_than = '1d'\n{FOUR_TARGETS}")
    settings = load_settings({}, config_file=config, environ={})
    assert [target.project_id for target in settings.targets] == ["a", "b", "c", "d"]


def test_empty_shard_is_valid() -> None:
    """More shards than targets leaves some shards with nothing to do, which is not an error."""
    settings = load_settings({**TARGET, "shard_count": "3", "shard_index": "1"}, environ={})
    assert settings.targets == ()
    assert masked_settings(settings)["targets"] == []


@pytest.mark.parametrize(
    ("report", "index", "expected"),
    [
        ("r-{shard}.json", "2", "r-2.json"),
        ("r.json", "2", "r.json"),
        ("{shard}/r-{shard}.json", "0", "0/r-0.json"),
        ("r-{shards}.json", "1", "r-{shards}.json"),
    ],
)
def test_shard_placeholder_in_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: str, index: str, expected: str
) -> None:
    """{shard} in --report and --metrics-textfile becomes the shard index before checking."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "0").mkdir()
    textfile = report.replace(".json", ".prom")
    flags = {
        **TARGET,
        "shard_count": "3",
        "shard_index": index,
        "report": report,
        "metrics_textfile": textfile,
    }
    settings = load_settings(flags, environ={})
    assert settings.report == Path(expected)
    assert settings.metrics_textfile == Path(expected.replace(".json", ".prom"))
    assert masked_settings(settings)["report"] == expected


def test_masked_settings_show_shard_and_metrics() -> None:
    """The report's settings say which shard ran and where its metrics went."""
    flags = {**TARGET, "shard_count": "2", "shard_index": "1", "pushgateway": "http://gw:9091"}
    shown = masked_settings(load_settings(flags, environ={}))
    assert (shown["shard_index"], shown["shard_count"]) == (1, 2)
    assert shown["pushgateway"] == "http://gw:9091"
    assert shown["metrics_textfile"] is None
