"""The task model: status names, start times, tolerance of unknown keys, strict types."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from worker.oms.models import Task, TaskPage, TaskStatus


@pytest.mark.parametrize(
    ("code", "status", "deletable"),
    [
        (0, TaskStatus.NOT_STARTED, False),
        (1, TaskStatus.WAITING, False),
        (2, TaskStatus.MIGRATING, False),
        (3, TaskStatus.PAUSED, True),
        (4, TaskStatus.FAILED, True),
        (5, TaskStatus.SUCCEEDED, True),
        (6, TaskStatus.RETRYING, False),
        (7, TaskStatus.PAUSING, False),
        (8, TaskStatus.UNKNOWN, False),
        (-1, TaskStatus.UNKNOWN, False),
        (99, TaskStatus.UNKNOWN, False),
    ],
)
def test_status_codes_and_deletability(code: int, status: TaskStatus, deletable: bool) -> None:
    """Every reference code maps to its name; any other code is UNKNOWN and never deletable."""
    task = Task.model_validate({"id": 1, "status": code})
    assert task.status is status
    assert task.status_code == code
    assert task.status.deletable is deletable


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("succeeded", TaskStatus.SUCCEEDED),
        ("FAILED", TaskStatus.FAILED),
        (" paused ", TaskStatus.PAUSED),
        ("not-started", TaskStatus.NOT_STARTED),
        ("not_started", TaskStatus.NOT_STARTED),
        ("pausing", TaskStatus.PAUSING),
    ],
)
def test_status_from_name(name: str, status: TaskStatus) -> None:
    """User-facing names parse case- and separator-insensitively."""
    assert TaskStatus.from_name(name) is status
    assert TaskStatus.from_name(status.label) is status


@pytest.mark.parametrize("name", ["unknown", "done", "", "5"])
def test_status_from_name_rejects_unselectable(name: str) -> None:
    """Unknown names and the UNKNOWN placeholder are refused."""
    with pytest.raises(ValueError, match="state"):
        TaskStatus.from_name(name)


@pytest.mark.parametrize(
    ("start_time", "expected"),
    [
        (1_700_000_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (1_700_000_000_123, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        (0, None),
        (-5, None),
        (None, None),
        # Integers no datetime can hold are an unknown age, not a broken task.
        (253_402_300_800_000, None),  # year 10000
        (2**63 - 1, None),  # INT64_MAX
        (10**20, None),
    ],
)
def test_start_time_is_epoch_milliseconds_in_utc(
    start_time: int | None, expected: datetime | None
) -> None:
    """start_time ms becomes an aware UTC datetime; 0, negative and null mean none."""
    task = Task.model_validate({"id": 1, "status": 5, "start_time": start_time})
    assert task.start_time == expected
    if task.start_time is not None:
        assert task.start_time.utcoffset() is not None


def test_missing_start_time_is_none() -> None:
    """A task without start_time has no start time."""
    assert Task.model_validate({"id": 1, "status": 5}).start_time is None


def test_unknown_keys_are_ignored() -> None:
    """The ~40 keys the worker does not use are dropped, not rejected."""
    task = Task.model_validate_json(
        b'{"id": 7, "status": 5, "name": "n", "progress": 0.5, "src_node": {"bucket": "b"},'
        b' "error_reason": {"error_code": "E", "error_msg": "m"}, "bandwidth_policy": []}'
    )
    assert (task.id, task.name) == (7, "n")
    assert not hasattr(task, "progress")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "7"}, "id"),
        ({"id": 7.0}, "id"),
        ({"id": True}, "id"),
        ({"id": 0}, "id"),
        ({"id": -1}, "id"),
        ({"status": "5"}, "status"),
        ({"status": 5.0}, "status"),
        ({"status": None}, "status"),
        ({"name": 5}, "name"),
        ({"start_time": "1700000000000"}, "start_time"),
        ({"start_time": 1.7e12}, "start_time"),
        ({"start_time": True}, "start_time"),
        ({"group_id": 3}, "group_id"),
    ],
)
def test_wrong_types_are_rejected(changes: dict[str, Any], field: str) -> None:
    """Values of the wrong type (or out of range) fail validation naming the field."""
    with pytest.raises(ValidationError) as caught:
        Task.model_validate({"id": 7, "status": 5, **changes})
    assert caught.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("missing", ["id", "status"])
def test_id_and_status_are_required(missing: str) -> None:
    """A task without id or status is not a task."""
    data = {"id": 7, "status": 5}
    del data[missing]
    with pytest.raises(ValidationError):
        Task.model_validate(data)


def test_task_is_frozen() -> None:
    """Tasks are immutable values."""
    task = Task.model_validate({"id": 7, "status": 5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("page", "valid"),
    [
        ({"tasks": [], "count": 0}, True),
        ({"tasks": [{"id": 1, "status": 5}], "count": 250}, True),
        ({"tasks": [], "count": -1}, False),
        ({"tasks": [], "count": "0"}, False),
        ({"tasks": None, "count": 0}, False),
        ({"count": 0}, False),
        ({"tasks": []}, False),
    ],
)
def test_task_page_shape(page: dict[str, Any], valid: bool) -> None:
    """A page is a list of tasks and a non-negative integer count."""
    if valid:
        parsed = TaskPage.model_validate(page)
        assert parsed.count == page["count"]
        assert len(parsed.tasks) == len(page["tasks"])
    else:
        with pytest.raises(ValidationError):
            TaskPage.model_validate(page)


@pytest.mark.parametrize(
    ("entry", "task_id", "problem"),
    [
        ({"id": 7, "status": 5, "name": None}, 7, "name: Input should be a valid string"),
        ({"id": 7, "status": 5, "name": 12}, 7, "name: Input should be a valid string"),
        ({"id": 7, "status": "5"}, 7, "status: Input should be a valid integer"),
        ({"id": 7}, 7, "status: Field required"),
        ({"id": 7, "status": 5, "start_time": 1.7e12}, 7, "start_time"),
        ({"id": "7", "status": 5}, None, "id: Input should be a valid integer"),
        ({"id": True, "status": 5}, None, "id"),
        ({"id": -3, "status": 5}, None, "id: Value error, task id must be positive"),
        ({"status": 5}, None, "id: Field required"),
        (7, None, "Input should be a dictionary"),
        (None, None, "Input should be a dictionary"),
        ([1, 2], None, "Input should be a dictionary"),
    ],
)
def test_a_task_that_cannot_be_read_is_set_aside(
    entry: Any, task_id: int | None, problem: str
) -> None:
    """One odd entry becomes a MalformedTask (id when usable); its sound neighbours are read."""
    page = TaskPage.model_validate(
        {"tasks": [{"id": 1, "status": 5}, entry, {"id": 2, "status": 4}], "count": 3}
    )
    assert [task.id for task in page.tasks] == [1, 2]
    (malformed,) = page.malformed
    assert malformed.id == task_id
    assert problem in malformed.problem


@pytest.mark.parametrize(
    "envelope",
    [
        {"tasks": {"id": 1, "status": 5}, "count": 1},
        {"tasks": None, "count": 0},
        {"count": 0},
        {"tasks": [], "count": "0"},
        {"tasks": [], "count": -1},
        {"tasks": []},
        [],
        None,
    ],
)
def test_a_broken_envelope_is_still_a_broken_page(envelope: Any) -> None:
    """No tasks array, or no sound count: the page itself is refused."""
    with pytest.raises(ValidationError):
        TaskPage.model_validate(envelope)
