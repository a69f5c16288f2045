"""What happened to a selected task, and what a delete's answer means for it next.

`decide` is the one place that chooses between done, requeue, failed and fatal. It is pure:
the scheduler passes the error, the attempt number and the time, and carries out the answer.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from worker.oms.errors import (
    AuthFailed,
    OmsError,
    PermissionDenied,
    TaskNotFound,
    TaskRunning,
    Throttled,
)

# Growing delays for a task that is still running; past this they stop growing.
MAX_REQUEUE_DELAY = 300.0


class Outcome(enum.StrEnum):
    """The final outcome of one selected task, as written in the report."""

    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    STILL_RUNNING = "still_running"
    FAILED = "failed"
    WOULD_DELETE = "would_delete"
    NOT_ATTEMPTED = "not_attempted"
    # Judged again before a delete (see freshness.py), the policy no longer selects the task as
    # it is now (a person retried or renamed it, say): not deleted.
    CHANGED = "changed"


# Outcomes that leave nothing the policy wants gone: a run whose every task ends in one of
# these (and that saw every task) exits 0. A `changed` task is no longer wanted gone.
DONE_OUTCOMES: frozenset[Outcome] = frozenset(
    {Outcome.DELETED, Outcome.ALREADY_GONE, Outcome.CHANGED}
)


@dataclass(frozen=True, slots=True)
class Finish:
    """The task is done with this outcome."""

    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Requeue:
    """Try the task again after `delay` seconds; other tasks go on meanwhile."""

    delay: float


@dataclass(frozen=True, slots=True)
class Fatal:
    """The run cannot go on (credentials refused or lacking permission)."""

    error: OmsError


Action = Finish | Requeue | Fatal


def requeue_delay(attempt: int, *, base: float, rng: random.Random) -> float:
    """Delay before delete attempt `attempt + 1`: doubling from `base`, jittered to 50-100 %.

    Jitter keeps a batch of tasks that were refused together from coming back together.
    """
    grown = min(MAX_REQUEUE_DELAY, base * 2.0 ** max(0, attempt - 1))
    return max(base, grown) * rng.uniform(0.5, 1.0)


def decide(
    error: OmsError,
    *,
    attempt: int,
    max_attempts: int,
    requeue_base: float,
    now: float,
    deadline: float,
    rng: random.Random,
) -> Action:
    """What to do with a task whose delete attempt number `attempt` raised `error`."""
    if isinstance(error, AuthFailed | PermissionDenied):
        return Fatal(error)
    if isinstance(error, TaskNotFound):
        return Finish(Outcome.ALREADY_GONE)
    if isinstance(error, TaskRunning):
        if attempt >= max_attempts:
            return Finish(Outcome.STILL_RUNNING)
        delay = requeue_delay(attempt, base=requeue_base, rng=rng)
        if now + delay >= deadline:
            return Finish(Outcome.STILL_RUNNING)
        return Requeue(delay)
    if isinstance(error, Throttled):
        # Still throttled after the client's retries: the target's limiter has slowed down by
        # now, so the task goes back in line instead of failing for the server's busy minute.
        if attempt >= max_attempts:
            return Finish(Outcome.FAILED)
        delay = error.retry_after or requeue_delay(attempt, base=requeue_base, rng=rng)
        return Finish(Outcome.FAILED) if now + delay >= deadline else Requeue(delay)
    # The client has already retried what is transient; what reaches here stays failed.
    return Finish(Outcome.FAILED)
