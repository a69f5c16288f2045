"""Duration parsing and formatting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from worker.durations import MAX_DURATION, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("45m", timedelta(minutes=45)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("0s", timedelta()),
        ("250ms", timedelta(milliseconds=250)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        (
            "1w2d3h4m5s6ms",
            timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5, milliseconds=6),
        ),
        (" 7D ", timedelta(days=7)),
        ("1m5s", timedelta(minutes=1, seconds=5)),
        ("36525d", MAX_DURATION),
        ("5217w6d", timedelta(weeks=5217, days=6)),
        ("0000000000000000000000000001s", timedelta(seconds=1)),
    ],
)
def test_parse_accepts(text: str, expected: timedelta) -> None:
    """Each unit and combination parses to the exact duration."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("5x", "invalid duration '5x'"),
        ("5", "invalid duration"),
        ("s", "invalid duration"),
        ("-5s", "invalid duration"),
        ("1.5h", "invalid duration"),
        ("5 m", "invalid duration"),
        ("30m1h", "largest to smallest"),
        ("5m5m", "largest to smallest"),
        ("1h-30m", "invalid duration"),
        # Beyond the limit, and beyond what timedelta holds: an error, never an OverflowError.
        ("36525d1ms", "too long"),
        ("5218w", "too long"),
        ("1000000000d", "too long"),
        ("99999999999w", "'99999999999w' is too long \\(at most 36525d\\)"),
        ("1w" + "9" * 5000 + "d", "too long"),
    ],
)
def test_parse_rejects(text: str, fragment: str) -> None:
    """Malformed durations raise ValueError with a message saying what is wrong."""
    with pytest.raises(ValueError, match=fragment):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=30), "30d"),
        (timedelta(days=14), "2w"),
        (timedelta(days=400, hours=1), "400d1h"),
        (timedelta(hours=1, milliseconds=5), "1h5ms"),
        (timedelta(microseconds=10), "0s"),
    ],
)
def test_format(value: timedelta, expected: str) -> None:
    """Formatting gives the shortest spelling, largest unit first."""
    assert format_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        timedelta(seconds=1),
        timedelta(days=400, seconds=59),
        timedelta(milliseconds=1001),
        timedelta(weeks=3),
    ],
)
def test_format_round_trips(value: timedelta) -> None:
    """What format_duration writes, parse_duration reads back unchanged."""
    assert parse_duration(format_duration(value)) == value


def test_format_rejects_negative() -> None:
    """A negative duration has no spelling and is refused."""
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


def test_too_long_message_stays_short() -> None:
    """Thousands of digits are shortened in the message, which stays one readable line."""
    with pytest.raises(ValueError, match="too long") as error:
        parse_duration("9" * 5000 + "s")
    assert len(str(error.value)) < 100
