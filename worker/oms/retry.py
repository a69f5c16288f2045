"""How long to wait before sending a failed request again: capped exponential backoff."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from worker.oms.errors import MAX_RETRY_AFTER

# 2**64 times any sane base delay is far past every cap; bounding the exponent keeps the
# arithmetic finite however many attempts a caller asks about.
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry budget and delays for transient failures (5xx, transport errors, 429).

    `max_attempts` counts sends, the first included: 1 means never retry.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = MAX_RETRY_AFTER

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0")

    def should_retry(self, attempt: int) -> bool:
        """Whether another send is allowed after `attempt` (1-based) sends have failed."""
        return attempt < self.max_attempts

    def delay(self, attempt: int, *, rng: random.Random, retry_after: float | None) -> float:
        """Seconds to wait after the `attempt`-th send (1-based) failed.

        A server's Retry-After is obeyed as given (it knows its own window), but never
        beyond `max_retry_after`, so a hostile or buggy value cannot stall a run. Otherwise
        full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt-1))], which
        spreads parallel workers that failed together instead of retrying in lock-step.
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        if retry_after is not None and not math.isnan(retry_after):
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
        return rng.uniform(0.0, ceiling)
