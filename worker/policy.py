"""Which listed tasks a run may delete: a frozen Policy and a pure `select` (table-tested).

When in doubt, keep the task: a task is selected only when every criterion positively holds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from worker.oms.models import ACTIVE_STATES, Task, TaskStatus

if TYPE_CHECKING:
    from worker.settings import RunSettings


class SkipReason(enum.StrEnum):
    """Why a listed task was kept; the value is what the report counts."""

    PROTECTED = "protected"
    UNKNOWN_STATE = "unknown_state"
    ACTIVE_STATE = "active_state"
    STATE = "state"
    AGE_UNKNOWN = "age_unknown"
    TOO_YOUNG = "too_young"
    EXCLUDED_NAME = "excluded_name"
    NOT_INCLUDED = "not_included"
    OTHER_GROUP = "other_group"
    # A task object that cannot be understood (see `models.MalformedTask`); never judged.
    MALFORMED = "malformed"


# OMS is younger than this: an earlier start_time is another unit (seconds read as
# milliseconds land in January 1970) or garbage, not an age.
EARLIEST_PLAUSIBLE_START = datetime(2015, 1, 1, tzinfo=UTC)
# Clocks disagree a little; a start time further ahead of the run's clock than this is not one.
FUTURE_TOLERANCE = timedelta(days=1)


def plausible_start(start_time: datetime, *, now: datetime) -> bool:
    """Whether `start_time` can be a real task's start, judged at `now`."""
    return EARLIEST_PLAUSIBLE_START <= start_time <= now + FUTURE_TOLERANCE


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The selection criteria of a run. At least one age criterion is required."""

    states: frozenset[TaskStatus]
    older_than: timedelta | None = None
    started_before: datetime | None = None
    name_include: tuple[str, ...] = ()
    name_exclude: tuple[str, ...] = ()
    protect_ids: frozenset[int] = frozenset()
    group_id: str | None = None
    stop_running: bool = False

    def __post_init__(self) -> None:
        # Settings validate these already; a Policy built any other way must not be looser.
        if not self.states:
            raise ValueError("a policy needs at least one state")
        if TaskStatus.UNKNOWN in self.states:
            raise ValueError("tasks in an unknown state are never selectable")
        if self.states & ACTIVE_STATES and not self.stop_running:
            raise ValueError("selecting active states requires stop_running")
        if self.older_than is None and self.started_before is None:
            raise ValueError("a policy needs older_than and/or started_before")
        if self.older_than is not None and self.older_than < timedelta():
            raise ValueError("older_than must not be negative")
        if self.started_before is not None and self.started_before.tzinfo is None:
            raise ValueError("started_before must be timezone-aware")

    @classmethod
    def from_settings(cls, settings: RunSettings) -> Policy:
        """The policy a run's settings describe."""
        return cls(
            states=settings.states,
            older_than=settings.older_than,
            started_before=settings.started_before,
            name_include=settings.name_include,
            name_exclude=settings.name_exclude,
            protect_ids=settings.protect_ids,
            group_id=settings.group_id,
            stop_running=settings.stop_running,
        )


def select(task: Task, *, policy: Policy, now: datetime) -> SkipReason | None:
    """None when the policy selects `task` for deletion at time `now`; otherwise why not.

    Checked in this order, so a report names the strongest reason: protection, state, age,
    name, group.
    """
    if task.id in policy.protect_ids:
        return SkipReason.PROTECTED
    status = task.status
    if status is TaskStatus.UNKNOWN:
        return SkipReason.UNKNOWN_STATE
    if status not in policy.states:
        return SkipReason.ACTIVE_STATE if status in ACTIVE_STATES else SkipReason.STATE
    if status in ACTIVE_STATES and not policy.stop_running:
        return SkipReason.ACTIVE_STATE  # unreachable through a valid Policy; kept as a lock
    if task.start_time is None or not plausible_start(task.start_time, now=now):
        # No believable start time, no age: the task cannot be shown to be old enough.
        return SkipReason.AGE_UNKNOWN
    if policy.older_than is not None and now - task.start_time < policy.older_than:
        return SkipReason.TOO_YOUNG
    if policy.started_before is not None and task.start_time >= policy.started_before:
        return SkipReason.TOO_YOUNG
    if any(fnmatchcase(task.name, glob) for glob in policy.name_exclude):
        return SkipReason.EXCLUDED_NAME
    if policy.name_include and not any(
        fnmatchcase(task.name, glob) for glob in policy.name_include
    ):
        return SkipReason.NOT_INCLUDED
    if policy.group_id is not None and task.group_id != policy.group_id:
        return SkipReason.OTHER_GROUP
    return None
