"""Run settings: parsed once, at the edge, into frozen values (credentials: credentials.py).

Every run option comes from, in falling precedence: command-line flags, the environment
(`OMS_CLEANUP_<NAME>`), a TOML config file, and the defaults below. This module and
credentials.py are the only ones that read the process environment.

Environment values for list options are comma-separated (`OMS_CLEANUP_STATES=succeeded,failed`).
An environment variable that is set but blank counts as not set; a list that names nothing
(`","`) is an error, and so is an unknown OMS_CLEANUP_* variable (a misspelt protection must not
pass silently). Three rules keep layering from deleting what one layer meant to keep:

- Protections accumulate: `protect_ids` and `name_exclude` are the union of every layer's
  (`_accumulate_protections`); no layer can remove another's. Each value remembers its layers.
- Selections (`states`, `name_include`, every other option): the highest layer wins.
- Targets come from one place. Several come only from `[[targets]]` tables in the file;
  --region/--endpoint/--project-id build one target. With [[targets]] in the file, flags may
  replace them (the dropped ones are kept in `RunSettings.dropped_targets`, for the run's warning
  and report), the environment may not (an error), and HUAWEICLOUD_SDK_PROJECT_ID, a fallback
  project id ranking below the file, is not used. Two targets with one project id are an error.

Sharding (an Indexed Job): every pod loads the same targets and keeps only its share (see
worker/sharding.py), so `RunSettings.targets` holds this shard's targets only. The shard index
comes from --shard-index, OMS_CLEANUP_SHARD_INDEX or Kubernetes' JOB_COMPLETION_INDEX, never
from the file: a file shared by every pod cannot say which pod reads it. `{shard}` in --report
and --metrics-textfile becomes the shard index.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal, Self

import yarl
from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic import model_validator as _model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from worker.durations import format_duration, parse_duration
from worker.oms.auth import AkSk, Credentials, credential_mode
from worker.oms.endpoint import resolve_endpoint
from worker.oms.models import ACTIVE_STATES, TaskStatus
from worker.sharding import shard_targets

ENV_PREFIX = "OMS_CLEANUP_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
SDK_ENV_PREFIX = "HUAWEICLOUD_SDK_"
SDK_PROJECT_ID_ENV = f"{SDK_ENV_PREFIX}PROJECT_ID"
# Set by Kubernetes in every pod of an Indexed Job: the pod's index, 0 to completions - 1.
JOB_COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
# Replaced by the shard index in the report and metrics file paths.
SHARD_PLACEHOLDER = "{shard}"

# File names read from a secrets directory (a Kubernetes Secret volume: one file per key).
SECRET_FILE_NAMES = ("ak", "sk", "security_token", "auth_token")

# The keys that build one target without a [[targets]] table.
_FLAT_TARGET_KEYS = ("region", "endpoint", "project_id")

# Project ids go into URL paths: letters, digits, '-' and '_' only, so nothing can escape the path.
_PROJECT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

_FLAG_NAMES = {"protect_ids": "--protect-id"}

# The layers a protection can come from, lowest first (the order values are listed in).
ProtectionLayer = Literal["file", "environment", "flags"]
_PROTECTION_LAYERS: tuple[ProtectionLayer, ...] = ("file", "environment", "flags")

LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad input: the option it concerns (as the user would spell it) and what is wrong."""

    option: str
    message: str

    def __str__(self) -> str:
        return f"{self.option}: {self.message}"


class ConfigError(Exception):
    """Settings or credentials that cannot be used; each problem is one line for the user."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class _FieldProblem(ValueError):
    """Raised from a cross-field check to blame a specific field rather than the whole model."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


# --------------------------------------------------------------------------------------------
# Values


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value.strip() if isinstance(value, str) else value


class Target(BaseModel):
    """One project in one region (or behind an explicit endpoint URL)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str | None = None
    endpoint: str | None = None
    project_id: str

    @field_validator("region", "endpoint", "project_id", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return _blank_to_none(value)

    @field_validator("project_id")
    @classmethod
    def _check_project_id(cls, value: str) -> str:
        if not _PROJECT_ID_RE.fullmatch(value):
            raise ValueError(
                f"must be letters, digits, '-' or '_' (at most 64), like a 32-character "
                f"hex id (got {value!r})"
            )
        return value

    @_model_validator(mode="after")
    def _exactly_one_location(self) -> Self:
        if self.region is None and self.endpoint is None:
            raise _FieldProblem(("region",), "give a region (e.g. cn-north-4) or an endpoint URL")
        if self.region is not None and self.endpoint is not None:
            raise _FieldProblem(("endpoint",), "give either a region or an endpoint, not both")
        # Shape only here; whether plain http is acceptable depends on a run-wide option and is
        # checked by RunSettings.
        try:
            resolve_endpoint(region=self.region, endpoint=self.endpoint, allow_insecure_http=True)
        except ValueError as exc:
            raise _FieldProblem(("region" if self.region else "endpoint",), str(exc)) from None
        return self

    def base_url(self, *, allow_insecure_http: bool) -> yarl.URL:
        """The API's base URL for this target."""
        return resolve_endpoint(
            region=self.region, endpoint=self.endpoint, allow_insecure_http=allow_insecure_http
        )

    @property
    def where(self) -> str:
        """The region, or the endpoint URL, for messages."""
        return self.region or self.endpoint or ""


class MaxDeletions(BaseModel):
    """A cap on deletions: a fixed count, or a percentage of the tasks listed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int | None = None
    percent: float | None = None

    @_model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.count is None) == (self.percent is None):
            raise ValueError("give either a count or a percentage")
        if self.count is not None and self.count < 0:
            raise ValueError(f"must be 0 or more (got {self.count})")
        if self.percent is not None and not (0 < self.percent <= 100):
            raise ValueError(
                f"a percentage must be above 0 and at most 100 (got {self.percent:g}%)"
            )
        return self

    @classmethod
    def parse(cls, text: str) -> MaxDeletions:
        """Read `250` (tasks) or `10%` (of the tasks listed)."""
        compact = text.strip()
        try:
            number = float(compact[:-1]) if compact.endswith("%") else int(compact)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(
                f"expected a number of tasks (e.g. 500) or a percentage (e.g. 10%) (got {text!r})"
            )
        return cls(percent=number) if compact.endswith("%") else cls(count=int(number))

    def limit(self, listed: int) -> int:
        """How many tasks may be deleted when `listed` were listed; a percentage rounds down."""
        if self.count is not None:
            return min(self.count, listed)
        assert self.percent is not None
        # The tiny epsilon keeps 10% of 30 at 3 despite 30 * 0.1 == 2.9999999999999996.
        return min(listed, math.floor(listed * self.percent / 100 + 1e-9))

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


# --------------------------------------------------------------------------------------------
# Field parsers shared by the validators


def _split_list(value: Any, *, what: str) -> list[Any]:
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not parts:
            # `OMS_CLEANUP_NAME_EXCLUDE=","` (an unset variable spliced in) must not pass as a
            # deliberate empty list: it would drop a filter or a protection without a word.
            raise ValueError(f"name at least one {what} (got {value!r})")
        return parts
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    raise ValueError(f"expected a list or a comma-separated string (got {value!r})")


def _task_ids(value: Any) -> frozenset[int]:
    ids: set[int] = set()
    for item in _split_list(value, what="task id"):
        if isinstance(item, int) and not isinstance(item, bool):
            number = item
        elif isinstance(item, str) and item.strip().isdigit():
            number = int(item.strip())
        else:
            raise ValueError(f"expected task ids (positive integers) (got {item!r})")
        if number <= 0:
            raise ValueError(f"task ids are positive (got {number})")
        ids.add(number)
    return frozenset(ids)


def _globs(value: Any) -> tuple[str, ...]:
    globs = _split_list(value, what="name pattern")
    for glob in globs:
        if not isinstance(glob, str):
            raise ValueError(f"expected name patterns (got {glob!r})")  # noqa: TRY004
        if not glob.strip():
            # `--name-include "$UNSET"` must not silently drop the filter and widen the run.
            raise ValueError("a name pattern must not be empty")
    return tuple(dict.fromkeys(globs))


def _same_kind(value: Any, annotation: Any) -> Any:
    """`value` unless a TOML value of another kind stands in for a number or a yes/no.

    pydantic would read `max_attempts = true` as 1, `concurrency = 2.0` as 2 and `execute = 1`
    as yes: each is a mistake in the file, not a spelling. Strings (flags, environment) are
    left to the field's own parsing.
    """
    wrong = {
        int: isinstance(value, bool | float),
        float: isinstance(value, bool),
        bool: isinstance(value, int | float) and not isinstance(value, bool),
    }
    if wrong.get(annotation, False):
        expected = {int: "a whole number", float: "a number", bool: "true or false"}[annotation]
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        raise ValueError(f"expected {expected} (got {shown})")
    return value


def _duration(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    # A bare number would be read by pydantic as seconds; "older_than = 30" meaning 30 seconds
    # when the user thought of days is exactly the mistake that deletes too much.
    raise ValueError(
        f"expected a duration with a unit, like 90s, 45m, 12h, 30d, 2w (got {value!r})"
    )


def _timeout(value: Any) -> Any:
    # A bare number of seconds is the usual spelling of a timeout, and harmless if misread.
    seconds: float
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            return parse_duration(value)
    else:
        return _duration(value)
    # A day is already far beyond any sensible timeout; the bound keeps timedelta from overflowing.
    if not -86400 <= seconds <= 86400:
        raise ValueError(f"expected a number of seconds or a duration like 30s (got {value!r})")
    return timedelta(seconds=seconds)


def _timestamp(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"expected an ISO 8601 timestamp like 2026-01-31T00:00:00Z (got {value!r})"
            ) from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        # pydantic reports ValueError as a validation error; a TypeError would escape as a crash.
        raise ValueError(f"expected an ISO 8601 timestamp (got {value!r})")  # noqa: TRY004
    # Naive means UTC: the API's start_time is UTC, and the local zone of whoever runs this
    # is not a property of the tasks.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _positive(value: float, *, minimum: float = 0, inclusive: bool = False) -> float:
    ok = value >= minimum if inclusive else value > minimum
    if not ok or not math.isfinite(value):
        relation = "at least" if inclusive else "greater than"
        raise ValueError(f"must be {relation} {minimum:g} (got {value:g})")
    return value


def _for_shard(path: Path, info: ValidationInfo) -> Path:
    """`path` with {shard} replaced by the shard index (validated before the paths)."""
    text = str(path)
    if SHARD_PLACEHOLDER not in text or "shard_index" not in info.data:
        # Without a valid index its own error is reported; this path is checked as written.
        return path
    return Path(text.replace(SHARD_PLACEHOLDER, str(info.data["shard_index"])))


def _check_output_file(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path()
    if not parent.is_dir():
        raise ValueError(f"directory {str(parent)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory")


def _check_pushgateway_url(text: str) -> str:
    try:
        url = yarl.URL(text)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an http(s) URL like http://pushgateway:9091 (got {text!r})")
    if url.user is not None or url.password is not None:
        # The URL is shown in settings and logs; a password in it would leak there.
        raise ValueError("credentials in the URL are not supported")
    if url.query_string or url.fragment:
        raise ValueError(
            f"give the Pushgateway's base URL, without query or fragment (got {text!r})"
        )
    return text


# --------------------------------------------------------------------------------------------
# Run settings


class RunSettings(BaseSettings):
    """Everything one cleanup run needs, except credentials. Immutable once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True
    )

    targets: tuple[Target, ...] = ()
    # One pod of an Indexed Job handles the targets of one shard; 1 shard is all of them.
    shard_count: int = 1
    shard_index: int = 0
    # Age criteria: at least one is required (see _require_age); nothing defaults to "any age".
    older_than: timedelta | None = None
    started_before: datetime | None = None
    # Finished tasks only by default: their migration is over, deleting them loses nothing live.
    states: frozenset[TaskStatus] = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED})
    name_include: tuple[str, ...] = ()
    name_exclude: tuple[str, ...] = ()
    protect_ids: frozenset[int] = frozenset()
    group_id: str | None = None
    # OMS does not publish its rate limits; 20 requests/s per target is well below what API
    # gateways commonly allow per account, and still deletes 10,000 tasks in under 10 minutes.
    rate: float = 20.0
    # Enough requests in flight to keep 20/s going at ~0.5 s latency, few enough not to pile up
    # waiters on the rate limiter.
    concurrency: int = 16
    # A task refused as "still running" (OMS.0063) usually settles within tens of seconds.
    requeue_delay: timedelta = timedelta(seconds=30)
    # With a 30 s requeue delay, 10 attempts give a running task about 5 minutes to settle.
    max_attempts: int = 10
    # An unattended run must end: an hour covers tens of thousands of tasks at the default rate.
    deadline: timedelta = timedelta(hours=1)
    # No delete is sent on a judgement older than this: the task is read again first (see
    # freshness.py). Ten minutes re-reads a 20,000-task run about once, for under 1 % more
    # requests, and bounds how long a person's change can go unseen.
    max_staleness: timedelta = timedelta(minutes=10)
    max_deletions: MaxDeletions | None = None
    # Dry run unless asked: the tool deletes things.
    execute: bool = False
    yes: bool = False
    stop_running: bool = False
    # List one state at a time (the API's status filter) instead of every task: far fewer
    # pages when most tasks are in states the policy keeps; `listed` then covers those states.
    list_by_status: bool = False
    report: Path = Path("oms-cleanup-report.json")
    # None means "decide at start-up" (console on a TTY, JSON lines otherwise).
    log_format: LogFormat | None = None
    log_level: LogLevel = "info"
    # Connecting includes waiting for a pooled connection (aiohttp), hence some slack.
    connect_timeout: timedelta = timedelta(seconds=10)
    request_timeout: timedelta = timedelta(seconds=60)
    # After a stop (signal, deadline), in-flight requests get this long before being cancelled.
    shutdown_grace: timedelta = timedelta(seconds=10)
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False
    secrets_dir: Path | None = None
    # Run metrics at the end of a run: a Prometheus Pushgateway, a node-exporter textfile.
    pushgateway: str | None = None
    metrics_textfile: Path | None = None

    # Facts about the layering, set by load_settings, for people (validate, the report, the
    # run's warning); not options, so no source can set them.
    _protection_origins: dict[str, dict[Any, tuple[ProtectionLayer, ...]]] = PrivateAttr(
        default_factory=dict
    )
    _dropped_targets: tuple[Target, ...] = PrivateAttr(default=())

    @property
    def protection_origins(self) -> Mapping[str, Mapping[Any, tuple[ProtectionLayer, ...]]]:
        """For `protect_ids` and `name_exclude`: each value and the layers that gave it."""
        return self._protection_origins

    @property
    def dropped_targets(self) -> tuple[Target, ...]:
        """The config file's [[targets]] that the flags' target replaced (not run)."""
        return self._dropped_targets

    @property
    def dry_run(self) -> bool:
        """Whether this run only reports what it would delete."""
        return not self.execute

    @property
    def project_ids(self) -> tuple[str, ...]:
        """The targets' project ids, in order, without repeats."""
        return tuple(dict.fromkeys(target.project_id for target in self.targets))

    # -- field parsing --------------------------------------------------------------------

    @field_validator("older_than", mode="before")
    @classmethod
    def _parse_older_than(cls, value: Any) -> Any:
        return None if value is None else _duration(value)

    @field_validator("requeue_delay", "deadline", "max_staleness", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        return _duration(value)

    @field_validator(
        "requeue_delay",
        "deadline",
        "max_staleness",
        "connect_timeout",
        "request_timeout",
        "shutdown_grace",
    )
    @classmethod
    def _positive_duration(cls, value: timedelta) -> timedelta:
        if value <= timedelta():
            sign, size = ("-", -value) if value < timedelta() else ("", value)
            raise ValueError(f"must be longer than 0s (got {sign}{format_duration(size)})")
        return value

    @field_validator("started_before", mode="before")
    @classmethod
    def _parse_started_before(cls, value: Any) -> Any:
        return _timestamp(value)

    @field_validator("states", mode="before")
    @classmethod
    def _parse_states(cls, value: Any) -> Any:
        items = _split_list(value, what="state")
        if not items:
            raise ValueError("name at least one state (e.g. succeeded,failed)")
        states: set[TaskStatus] = set()
        for item in items:
            if isinstance(item, TaskStatus):
                states.add(item)
            elif isinstance(item, str):
                states.add(TaskStatus.from_name(item))
            else:
                raise ValueError(f"expected state names like 'succeeded' (got {item!r})")  # noqa: TRY004
        if TaskStatus.UNKNOWN in states:
            raise ValueError("'unknown' is not a selectable task state")
        return frozenset(states)

    @field_validator("name_include", "name_exclude", mode="before")
    @classmethod
    def _parse_globs(cls, value: Any) -> Any:
        return _globs(value)

    @field_validator("protect_ids", mode="before")
    @classmethod
    def _parse_ids(cls, value: Any) -> Any:
        return _task_ids(value)

    @field_validator("group_id", mode="before")
    @classmethod
    def _parse_group(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            # `--group-id "$UNSET"` must not silently drop the filter and widen the run.
            raise ValueError("must not be empty (leave it out to select tasks of any group)")
        return _blank_to_none(value)

    @field_validator("max_deletions", mode="before")
    @classmethod
    def _parse_max_deletions(cls, value: Any) -> Any:
        if isinstance(value, str):
            return MaxDeletions.parse(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return MaxDeletions(count=value)
        if value is None or isinstance(value, MaxDeletions):
            return value
        raise ValueError(
            f'expected a number of tasks (e.g. 500) or a percentage (e.g. "10%") (got {value!r})'
        )

    @field_validator("*", mode="before")
    @classmethod
    def _check_kind(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return _same_kind(value, cls.model_fields[info.field_name].annotation)

    @field_validator("log_format", mode="before")
    @classmethod
    def _parse_log_format(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return None if value in ("", "auto") else value
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _parse_log_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("connect_timeout", "request_timeout", "shutdown_grace", mode="before")
    @classmethod
    def _parse_timeout(cls, value: Any) -> Any:
        return _timeout(value)

    @field_validator("rate")
    @classmethod
    def _check_positive(cls, value: float) -> float:
        return _positive(value)

    @field_validator("concurrency", "max_attempts")
    @classmethod
    def _check_at_least_one(cls, value: int) -> int:
        return int(_positive(value, minimum=1, inclusive=True))

    @field_validator("shard_count")
    @classmethod
    def _check_shard_count(cls, value: int) -> int:
        return int(_positive(value, minimum=1, inclusive=True))

    @field_validator("shard_index")
    @classmethod
    def _check_shard_index(cls, value: int) -> int:
        return int(_positive(value, minimum=0, inclusive=True))

    @field_validator("report")
    @classmethod
    def _check_report_dir(cls, value: Path, info: ValidationInfo) -> Path:
        value = _for_shard(value, info)
        # Found out before anything is deleted, not when the report is written at the end.
        _check_output_file(value)
        return value

    @field_validator("metrics_textfile")
    @classmethod
    def _check_metrics_textfile(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = _for_shard(value, info)
        # node-exporter's textfile collector reads only *.prom files.
        if value.suffix != ".prom":
            raise ValueError(f"must end in .prom for node-exporter to read it (got {str(value)!r})")
        _check_output_file(value)
        return value

    @field_validator("pushgateway", mode="before")
    @classmethod
    def _parse_pushgateway(cls, value: Any) -> Any:
        return _blank_to_none(value)

    @field_validator("pushgateway")
    @classmethod
    def _check_pushgateway(cls, value: str | None) -> str | None:
        return None if value is None else _check_pushgateway_url(value)

    @field_validator("ca_bundle")
    @classmethod
    def _check_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {str(value)!r}")
        return value

    @field_validator("secrets_dir")
    @classmethod
    def _check_secrets_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"no such directory: {str(value)!r}")
        return value

    # -- cross-field rules ----------------------------------------------------------------

    @_model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if not self.targets:
            raise _FieldProblem(
                ("targets",),
                "no target: give --region (or --endpoint) and --project-id, "
                "or [[targets]] tables in the config file",
            )
        first_of: dict[str, int] = {}
        for index, target in enumerate(self.targets):
            if target.endpoint is not None:
                try:
                    target.base_url(allow_insecure_http=self.allow_insecure_http)
                except ValueError as exc:
                    raise _FieldProblem(("targets", index, "endpoint"), str(exc)) from None
            # A project id names one project, whatever endpoint or region reaches it: twice in
            # the list (before sharding) would clean one project twice, maybe from two pods.
            first = first_of.setdefault(target.project_id, index)
            if first != index:
                raise _FieldProblem(
                    ("targets", index, "project_id"),
                    f"project {target.project_id} is already targets[{first}] "
                    f"({self.targets[first].where}); list each project once",
                )
        if self.shard_index >= self.shard_count:
            raise _FieldProblem(
                ("shard_index",),
                f"must be below --shard-count ({self.shard_count}) (got {self.shard_index})",
            )
        if self.older_than is None and self.started_before is None:
            raise _FieldProblem(
                ("older_than",),
                "an age criterion is required: give --older-than and/or --started-before "
                "(--older-than 0s selects tasks of any age)",
            )
        active = sorted(status.label for status in self.states & ACTIVE_STATES)
        if active and not self.stop_running:
            verb = "is an active state" if len(active) == 1 else "are active states"
            raise _FieldProblem(
                ("states",),
                f"{', '.join(active)} {verb}; selecting running tasks also needs --stop-running",
            )
        return self


# --------------------------------------------------------------------------------------------
# Loading run settings


@dataclass(frozen=True, slots=True)
class _Layer:
    """The values one source gives, before merging."""

    name: Literal["flags", "environment", "job", "file", "sdk"]
    values: dict[str, Any]


def environment(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """The environment to read: the given mapping, or this process's."""
    return os.environ if environ is None else environ


def load_settings(
    flags: Mapping[str, Any],
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunSettings:
    """Merge flags > environment > config file > defaults into validated RunSettings.

    `flags` holds only the options the user gave, keyed by field name (plus `region`,
    `endpoint`, `project_id`), as strings, lists of strings or booleans. `config_file` falls back
    to $OMS_CLEANUP_CONFIG. `environ` defaults to the process environment. Raises ConfigError.
    """
    env = environment(environ)
    if config_file is None and env.get(CONFIG_ENV, "").strip():
        config_file = Path(env[CONFIG_ENV].strip())
    layers = [
        _Layer("flags", {key: value for key, value in flags.items() if value is not None}),
        _Layer("environment", _environment_values(env)),
        _Layer("job", _job_values(env)),
        _Layer("file", _read_config_file(config_file) if config_file is not None else {}),
        _Layer("sdk", _sdk_values(env)),
    ]
    if "shard_index" in layers[3].values:
        raise ConfigError(
            [
                Problem(
                    f"config file {str(config_file)!r}",
                    "shard_index cannot be set in a file every shard reads; use --shard-index "
                    f"or {JOB_COMPLETION_INDEX_ENV}",
                )
            ]
        )
    flat, replaced = _place_targets(layers, config_file=config_file)
    origins, found = _accumulate_protections(layers, config_file=config_file)
    dropped: tuple[Target, ...] = ()
    if replaced is not None:
        # Replaced targets are still checked: a mistake there (an option placed after a
        # [[targets]] header) must not vanish just because a flag chose the target this time.
        try:
            dropped = tuple(TypeAdapter(list[Target]).validate_python(replaced))
        except ValidationError as exc:
            found.extend(
                _problem(
                    {**error, "loc": ("targets", *error["loc"])},
                    layers=layers,
                    flat=False,
                    config_file=config_file,
                )
                for error in exc.errors()
            )
    sources: tuple[PydanticBaseSettingsSource, ...] = tuple(
        InitSettingsSource(RunSettings, layer.values) for layer in layers
    )
    try:
        settings = RunSettings(_build_sources=(sources, {}))
    except ValidationError as exc:
        found.extend(
            _problem(error, layers=layers, flat=flat, config_file=config_file)
            for error in exc.errors()
        )
    if found:
        raise ConfigError(found)
    # Sharded after validation: every pod checks the whole configuration, and a shard left
    # without targets is a valid (empty) run rather than a "no target" error.
    mine = shard_targets(settings.targets, index=settings.shard_index, count=settings.shard_count)
    settings = settings.model_copy(update={"targets": mine})
    # Set once here, before anyone else holds the object.
    settings._protection_origins = origins
    settings._dropped_targets = dropped
    return settings


def _environment_values(env: Mapping[str, str]) -> dict[str, Any]:
    names = {f"{ENV_PREFIX}{name.upper()}": name for name in _settable_names()}
    credential_names = {f"{ENV_PREFIX}{key.upper()}" for key in SECRET_FILE_NAMES}
    values: dict[str, Any] = {}
    unknown: list[Problem] = []
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or not value.strip():
            continue
        if key in names:
            values[names[key]] = value
        elif key not in credential_names and key != CONFIG_ENV:
            # A misspelt OMS_CLEANUP_PROTECT_ID would otherwise protect nothing, silently.
            unknown.append(Problem(key, "unknown setting (misspelt?)"))
    if unknown:
        raise ConfigError(sorted(unknown, key=str))
    return values


def _job_values(env: Mapping[str, str]) -> dict[str, Any]:
    index = env.get(JOB_COMPLETION_INDEX_ENV, "").strip()
    return {"shard_index": index} if index else {}


def _sdk_values(env: Mapping[str, str]) -> dict[str, Any]:
    # The Huawei SDK's project id is ambient configuration for many tools, so it ranks below
    # this tool's own config file and never replaces the file's [[targets]].
    project = env.get(SDK_PROJECT_ID_ENV, "").strip()
    return {"project_id": project} if project else {}


def _settable_names() -> list[str]:
    return [name for name in RunSettings.model_fields if name != "targets"] + list(
        _FLAT_TARGET_KEYS
    )


def _read_config_file(path: Path) -> dict[str, Any]:
    # pydantic-settings ignores a TOML file that does not exist; a file the user named must.
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(
            [Problem("--config", f"cannot read {str(path)!r}: {exc.strerror}")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [Problem("--config", f"{str(path)!r} is not valid TOML: {exc}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem("--config", f"{str(path)!r} is not UTF-8 text")]) from None
    return data


def _place_targets(layers: list[_Layer], *, config_file: Path | None) -> tuple[bool, Any]:
    """Decide where the targets come from; region/endpoint/project_id become one target.

    Returns whether that flat target is the one used, and the file's [[targets]] it replaced
    (None when it replaced none).

    A region or endpoint from a higher layer replaces both from lower layers (they are one
    choice). Flags naming any part of the flat target replace the file's [[targets]]. With
    [[targets]] in the file, a target part in the environment is a conflict (an ambient variable
    must not redirect a whole multi-target run) and the SDK's project id is not used; in the
    file alone, mixing both spellings is an error.
    """
    layer_of = {layer.name: layer for layer in layers}
    file_label = f"config file {str(config_file)!r}"
    file_values = layer_of["file"].values
    in_file = [key for key in _FLAT_TARGET_KEYS if key in file_values]
    in_env = [key for key in _FLAT_TARGET_KEYS if key in layer_of["environment"].values]
    if in_file and "targets" in file_values:
        raise ConfigError(
            [
                Problem(
                    file_label, f"top-level {', '.join(in_file)} and [[targets]] cannot be combined"
                )
            ]
        )
    if in_env and "targets" in file_values:
        names = ", ".join(f"{ENV_PREFIX}{key.upper()}" for key in in_env)
        raise ConfigError(
            [
                Problem(
                    names,
                    f"the targets come from the [[targets]] of {file_label}; unset it, or give "
                    "the target as flags (which replace the file's targets)",
                )
            ]
        )
    if "targets" in file_values:
        layer_of["sdk"].values.pop("project_id", None)
    flat: dict[str, Any] = {}
    location_found = False
    overriding = False
    for layer in layers:
        parts = {key: layer.values.pop(key) for key in _FLAT_TARGET_KEYS if key in layer.values}
        if parts and layer.name in ("flags", "environment"):
            overriding = True
        if not location_found and ("region" in parts or "endpoint" in parts):
            location_found = True
            flat.update({key: parts[key] for key in ("region", "endpoint") if key in parts})
        if "project_id" in parts:
            flat.setdefault("project_id", parts["project_id"])
    if overriding or (flat and "targets" not in file_values):
        replaced = file_values.pop("targets", None)
        layers[0].values["targets"] = [flat]
        return True, replaced
    return False, None


def _accumulate_protections(
    layers: list[_Layer], *, config_file: Path | None
) -> tuple[dict[str, dict[Any, tuple[ProtectionLayer, ...]]], list[Problem]]:
    """Replace each layer's protect_ids and name_exclude by their union (in the top layer).

    Returns, for each of the two, every value and the layers that gave it (lowest first), and
    the problems of values that could not be read (blamed on their own layer).
    """
    layer_of = {layer.name: layer for layer in layers}
    read: dict[str, Callable[[Any], Iterable[Any]]] = {
        "protect_ids": lambda value: sorted(_task_ids(value)),
        "name_exclude": _globs,
    }
    origins: dict[str, dict[Any, tuple[ProtectionLayer, ...]]] = {}
    problems: list[Problem] = []
    for field, parse in read.items():
        found: dict[Any, tuple[ProtectionLayer, ...]] = {}
        for name in _PROTECTION_LAYERS:
            if field not in layer_of[name].values:
                continue
            value = layer_of[name].values.pop(field)
            try:
                for item in parse(value):
                    found[item] = (*found.get(item, ()), name)
            except ValueError as exc:
                problems.append(Problem(_option(field, name, config_file=config_file), str(exc)))
        if found:
            layer_of["flags"].values[field] = list(found)
        origins[field] = found
    return origins, problems


def _problem(
    error: Mapping[str, Any], *, layers: Sequence[_Layer], flat: bool, config_file: Path | None
) -> Problem:
    """One validation error as one line naming the option the user gave (and where from)."""
    loc: tuple[str | int, ...] = tuple(error["loc"])
    message = str(error["msg"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _FieldProblem):
        loc = loc + cause.loc
        message = str(cause)
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    elif error["type"] != "extra_forbidden" and isinstance(error.get("input"), str | int | float):
        message = f"{message} (got {error['input']!r})"
    origin_of = {layer.name: layer for layer in layers}
    file_label = f"config file {str(config_file)!r}"
    if error["type"] == "extra_forbidden":
        key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        hint = ""
        if loc[0] == "targets" and len(loc) == 3 and loc[2] in RunSettings.model_fields:
            # TOML puts every key after a [[targets]] header into that table.
            hint = " (top-level options must come before the first [[targets]] table)"
        from_file = loc[0] in origin_of["file"].values or loc[0] == "targets"
        return Problem(file_label if from_file else "settings", f"unknown key {key[1:]!r}{hint}")
    if loc and loc[0] == "targets":
        if flat:
            field = str(loc[2]) if len(loc) > 2 else "region"
            return Problem(f"--{field.replace('_', '-')}", message)
        if len(loc) > 1:
            path = f"targets[{loc[1]}]" + (f".{loc[2]}" if len(loc) > 2 else "")
            return Problem(f"{file_label}: {path}", message)
        if isinstance(cause, _FieldProblem):  # no target at all
            return Problem("--region", message)
        return Problem(f"{file_label}: targets", message)
    field = str(loc[0]) if loc else ""
    source = next((layer.name for layer in layers if field in layer.values), "flags")
    return Problem(_option(field, source, config_file=config_file), message)


def _option(field: str, layer: str, *, config_file: Path | None) -> str:
    """An option as the user spelt it: the flag, and the variable or file it came from."""
    option = _FLAG_NAMES.get(field, f"--{field.replace('_', '-')}")
    if layer == "environment":
        return f"{option} ({ENV_PREFIX}{field.upper()})"
    if layer == "job":
        return f"{option} ({JOB_COMPLETION_INDEX_ENV})"
    if layer == "file":
        return f"{option} (config file {str(config_file)!r})"
    return option


# --------------------------------------------------------------------------------------------
# Showing settings


def masked_settings(
    settings: RunSettings, *, credentials: Credentials | None = None
) -> dict[str, Any]:
    """The effective settings as JSON-ready values, for `validate` and the report.

    Holds no secret: credentials appear as their mode and the access key's last four
    characters (enough to tell keys apart, too little to use one).
    """
    protected = settings.protection_origins
    shown: dict[str, Any] = {
        "targets": [_shown_target(target) for target in settings.targets],
        # Not run: the flags' target replaced them (the run warns about it too).
        "dropped_targets": [_shown_target(target) for target in settings.dropped_targets],
        "shard_index": settings.shard_index,
        "shard_count": settings.shard_count,
        "older_than": _maybe(format_duration, settings.older_than),
        "started_before": _maybe(lambda value: value.isoformat(), settings.started_before),
        "states": sorted(status.label for status in settings.states),
        "name_include": list(settings.name_include),
        # Protections accumulate over the layers; each says which layers gave it.
        "name_exclude": [
            {"pattern": glob, "from": list(protected.get("name_exclude", {}).get(glob, ()))}
            for glob in settings.name_exclude
        ],
        "protect_ids": [
            {"id": task_id, "from": list(protected.get("protect_ids", {}).get(task_id, ()))}
            for task_id in sorted(settings.protect_ids)
        ],
        "group_id": settings.group_id,
        "rate": settings.rate,
        "concurrency": settings.concurrency,
        "requeue_delay": format_duration(settings.requeue_delay),
        "max_attempts": settings.max_attempts,
        "deadline": format_duration(settings.deadline),
        "max_staleness": format_duration(settings.max_staleness),
        "max_deletions": _maybe(str, settings.max_deletions),
        "execute": settings.execute,
        "dry_run": settings.dry_run,
        "yes": settings.yes,
        "stop_running": settings.stop_running,
        "list_by_status": settings.list_by_status,
        "report": str(settings.report),
        "log_format": settings.log_format or "auto",
        "log_level": settings.log_level,
        "connect_timeout": format_duration(settings.connect_timeout),
        "request_timeout": format_duration(settings.request_timeout),
        "shutdown_grace": format_duration(settings.shutdown_grace),
        "ca_bundle": _maybe(str, settings.ca_bundle),
        "allow_insecure_http": settings.allow_insecure_http,
        "secrets_dir": _maybe(str, settings.secrets_dir),
        "pushgateway": settings.pushgateway,
        "metrics_textfile": _maybe(str, settings.metrics_textfile),
    }
    if credentials is not None:
        shown["auth_mode"] = credential_mode(credentials)
        if isinstance(credentials, AkSk):
            shown["access_key"] = "****" + credentials.access_key[-4:]
    return shown


def _shown_target(target: Target) -> dict[str, str | None]:
    return {"project_id": target.project_id, "region": target.region, "endpoint": target.endpoint}


def _maybe(convert: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else convert(value)
