"""Structured logging: JSON lines, bound context, level filter, redaction, reset, console."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from worker import logs


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    """Every test starts and ends with default structlog and no context or secrets."""
    logs.reset()
    yield
    logs.reset()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _json_logging(level: str = "info") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(fmt="json", level=level, stream=stream)
    return stream


def test_json_lines_parse_with_timestamp_level_and_event() -> None:
    """Each event is one JSON object on its own line with ISO UTC time, level and event name."""
    stream = _json_logging()
    log = structlog.get_logger()
    log.info("task_deleted", task_id=42)
    log.warning("throttled", retry_after=1.5)
    first, second = _lines(stream)
    assert (first["event"], first["level"], first["task_id"]) == ("task_deleted", "info", 42)
    assert (second["event"], second["level"]) == ("throttled", "warning")
    stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert first["timestamp"].endswith("Z")
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)


def test_run_and_target_are_carried_once_bound() -> None:
    """After bind_run/bind_target every event carries run_id and target."""
    stream = _json_logging()
    log = structlog.get_logger()
    log.info("before")
    logs.bind_run("run-123")
    log.info("run_started")
    logs.bind_target("prod-bj4")
    log.info("listing")
    before, started, listing = _lines(stream)
    assert "run_id" not in before
    assert started["run_id"] == "run-123"
    assert "target" not in started
    assert (listing["run_id"], listing["target"]) == ("run-123", "prod-bj4")


async def test_targets_bound_in_sibling_tasks_do_not_leak() -> None:
    """Each asyncio task sees its own target and the run id bound before it started."""
    stream = _json_logging()
    logs.bind_run("run-9")
    log = structlog.get_logger()

    async def work(label: str) -> None:
        logs.bind_target(label)
        await asyncio.sleep(0)
        log.info("deleted", label_seen=label)

    await asyncio.gather(work("a"), work("b"))
    log.info("finished")
    events = _lines(stream)
    for event in events[:2]:
        assert event["target"] == event["label_seen"]
        assert event["run_id"] == "run-9"
    assert "target" not in events[2]


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", ["d", "i", "w", "e"]),
        ("INFO", ["i", "w", "e"]),
        ("warning", ["w", "e"]),
        ("error", ["e"]),
    ],
)
def test_level_filtering(level: str, expected: list[str]) -> None:
    """Events below the configured level are dropped; level names are case-insensitive."""
    stream = _json_logging(level)
    log = structlog.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [e["event"] for e in _lines(stream)] == expected


@pytest.mark.parametrize(("fmt", "level"), [("json", "loud"), ("xml", "info")])
def test_bad_configuration_is_refused(fmt: str, level: str) -> None:
    """An unknown level or format is a ValueError, not a silent default."""
    with pytest.raises(ValueError, match="unknown"):
        logs.configure(fmt=fmt, level=level, stream=io.StringIO())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("sk", True),
        ("SK", True),
        ("secret_key", True),
        ("secretKey", True),
        ("x_auth_token", True),
        ("security_token", True),
        ("Authorization", True),
        ("signature", True),
        ("password", True),
        ("db_passwd", True),
        ("credentials", True),
        ("task", False),
        ("task_id", False),
        ("ak", False),
        ("access_key", False),
        ("desk", False),
        ("project_id", False),
        ("request_id", False),
    ],
)
def test_is_secret_key(key: str, secret: bool) -> None:
    """Secret-looking key names are recognised; `task` is not mistaken for `sk`."""
    assert logs.is_secret_key(key) is secret


def test_redaction_by_key_name() -> None:
    """Values under secret-named keys, nested ones too, are logged as ***."""
    stream = _json_logging()
    structlog.get_logger().info(
        "signed",
        sk="SKvalue",
        authorization="SDK-HMAC-SHA256 Access=AK, Signature=abc",
        headers={"X-Auth-Token": "tok", "Host": "oms"},
        task_id=7,
    )
    (event,) = _lines(stream)
    assert event["sk"] == "***"
    assert event["authorization"] == "***"
    assert event["headers"] == {"X-Auth-Token": "***", "Host": "oms"}
    assert event["task_id"] == 7
    assert "SKvalue" not in stream.getvalue()


def test_redaction_of_registered_values_everywhere() -> None:
    """A registered secret is replaced inside any string: event, values, lists, reprs."""
    stream = _json_logging()
    logs.register_secrets(["SKtestSKtest0001", "", None])

    class Holder:
        def __repr__(self) -> str:
            return "Holder(SKtestSKtest0001)"

    structlog.get_logger().warning(
        "bad SKtestSKtest0001 in event",
        detail="prefix-SKtestSKtest0001-suffix",
        items=["SKtestSKtest0001", 3],
        obj=Holder(),
    )
    text = stream.getvalue()
    assert "SKtestSKtest0001" not in text
    (event,) = _lines(stream)
    assert event["event"] == "bad *** in event"
    assert event["detail"] == "prefix-***-suffix"
    assert event["items"] == ["***", 3]
    assert event["obj"] == "Holder(***)"


def test_redaction_reaches_tracebacks() -> None:
    """A secret inside an exception message is scrubbed from the rendered traceback."""
    stream = _json_logging()
    logs.register_secrets(["tok-SECRET-123"])

    def fail() -> None:
        raise RuntimeError("server echoed tok-SECRET-123")

    try:
        fail()
    except RuntimeError:
        structlog.get_logger().exception("request_failed")
    (event,) = _lines(stream)
    assert "RuntimeError: server echoed ***" in event["exception"]
    assert "tok-SECRET-123" not in stream.getvalue()


def test_longer_secret_replaced_whole() -> None:
    """When one secret contains another, the longer one is replaced as a unit."""
    assert logs.redact("x") == "x"
    logs.register_secrets(["abcd", "abcdefgh"])
    assert logs.redact("key=abcdefgh") == "key=***"


def test_reset_restores_defaults() -> None:
    """reset() drops our configuration, the bound context and the registered secrets."""
    stream = _json_logging()
    logs.bind_run("run-1")
    logs.register_secrets(["hunter2hunter2"])
    logs.reset()
    assert structlog.contextvars.get_contextvars() == {}
    assert logs.redact("hunter2hunter2") == "hunter2hunter2"
    assert structlog.is_configured() is False
    structlog.get_logger().info("after_reset")
    assert stream.getvalue() == ""


def test_console_format_is_readable_and_redacted() -> None:
    """The console renderer prints the event and key=value pairs, not JSON, secrets masked."""
    stream = _Tty()
    logs.configure(fmt="console", level="info", stream=stream)
    logs.bind_target("prod")
    structlog.get_logger().info("task_deleted", task_id=42, sk="SKvalue")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())
    assert "task_deleted" in plain
    assert "task_id=42" in plain
    assert "target=prod" in plain
    assert "SKvalue" not in plain
    assert not plain.lstrip().startswith("{")


@pytest.mark.parametrize(("stream", "expected"), [(_Tty(), "console"), (io.StringIO(), "json")])
def test_default_format(stream: io.StringIO, expected: str) -> None:
    """A terminal gets the console format; files and pipes get JSON lines."""
    assert logs.default_format(stream) == expected
