"""RetryPolicy.delay: capped exponential backoff with full jitter, and Retry-After."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from worker.oms.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=4.0, max_retry_after=30.0)


class _Top(random.Random):
    """Draws the top of every jitter range, exposing the ceiling the policy computed."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _Bottom(random.Random):
    """Draws the bottom of every jitter range."""

    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (60, 4.0), (10_000, 4.0)],
)
def test_backoff_ceiling_doubles_then_caps(attempt: int, ceiling: float) -> None:
    """The jitter range is [0, min(max_delay, base * 2**(attempt-1))], finite for any attempt."""
    assert POLICY.delay(attempt, rng=_Top(), retry_after=None) == ceiling
    assert POLICY.delay(attempt, rng=_Bottom(), retry_after=None) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 42, 2026])
def test_seeded_jitter_is_reproducible_and_bounded(seed: int) -> None:
    """The same seed gives the same delays; every delay lies in its range."""
    first = [POLICY.delay(n, rng=random.Random(seed), retry_after=None) for n in range(1, 8)]
    again = [POLICY.delay(n, rng=random.Random(seed), retry_after=None) for n in range(1, 8)]
    assert first == again
    tops = [POLICY.delay(n, rng=_Top(), retry_after=None) for n in range(1, 8)]
    assert all(0.0 <= d <= top for d, top in zip(first, tops, strict=True))


def test_jitter_spreads_delays() -> None:
    """Full jitter: many draws for one attempt cover the range instead of repeating one value."""
    rng = random.Random(5)
    draws = [POLICY.delay(4, rng=rng, retry_after=None) for _ in range(200)]
    assert min(draws) < 0.5
    assert max(draws) > 3.5
    assert len(set(draws)) > 150


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (0.0, 0.0),
        (7.0, 7.0),
        (30.0, 30.0),
        (3600.0, 30.0),
        (math.inf, 30.0),
        (-2.0, 0.0),
    ],
)
def test_retry_after_is_honoured_up_to_the_cap(retry_after: float, expected: float) -> None:
    """A server's Retry-After replaces the backoff, never beyond max_retry_after."""
    assert POLICY.delay(3, rng=_Top(), retry_after=retry_after) == expected


def test_nan_retry_after_falls_back_to_backoff() -> None:
    """A NaN Retry-After is ignored in favour of the policy's own backoff."""
    assert POLICY.delay(2, rng=_Top(), retry_after=math.nan) == 1.0


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "retry"),
    [(1, 1, False), (3, 1, True), (3, 2, True), (3, 3, False), (3, 4, False)],
)
def test_should_retry_counts_sends_including_the_first(
    max_attempts: int, attempt: int, retry: bool
) -> None:
    """max_attempts bounds the total number of sends."""
    assert RetryPolicy(max_attempts=max_attempts).should_retry(attempt) is retry


def test_attempts_are_one_based() -> None:
    """Attempt 0 is a caller bug."""
    with pytest.raises(ValueError, match="1-based"):
        POLICY.delay(0, rng=random.Random(0), retry_after=None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"base_delay": -1.0}, "base_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"max_retry_after": math.nan}, "max_retry_after"),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """Non-positive attempts and negative or non-finite delays are configuration errors."""
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)
