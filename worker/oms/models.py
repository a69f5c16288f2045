"""The OMS task as the worker sees it: a validated, immutable subset of the API's task object."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic.dataclasses
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)


class TaskStatus(enum.IntEnum):
    """OMS status codes by name. UNKNOWN stands for any code this table does not know."""

    UNKNOWN = -1
    NOT_STARTED = 0
    WAITING = 1
    MIGRATING = 2
    PAUSED = 3
    FAILED = 4
    SUCCEEDED = 5
    RETRYING = 6
    PAUSING = 7

    @classmethod
    def from_code(cls, code: int) -> TaskStatus:
        """Map an API code to a status; unknown codes map to UNKNOWN, never to an error."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN

    @classmethod
    def from_name(cls, name: str) -> TaskStatus:
        """Parse a user-facing status name (`succeeded`, `not_started`, ...)."""
        try:
            status = cls[name.strip().upper().replace("-", "_")]
        except KeyError:
            raise ValueError(f"unknown task state {name!r}") from None
        if status is cls.UNKNOWN:
            raise ValueError("'unknown' is not a selectable task state")
        return status

    @property
    def label(self) -> str:
        """The user-facing name, as used in flags and reports."""
        return self.name.lower()

    @property
    def deletable(self) -> bool:
        """Whether OMS allows deleting a task in this state (reference table)."""
        return self in DELETABLE_STATES


DELETABLE_STATES = frozenset({TaskStatus.PAUSED, TaskStatus.FAILED, TaskStatus.SUCCEEDED})
ACTIVE_STATES = frozenset(
    {
        TaskStatus.NOT_STARTED,
        TaskStatus.WAITING,
        TaskStatus.MIGRATING,
        TaskStatus.RETRYING,
        TaskStatus.PAUSING,
    }
)


def _epoch_millis_to_datetime(value: Any) -> datetime | None:
    # pydantic turns only ValueError (not TypeError) into a ValidationError, hence ValueError.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("start_time must be an integer of epoch milliseconds")  # noqa: TRY004
    if value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        # An integer past year 9999 (INT64_MAX, say) is a time, just not a believable one:
        # an unknown age (kept), not a reason to refuse the task or the page it came on.
        return None


@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=ConfigDict(extra="ignore"))
class Task:
    """One migration task. Unknown keys are ignored; wrong types are rejected.

    A slotted dataclass rather than a BaseModel: a run holds every listed task at once, and
    a model's per-instance bookkeeping would cost more than the task's own fields (about
    1.2 kB against 0.3 kB each, 100 MB at 100,000 tasks).
    """

    id: StrictInt
    status_code: StrictInt = Field(alias="status")
    name: str = ""
    start_time: Annotated[datetime | None, BeforeValidator(_epoch_millis_to_datetime)] = None
    group_id: str | None = None
    task_type: str | None = None
    description: str | None = None

    @field_validator("id")
    @classmethod
    def _positive_id(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("task id must be positive")
        return value

    @property
    def status(self) -> TaskStatus:
        """The named status; UNKNOWN for codes outside the reference table."""
        return TaskStatus.from_code(self.status_code)

    @classmethod
    def model_validate(cls, data: Any) -> Task:
        """Validate one API task object (the BaseModel spelling, kept for callers)."""
        return _TASK.validate_python(data)

    @classmethod
    def model_validate_json(cls, data: str | bytes) -> Task:
        """Validate one API task object from JSON text."""
        return _TASK.validate_json(data)


_TASK: TypeAdapter[Task] = TypeAdapter(Task)


@dataclass(frozen=True, slots=True)
class MalformedTask:
    """An entry of a page's `tasks` that is not a task this client can understand.

    It is kept (never judged, never deleted) and reported; `id` is its id when the entry has
    a usable one, so a person can look at it.
    """

    id: int | None
    problem: str


class TaskPage(BaseModel):
    """One page of `GET /v2/{project_id}/tasks`.

    The envelope (a JSON object with a `tasks` array and an integer `count`) must be sound,
    or the page is refused. Each entry of `tasks` is read on its own: one that does not
    validate lands in `malformed` instead of breaking the page, so a single odd task cannot
    stop every run.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    tasks: list[Task]
    count: StrictInt = Field(ge=0)
    malformed: list[MalformedTask] = Field(default_factory=list)

    @property
    def size(self) -> int:
        """Entries on the page, read or not: what the next page's offset moves by."""
        return len(self.tasks) + len(self.malformed)

    @model_validator(mode="before")
    @classmethod
    def _set_aside_malformed_tasks(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
            return data  # the envelope's own validation refuses it
        tasks: list[Task] = []
        malformed: list[MalformedTask] = []
        for entry in data["tasks"]:
            if isinstance(entry, Task):
                tasks.append(entry)
                continue
            try:
                tasks.append(_TASK.validate_python(entry))
            except ValidationError as exc:
                malformed.append(MalformedTask(id=_usable_id(entry), problem=_problems(exc)))
        return {**data, "tasks": tasks, "malformed": malformed}


def _usable_id(entry: object) -> int | None:
    if not isinstance(entry, dict):
        return None
    value = entry.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _problems(exc: ValidationError) -> str:
    """What is wrong, by field, without the values (a task's name is the user's text)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'task'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)[:3]
    )
