"""Seeded, reproducible OMS task objects: the same seed and moment give the same tasks.

Every task carries the full key set of the official SDK's `TaskResp` model (and its nested
models) with the JSON type the SDK declares, so clients meet the shape the real service sends.
The only deliberate exception is the `absent_start_time_share` knob, which drops `start_time`
to exercise clients that must tolerate missing keys.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")

# Weights per status code. Long-lived accounts hold mostly finished tasks and only a handful
# of active ones (at most 5 run at once per region); 9 stands for a code the reference
# does not know, which clients must treat as not deletable.
DEFAULT_STATUS_WEIGHTS: tuple[tuple[int, float], ...] = (
    (5, 0.70),
    (4, 0.12),
    (3, 0.08),
    (2, 0.03),
    (1, 0.02),
    (6, 0.015),
    (7, 0.01),
    (0, 0.01),
    (9, 0.015),
)

ACTIVE_CODES = frozenset({0, 1, 2, 6, 7})

_CADENCES = ("nightly", "weekly", "monthly", "hourly", "adhoc", "oneoff", "daily")
_VERBS = ("copy", "sync", "migrate", "backup", "mirror", "move")
_SOURCES = ("bucket", "oss", "s3", "cos", "url", "azure", "qiniu")
_SUBJECTS = ("logs", "images", "videos", "db-dumps", "reports", "assets", "archive", "raw")
_UNICODE_NAMES = (
    "迁移-日志-{n}",
    "réplica-fotos-été-{n}",
    "nightly copy/é {n}",
    "バックアップ-{n}",
    "données-clients-{n}",
    "перенос-архива-{n}",
)
_CLOUD_TYPES = ("AWS", "Aliyun", "Tencent", "HuaweiCloud", "Qiniu", "Azure", "URLSource", "Google")
_REGIONS = ("cn-north-4", "cn-east-3", "ap-southeast-1", "af-south-1", "la-south-2", "tr-west-1")
_FAILURES = (
    ("OMS.1007", "The source bucket does not exist."),
    ("OMS.1103", "Authentication failed for the source end. Check the AK/SK."),
    ("OMS.1104", "Access to the destination bucket was denied."),
    ("OMS.1120", "The waiting time exceeded 30 days and the task was failed automatically."),
    ("OMS.1205", "Failed to list objects on the source end."),
)
_OVERWRITE_MODES = (
    "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE",
    "NO_OVERWRITE",
    "CRC64_COMPARISON_OVERWRITE",
    "FULL_OVERWRITE",
)
_STORAGE_POLICIES = ("STANDARD", "IA", "ARCHIVE", "DEEP_ARCHIVE", "SRC_STORAGE_MAPPING")
_CONSISTENCY = ("size_last_modified", "crc64", "no_check")
_PRIORITIES = ("HIGH", "MEDIUM", "LOW")
_TASK_TYPES = ("object", "prefix", "list", "url_list")
_TASK_TYPE_CUMULATIVE = (6, 9, 11, 12)


class OddTask(enum.Enum):
    """Task objects a careless or buggy producer might send; clients must survive each."""

    YEAR_10000 = "year_10000"  # start_time 253402300800000: past what a datetime holds
    INT64_MAX = "int64_max"  # start_time 2**63 - 1
    SECONDS = "seconds"  # start_time in seconds, not milliseconds, of a task 0-2 days old
    NAME_NULL = "name_null"
    NAME_NUMBER = "name_number"


def make_odd(task: dict[str, Any], kind: OddTask, *, now_ms: int, rng: random.Random) -> None:
    """Turn one generated task into the odd kind, in place."""
    if kind is OddTask.YEAR_10000:
        task["start_time"] = 253_402_300_800_000
    elif kind is OddTask.INT64_MAX:
        task["start_time"] = 2**63 - 1
    elif kind is OddTask.SECONDS:
        task["start_time"] = (now_ms - _between(rng, 0, 2 * 86_400_000)) // 1000
    elif kind is OddTask.NAME_NULL:
        task["name"] = None
    else:
        task["name"] = _between(rng, 1, 10**6)


@dataclass(frozen=True, slots=True)
class PopulationConfig:
    """The mix of a generated population; every share is a fraction of all tasks."""

    status_weights: tuple[tuple[int, float], ...] = DEFAULT_STATUS_WEIGHTS
    # Finished and unknown-status tasks start anywhere in this range before `now`.
    age_range: tuple[timedelta, timedelta] = (timedelta(days=1), timedelta(days=180))
    # Active tasks are recent: waiting ones are failed by OMS after 30 days anyway.
    active_age_range: tuple[timedelta, timedelta] = (timedelta(minutes=5), timedelta(days=3))
    zero_start_time_share: float = 0.01
    absent_start_time_share: float = 0.005
    grouped_share: float = 0.3
    group_count: int = 5
    sync_share: float = 0.1
    unicode_name_share: float = 0.05
    # Share of finished tasks made odd, cycling through `odd_kinds` (0 draws nothing extra,
    # so default populations stay as they were).
    odd_share: float = 0.0
    odd_kinds: tuple[OddTask, ...] = tuple(OddTask)


def generate_tasks(
    *, project_id: str, count: int, seed: int, now: datetime, config: PopulationConfig
) -> list[dict[str, Any]]:
    """`count` task objects for one project; reproducible from (seed, project_id, now)."""
    # String seeds hash with SHA-512 inside `random`, independent of PYTHONHASHSEED.
    rng = random.Random(f"oms-population:{seed}:{project_id}")
    codes = [code for code, _ in config.status_weights]
    cumulative = list(itertools.accumulate(weight for _, weight in config.status_weights))
    groups = [
        str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(config.group_count)
    ]
    sync_groups = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(2)]
    now_ms = int(now.timestamp() * 1000)
    seen: set[int] = set()
    tasks = []
    odd = 0
    for _ in range(count):
        task_id = rng.randrange(10**14, 10**15)
        while task_id in seen:
            task_id = rng.randrange(10**14, 10**15)
        seen.add(task_id)
        status = _weighted(rng, codes, cumulative)
        task = _task(rng, task_id, status, now_ms, config, groups, sync_groups)
        if config.odd_share > 0 and status in (3, 4, 5) and rng.random() < config.odd_share:
            make_odd(task, config.odd_kinds[odd % len(config.odd_kinds)], now_ms=now_ms, rng=rng)
            odd += 1
        tasks.append(task)
    return tasks


def _task(
    rng: random.Random,
    task_id: int,
    status: int,
    now_ms: int,
    config: PopulationConfig,
    groups: list[str],
    sync_groups: list[str],
) -> dict[str, Any]:
    low, high = config.active_age_range if status in ACTIVE_CODES else config.age_range
    age_ms = _between(rng, int(low.total_seconds() * 1000), int(high.total_seconds() * 1000))
    start_ms = now_ms - age_ms
    started = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    month = f"{started.year:04d}-{started.month:02d}"
    name = _name(rng, month, config)

    draw = rng.random()
    if draw < config.sync_share and sync_groups:
        group_type, group_id = "SYNC_TASK", _pick(rng, sync_groups)
    elif draw < config.sync_share + config.grouped_share and groups:
        group_type, group_id = "GROUP_TASK", _pick(rng, groups)
    else:
        group_type, group_id = "NORMAL_TASK", ""
    task_type = _weighted(rng, _TASK_TYPES, _TASK_TYPE_CUMULATIVE)

    total_num = _between(rng, 1, 2_000_000)
    total_size = total_num * _between(rng, 1_000, 5_000_000)
    progress = _progress(rng, status)
    successful = int(total_num * progress)
    failed = total_num - successful if status == 4 else 0
    skipped = _between(rng, 0, successful // 10) if successful else 0
    complete_size = int(total_size * progress)
    total_time = 0 if status in (0, 1) else _between(rng, 60_000, 36 * 3_600_000)
    left_time = 0 if status in (3, 4, 5) else _between(rng, 0, 12 * 3_600_000)
    error_code, error_msg = _pick(rng, _FAILURES) if status == 4 else ("", "")
    src_bucket = f"{_pick(rng, _SOURCES)}-{_pick(rng, _SUBJECTS)}-{_between(rng, 1, 99):02d}"
    listed = task_type in ("list", "url_list")

    task: dict[str, Any] = {
        "bandwidth_policy": [
            {"start": "00:00", "end": "06:00", "max_bandwidth": 100 * 1024 * 1024}
            for _ in range(_pick(rng, (0, 0, 0, 1)))
        ],
        "complete_size": complete_size,
        "consistency_check": _pick(rng, _CONSISTENCY),
        "description": _pick(rng, ("", "", "", f"migration of {src_bucket}")),
        "dst_node": {
            "bucket": f"obs-{src_bucket}",
            "region": _pick(rng, _REGIONS),
            "save_prefix": _pick(rng, ("", "", "migrated/", f"{month.replace('-', '/')}/")),
        },
        "dst_storage_policy": _pick(rng, _STORAGE_POLICIES),
        "enable_failed_object_recording": rng.random() < 0.8,
        "enable_metadata_migration": rng.random() < 0.3,
        "enable_requester_pays": rng.random() < 0.05,
        "enable_restore": rng.random() < 0.1,
        "error_reason": {"error_code": error_code, "error_msg": error_msg},
        "failed_num": failed,
        "failed_object_record": {
            "result": status == 4,
            "list_file_key": f"failed/{task_id}.txt" if status == 4 else "",
            "error_code": "",
        },
        "group_id": group_id,
        "group_type": group_type,
        "id": task_id,
        "is_query_over": status in (3, 4, 5),
        "left_time": left_time,
        "migrate_since": 0 if rng.random() < 0.8 else now_ms - _between(rng, 1, 400) * 86_400_000,
        "migrate_speed": 0 if status != 2 else _between(rng, 1_000_000, 500_000_000),
        "name": name,
        "object_overwrite_mode": _pick(rng, _OVERWRITE_MODES),
        "obs_system": _pick(rng, ("BUCKET", "BUCKET", "PFS")),
        "progress": progress,
        "real_size": complete_size,
        "skip_record_error_reason": "",
        "skipped_num": skipped,
        "smn_info": {"notify_result": False, "notify_error_message": "", "topic_name": ""},
        "source_cdn": {"domain": "", "protocol": "", "authentication_type": "NONE"},
        "src_node": {
            "app_id": "" if rng.random() < 0.9 else f"{_between(rng, 10**9, 10**10 - 1)}",
            "bucket": src_bucket,
            "cloud_type": _pick(rng, _CLOUD_TYPES),
            "list_file": {
                "list_file_key": f"lists/{task_id}.txt" if listed else "",
                "obs_bucket": "obs-list-files" if listed else "",
                "list_file_num": str(_between(rng, 1, 20)) if listed else "",
            },
            "object_key": [f"{s}/" for s in rng.sample(_SUBJECTS, _between(rng, 0, 2))]
            if task_type == "prefix"
            else [],
            "region": _pick(rng, _REGIONS),
        },
        "start_time": start_ms,
        "status": status,
        "success_record_error_reason": "",
        "successful_num": successful,
        "task_priority": _pick(rng, _PRIORITIES),
        "task_type": task_type,
        "total_num": total_num,
        "total_size": total_size,
        "total_time": total_time,
    }
    draw = rng.random()
    if draw < config.zero_start_time_share:
        task["start_time"] = 0
    elif draw < config.zero_start_time_share + config.absent_start_time_share:
        del task["start_time"]
    return task


def _pick(rng: random.Random, options: Sequence[T]) -> T:
    # random.choice/randint cost several Python calls each; at 100,000 tasks x 40 draws
    # the C-level random() keeps startup short.
    return options[int(rng.random() * len(options))]


def _weighted(rng: random.Random, options: Sequence[T], cumulative: Sequence[float]) -> T:
    return options[bisect.bisect(cumulative, rng.random() * cumulative[-1])]


def _between(rng: random.Random, low: int, high: int) -> int:
    return low + int(rng.random() * (high - low + 1))


def _name(rng: random.Random, month: str, config: PopulationConfig) -> str:
    if rng.random() < config.unicode_name_share:
        return _pick(rng, _UNICODE_NAMES).format(n=_between(rng, 1, 999))
    parts = (_pick(rng, _CADENCES), _pick(rng, _VERBS), _pick(rng, _SOURCES), _pick(rng, _SUBJECTS))
    return f"{'-'.join(parts)}-{month}"


def _progress(rng: random.Random, status: int) -> float:
    if status == 5:
        return 1.0
    if status in (0, 1):
        return 0.0
    return round(rng.random(), 3)
