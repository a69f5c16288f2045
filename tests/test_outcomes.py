"""What each delete answer means for the task: the decision table."""

from __future__ import annotations

import random

import pytest

from worker.oms.errors import (
    AuthFailed,
    ErrorInfo,
    InvalidRequest,
    MalformedResponse,
    OmsError,
    PermissionDenied,
    ServerError,
    TaskNotFound,
    TaskRunning,
    Throttled,
    TransportError,
)
from worker.outcomes import (
    MAX_REQUEUE_DELAY,
    Action,
    Fatal,
    Finish,
    Outcome,
    Requeue,
    decide,
    requeue_delay,
)

INFO = ErrorInfo(method="DELETE", path="/v2/p/tasks/1", http_status=400)


def _decide(
    error: OmsError, *, attempt: int = 1, now: float = 0.0, deadline: float = 1e9
) -> Action:
    return decide(
        error,
        attempt=attempt,
        max_attempts=5,
        requeue_base=10.0,
        now=now,
        deadline=deadline,
        rng=random.Random(1),
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TaskNotFound(INFO), Finish(Outcome.ALREADY_GONE)),
        (InvalidRequest(INFO), Finish(Outcome.FAILED)),
        (MalformedResponse(INFO), Finish(Outcome.FAILED)),
        (ServerError(INFO), Finish(Outcome.FAILED)),
        (TransportError(INFO), Finish(Outcome.FAILED)),
    ],
)
def test_final_answers(error: OmsError, expected: Finish) -> None:
    """Answers that settle a task map to their outcome."""
    assert _decide(error) == expected


@pytest.mark.parametrize("error", [AuthFailed(INFO), PermissionDenied(INFO)])
def test_credential_errors_are_fatal(error: OmsError) -> None:
    """Refused credentials end the run instead of failing task after task."""
    action = _decide(error)
    assert isinstance(action, Fatal)
    assert action.error is error


def test_running_task_is_requeued_with_delay() -> None:
    """OMS.0063 sends the task back with a delay within the jitter band of the base."""
    action = _decide(TaskRunning(INFO), attempt=1)
    assert isinstance(action, Requeue)
    assert 5.0 <= action.delay <= 10.0


@pytest.mark.parametrize(
    ("attempt", "deadline", "expected"),
    [
        (5, 1e9, Finish(Outcome.STILL_RUNNING)),  # attempts used up
        (6, 1e9, Finish(Outcome.STILL_RUNNING)),
        (1, 3.0, Finish(Outcome.STILL_RUNNING)),  # the retry would land past the deadline
    ],
)
def test_running_task_gives_up(attempt: int, deadline: float, expected: Finish) -> None:
    """A task still running when attempts or time run out is reported still_running."""
    assert _decide(TaskRunning(INFO), attempt=attempt, deadline=deadline) == expected


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [
        (1, 5.0, 10.0),
        (2, 10.0, 20.0),
        (3, 20.0, 40.0),
        (30, MAX_REQUEUE_DELAY / 2, MAX_REQUEUE_DELAY),
    ],
)
def test_requeue_delay_grows_and_is_capped(attempt: int, low: float, high: float) -> None:
    """Delays double per attempt, carry 50-100 % jitter and stop growing at the cap."""
    delays = [requeue_delay(attempt, base=10.0, rng=random.Random(seed)) for seed in range(50)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("retry_after", "attempt", "deadline", "expected"),
    [
        (7.0, 1, 1e9, Requeue(7.0)),  # the gateway's Retry-After wins
        (None, 5, 1e9, Finish(Outcome.FAILED)),  # attempts used up
        (7.0, 1, 5.0, Finish(Outcome.FAILED)),  # would come back after the deadline
    ],
)
def test_throttled_after_client_retries(
    retry_after: float | None, attempt: int, deadline: float, expected: Action
) -> None:
    """A 429 left after the client's retries requeues the task, within attempts and time."""
    info = ErrorInfo(method="DELETE", path="/v2/p/tasks/1", http_status=429)
    error = Throttled(info, retry_after=retry_after)
    assert _decide(error, attempt=attempt, deadline=deadline) == expected


def test_throttled_without_retry_after_uses_the_requeue_delay() -> None:
    """Without Retry-After the requeue delay is the jittered growing one."""
    action = _decide(Throttled(INFO), attempt=1)
    assert isinstance(action, Requeue)
    assert 5.0 <= action.delay <= 10.0
