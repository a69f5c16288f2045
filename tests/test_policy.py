"""The selection policy: which listed tasks a run may delete, and why others are kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from worker.oms.models import Task, TaskStatus
from worker.policy import Policy, SkipReason, select
from worker.settings import load_settings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
FINISHED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED})


def task(
    *,
    id: int = 7,
    status: int = 5,
    age: timedelta | None = 40 * DAY,
    name: str = "nightly-copy",
    group_id: str = "",
) -> Task:
    """A task as the API would list it, `age` before NOW."""
    start = None if age is None else int((NOW - age).timestamp() * 1000)
    return Task.model_validate(
        {"id": id, "name": name, "status": status, "start_time": start, "group_id": group_id}
    )


def at(start_time: int) -> Task:
    """A finished task whose raw start_time is `start_time`."""
    return Task.model_validate({"id": 7, "name": "n", "status": 5, "start_time": start_time})


def policy(**overrides: Any) -> Policy:
    """A policy for finished tasks older than 30 days, with overrides."""
    values: dict[str, Any] = {"states": FINISHED, "older_than": 30 * DAY}
    values.update(overrides)
    return Policy(**values)


SELECTION_TABLE = [
    # (case, task, policy, expected)
    ("succeeded and old", task(), policy(), None),
    ("failed and old", task(status=4), policy(), None),
    ("paused not in default states", task(status=3), policy(), SkipReason.STATE),
    (
        "paused when named",
        task(status=3),
        policy(states=frozenset({TaskStatus.PAUSED})),
        None,
    ),
    (
        "protected wins over everything",
        task(id=9),
        policy(protect_ids=frozenset({9})),
        SkipReason.PROTECTED,
    ),
    (
        "protected even when otherwise unknown",
        task(id=9, status=99, age=None),
        policy(protect_ids=frozenset({9})),
        SkipReason.PROTECTED,
    ),
    ("other id not protected", task(id=8), policy(protect_ids=frozenset({9})), None),
    ("unknown status code", task(status=99), policy(), SkipReason.UNKNOWN_STATE),
    ("negative status code", task(status=-3), policy(), SkipReason.UNKNOWN_STATE),
    ("migrating", task(status=2), policy(), SkipReason.ACTIVE_STATE),
    ("waiting", task(status=1), policy(), SkipReason.ACTIVE_STATE),
    ("retrying", task(status=6), policy(), SkipReason.ACTIVE_STATE),
    ("pausing", task(status=7), policy(), SkipReason.ACTIVE_STATE),
    ("not started", task(status=0), policy(), SkipReason.ACTIVE_STATE),
    (
        "migrating with stop_running and named",
        task(status=2),
        policy(states=frozenset({TaskStatus.MIGRATING}), stop_running=True),
        None,
    ),
    (
        "waiting with stop_running but not named",
        task(status=1),
        policy(states=frozenset({TaskStatus.MIGRATING}), stop_running=True),
        SkipReason.ACTIVE_STATE,
    ),
    ("state before age", task(status=3, age=None), policy(), SkipReason.STATE),
    ("no start time", task(age=None), policy(), SkipReason.AGE_UNKNOWN),
    (
        "age unknown before name",
        task(age=None, name="x"),
        policy(name_include=("y",)),
        SkipReason.AGE_UNKNOWN,
    ),
    # Start times no real task can have: an unknown age, however old they make it look.
    ("seconds read as milliseconds", at(1_764_000_000), policy(), SkipReason.AGE_UNKNOWN),
    ("before 2015", at(1_420_070_399_999), policy(), SkipReason.AGE_UNKNOWN),
    ("2015-01-01 exactly", at(1_420_070_400_000), policy(), None),
    (
        "a day ahead exactly",
        task(age=-DAY),
        policy(older_than=None, started_before=NOW + 2 * DAY),
        None,
    ),
    (
        "more than a day ahead",
        task(age=-DAY - timedelta(milliseconds=1)),
        policy(older_than=None, started_before=NOW + 3 * DAY),
        SkipReason.AGE_UNKNOWN,
    ),
    ("year 9999", at(253_402_300_799_000), policy(), SkipReason.AGE_UNKNOWN),
    ("year 10000 (no datetime)", at(253_402_300_800_000), policy(), SkipReason.AGE_UNKNOWN),
    ("INT64_MAX", at(2**63 - 1), policy(), SkipReason.AGE_UNKNOWN),
    ("younger than older_than", task(age=29 * DAY), policy(), SkipReason.TOO_YOUNG),
    ("exactly older_than", task(age=30 * DAY), policy(), None),
    (
        "a millisecond short",
        task(age=30 * DAY - timedelta(milliseconds=1)),
        policy(),
        SkipReason.TOO_YOUNG,
    ),
    ("older_than 0s takes any age", task(age=timedelta()), policy(older_than=timedelta()), None),
    (
        "start time in the future",
        task(age=-DAY),
        policy(older_than=timedelta()),
        SkipReason.TOO_YOUNG,
    ),
    (
        "started before the cutoff",
        task(age=10 * DAY),
        policy(older_than=None, started_before=NOW - 5 * DAY),
        None,
    ),
    (
        "started at the cutoff",
        task(age=5 * DAY),
        policy(older_than=None, started_before=NOW - 5 * DAY),
        SkipReason.TOO_YOUNG,
    ),
    (
        "started after the cutoff",
        task(age=DAY),
        policy(older_than=None, started_before=NOW - 5 * DAY),
        SkipReason.TOO_YOUNG,
    ),
    (
        "both age criteria must hold: old enough but after the cutoff",
        task(age=40 * DAY),
        policy(started_before=NOW - 50 * DAY),
        SkipReason.TOO_YOUNG,
    ),
    (
        "both age criteria hold",
        task(age=60 * DAY),
        policy(started_before=NOW - 50 * DAY),
        None,
    ),
    (
        "too young before name",
        task(age=DAY, name="x"),
        policy(name_include=("y",)),
        SkipReason.TOO_YOUNG,
    ),
    ("include matches", task(name="nightly-copy"), policy(name_include=("nightly-*",)), None),
    (
        "include is case-sensitive",
        task(name="Nightly-copy"),
        policy(name_include=("nightly-*",)),
        SkipReason.NOT_INCLUDED,
    ),
    ("one of several includes", task(name="b-1"), policy(name_include=("a-*", "b-?")), None),
    (
        "no include matches",
        task(name="weekly"),
        policy(name_include=("nightly-*",)),
        SkipReason.NOT_INCLUDED,
    ),
    (
        "exclude matches",
        task(name="keep-me"),
        policy(name_exclude=("keep-*",)),
        SkipReason.EXCLUDED_NAME,
    ),
    (
        "exclude wins over include",
        task(name="nightly-keep"),
        policy(name_include=("nightly-*",), name_exclude=("*-keep",)),
        SkipReason.EXCLUDED_NAME,
    ),
    ("exclude not matching", task(name="nightly"), policy(name_exclude=("keep-*",)), None),
    ("glob character class", task(name="copy-7"), policy(name_include=("copy-[0-9]",)), None),
    ("name with slash and space", task(name="a b/c"), policy(name_include=("a b/*",)), None),
    (
        "empty name against include",
        task(name=""),
        policy(name_include=("*x*",)),
        SkipReason.NOT_INCLUDED,
    ),
    ("empty name matches star", task(name=""), policy(name_include=("*",)), None),
    ("group matches", task(group_id="g1"), policy(group_id="g1"), None),
    ("other group", task(group_id="g2"), policy(group_id="g1"), SkipReason.OTHER_GROUP),
    (
        "no group when one is asked",
        task(group_id=""),
        policy(group_id="g1"),
        SkipReason.OTHER_GROUP,
    ),
    ("group not asked", task(group_id="g2"), policy(), None),
    (
        "name before group",
        task(name="x", group_id="g2"),
        policy(name_include=("y",), group_id="g1"),
        SkipReason.NOT_INCLUDED,
    ),
]


@pytest.mark.parametrize(
    ("case", "listed", "rules", "expected"),
    SELECTION_TABLE,
    ids=[row[0] for row in SELECTION_TABLE],
)
def test_select(case: str, listed: Task, rules: Policy, expected: SkipReason | None) -> None:
    """Each row: the policy selects the task (None) or keeps it for the stated reason."""
    assert select(listed, policy=rules, now=NOW) == expected


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"states": frozenset()}, "at least one state"),
        ({"states": frozenset({TaskStatus.UNKNOWN})}, "unknown state"),
        ({"states": frozenset({TaskStatus.MIGRATING})}, "stop_running"),
        ({"older_than": None}, "older_than and/or started_before"),
        ({"older_than": -DAY}, "negative"),
        ({"started_before": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_policy_refuses_loose_rules(overrides: dict[str, Any], fragment: str) -> None:
    """A Policy cannot be built looser than the settings allow."""
    with pytest.raises(ValueError, match=fragment):
        policy(**overrides)


def test_from_settings(tmp_path: Path) -> None:
    """Every criterion in the settings reaches the policy."""
    settings = load_settings(
        {
            "region": "cn-north-4",
            "project_id": "p1",
            "older_than": "2w",
            "started_before": "2026-01-01T00:00:00",
            "states": "paused,migrating",
            "stop_running": True,
            "name_include": ["a*"],
            "name_exclude": ["*b"],
            "protect_ids": ["5", "6"],
            "group_id": "g",
            "report": str(tmp_path / "r.json"),
        },
        environ={},
    )
    assert Policy.from_settings(settings) == Policy(
        states=frozenset({TaskStatus.PAUSED, TaskStatus.MIGRATING}),
        older_than=timedelta(weeks=2),
        started_before=datetime(2026, 1, 1, tzinfo=UTC),
        name_include=("a*",),
        name_exclude=("*b",),
        protect_ids=frozenset({5, 6}),
        group_id="g",
        stop_running=True,
    )
