"""Durations as people type them ("90s", "45m", "12h", "30d", "2w", "1h30m") and back (pure)."""

from __future__ import annotations

import re
from datetime import timedelta

# Largest unit first: `format_duration` relies on this order to produce the shortest spelling.
UNITS: dict[str, timedelta] = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    # Milliseconds exist for tests and demos that need short delays; they read oddly in production.
    "ms": timedelta(milliseconds=1),
}

# Far beyond any age, deadline or delay this tool deals in, and far inside what timedelta and
# datetime arithmetic hold (timedelta ends near 2.7 million years, datetime at year 9999).
MAX_DURATION = timedelta(days=36525)

_PART = re.compile(r"(\d+)(ms|[wdhms])")
_WHOLE = re.compile(r"(?:\d+(?:ms|[wdhms]))+")
_MILLISECOND = timedelta(milliseconds=1)
# More digits than the largest duration has in its smallest unit is always too long.
_MAX_DIGITS = len(str(MAX_DURATION // _MILLISECOND))
_HINT = "expected a whole number followed by a unit (s, m, h, d, w), e.g. 90s, 45m, 12h, 30d, 2w"


def parse_duration(text: str) -> timedelta:
    """Parse a non-negative duration such as `30d` or `1h30m`; raise ValueError saying why not.

    Each unit may appear at most once and in decreasing order (`1h30m`, not `30m1h`), so a typo
    like `5m5m` is an error rather than a surprise. Nothing above MAX_DURATION is accepted.
    """
    compact = text.strip().lower()
    if not compact:
        raise ValueError(f"empty duration; {_HINT}")
    if _WHOLE.fullmatch(compact) is None:
        raise ValueError(f"invalid duration {text!r}; {_HINT}")
    order = list(UNITS)
    # Summed as whole milliseconds (every unit is one): Python integers cannot overflow, so a
    # huge count is measured against the limit instead of crashing timedelta.
    millis = 0
    last_rank = -1
    for number, unit in _PART.findall(compact):
        rank = order.index(unit)
        if rank <= last_rank:
            raise ValueError(f"invalid duration {text!r}: units must go from largest to smallest")
        last_rank = rank
        digits = number.lstrip("0")
        # Also spares int() the thousands of digits it refuses with a message about Python.
        if len(digits) > _MAX_DIGITS:
            raise _too_long(text)
        millis += int(digits or "0") * (UNITS[unit] // _MILLISECOND)
    if millis > MAX_DURATION // _MILLISECOND:
        raise _too_long(text)
    return timedelta(milliseconds=millis)


def _too_long(text: str) -> ValueError:
    shown = text.strip()
    # The error is one line for a person; thousands of digits would bury it.
    shown = shown if len(shown) <= 32 else f"{shown[:14]}...{shown[-14:]}"
    return ValueError(f"duration {shown!r} is too long (at most {format_duration(MAX_DURATION)})")


def format_duration(value: timedelta) -> str:
    """The shortest spelling of a non-negative duration that `parse_duration` reads back exactly.

    Sub-millisecond remainders are dropped: nothing in this tool is that precise.
    """
    if value < timedelta():
        raise ValueError("negative durations have no spelling")
    week = UNITS["w"]
    if value and not value % week:
        return f"{value // week}w"
    remaining = value
    parts: list[str] = []
    # Weeks only for whole weeks: "30d" reads better than "4w2d".
    for unit, size in list(UNITS.items())[1:]:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
