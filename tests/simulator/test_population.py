"""Population: reproducible from its seed, and shaped like the official SDK's task model."""

from __future__ import annotations

import importlib
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.simulator.population import ACTIVE_CODES, PopulationConfig, generate_tasks

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
PROJECT = "0123456789abcdef0123456789abcdef"
_MODELS = importlib.import_module("huaweicloudsdkoms.v2.model")


def _generate(count: int = 300, seed: int = 7, **knobs: Any) -> list[dict[str, Any]]:
    return generate_tasks(
        project_id=PROJECT, count=count, seed=seed, now=NOW, config=PopulationConfig(**knobs)
    )


def _type_errors(value: Any, declared: str, where: str) -> list[str]:
    """Check a JSON value against an SDK `openapi_types` declaration; all keys required."""
    if declared.startswith("list[") and declared.endswith("]"):
        if not isinstance(value, list):
            return [f"{where}: expected list, got {type(value).__name__}"]
        inner = declared[5:-1]
        return [err for i, item in enumerate(value) for err in _type_errors(item, inner, where)]
    scalars: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
    if declared in scalars:
        expected = scalars[declared]
        # bool is an int subclass in Python but not in JSON: keep them apart.
        ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
        return [] if ok else [f"{where}: expected {declared}, got {value!r}"]
    model = getattr(_MODELS, declared)
    if not isinstance(value, dict):
        return [f"{where}: expected {declared} object, got {value!r}"]
    errors = [f"{where}: unknown key {key}" for key in value if key not in model.openapi_types]
    for key, inner in model.openapi_types.items():
        if key not in value:
            errors.append(f"{where}.{key}: missing")
        else:
            errors.extend(_type_errors(value[key], inner, f"{where}.{key}"))
    return errors


def test_same_seed_gives_the_same_tasks() -> None:
    """Two generations with one seed are identical; another seed differs."""
    assert _generate(seed=7) == _generate(seed=7)
    assert _generate(seed=7) != _generate(seed=8)


def test_projects_get_different_populations() -> None:
    """The project id takes part in the seed, so projects do not mirror each other."""
    other = generate_tasks(
        project_id="f" * 32, count=300, seed=7, now=NOW, config=PopulationConfig()
    )
    assert {t["id"] for t in other}.isdisjoint({t["id"] for t in _generate()})


def test_every_task_matches_the_sdk_model_types() -> None:
    """After a JSON round trip every task carries every TaskResp key with the declared type."""
    tasks = json.loads(json.dumps(_generate(absent_start_time_share=0.0)))
    errors = [err for task in tasks for err in _type_errors(task, "TaskResp", str(task["id"]))]
    assert errors == []


def test_ids_are_unique_fifteen_digit_integers() -> None:
    """Ids are positive 15-digit ints, unique within the project."""
    ids = [task["id"] for task in _generate(count=2000)]
    assert len(set(ids)) == len(ids)
    assert all(10**14 <= task_id < 10**15 for task_id in ids)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (((5, 1.0),), {5}),
        (((9, 1.0),), {9}),
        (((3, 1.0), (4, 1.0)), {3, 4}),
        (((0, 1.0), (2, 0.0)), {0}),
    ],
)
def test_status_mix_follows_the_weights(
    weights: tuple[tuple[int, float], ...], expected: set[int]
) -> None:
    """Only codes with weight appear, and each of them does."""
    assert {task["status"] for task in _generate(status_weights=weights)} == expected


def test_default_mix_is_mostly_finished_with_some_unknown_codes() -> None:
    """Defaults: succeeded dominates, a few active tasks, and some unknown status 9."""
    statuses = Counter(task["status"] for task in _generate(count=4000))
    assert statuses[5] > 0.6 * 4000
    assert 0 < sum(statuses[code] for code in ACTIVE_CODES) < 0.2 * 4000
    assert statuses[9] > 0


@pytest.mark.parametrize(
    ("zero", "absent", "expect_zero", "expect_absent"),
    [(1.0, 0.0, True, False), (0.0, 1.0, False, True), (0.0, 0.0, False, False)],
)
def test_start_time_can_be_zero_or_missing(
    zero: float, absent: float, expect_zero: bool, expect_absent: bool
) -> None:
    """The start_time knobs produce 0 or a missing key; otherwise it is epoch milliseconds."""
    tasks = _generate(count=50, zero_start_time_share=zero, absent_start_time_share=absent)
    assert all(("start_time" not in t) == expect_absent for t in tasks)
    assert all((t.get("start_time") == 0) == expect_zero for t in tasks)
    if not expect_zero and not expect_absent:
        assert all(t["start_time"] > 10**12 for t in tasks)


def test_ages_fall_in_their_ranges() -> None:
    """Active tasks start within the active range, others within the general one."""
    tasks = _generate(count=1000, zero_start_time_share=0.0, absent_start_time_share=0.0)
    now_ms = NOW.timestamp() * 1000
    for task in tasks:
        age = timedelta(milliseconds=now_ms - task["start_time"])
        config = PopulationConfig()
        low, high = config.active_age_range if task["status"] in ACTIVE_CODES else config.age_range
        assert low <= age <= high


def test_groups_are_shared_or_empty_and_match_their_type() -> None:
    """NORMAL_TASK has no group; grouped tasks share a handful of group ids."""
    tasks = _generate(count=500)
    for task in tasks:
        assert (task["group_id"] == "") == (task["group_type"] == "NORMAL_TASK")
    groups = Counter(task["group_id"] for task in tasks if task["group_id"])
    assert groups
    assert max(groups.values()) > 1
    assert {t["group_type"] for t in tasks} == {"NORMAL_TASK", "GROUP_TASK", "SYNC_TASK"}
    assert {t["task_type"] for t in tasks} <= {"list", "object", "prefix", "url_list"}


def test_names_look_like_real_task_names() -> None:
    """Names are cadence-verb-source-subject-YYYY-MM, with a unicode share on demand."""
    plain = _generate(count=100, unicode_name_share=0.0)
    assert all(re.fullmatch(r"[a-z0-9-]+-\d{4}-\d{2}", t["name"]) for t in plain)
    exotic = _generate(count=100, unicode_name_share=1.0)
    assert all(not t["name"].isascii() for t in exotic)


def test_failed_tasks_say_why_and_finished_ones_are_complete() -> None:
    """Failed tasks carry an error_reason code; succeeded ones have progress 1."""
    for task in _generate(count=500):
        if task["status"] == 4:
            assert task["error_reason"]["error_code"].startswith("OMS.")
        else:
            assert task["error_reason"]["error_code"] == ""
        if task["status"] == 5:
            assert task["progress"] == 1.0


def _odd_kind(task: dict[str, Any], *, now_ms: int) -> str | None:
    if not isinstance(task["name"], str):
        return "name_null" if task["name"] is None else "name_number"
    start = task.get("start_time") or 0
    if start in (253_402_300_800_000, 2**63 - 1):
        return str(start)
    if 0 < start < 10**12:
        # Seconds, not milliseconds, of a task started in the last two days.
        assert now_ms // 1000 - 2 * 86_400 <= start <= now_ms // 1000
        return "seconds"
    return None


def test_odd_tasks_cycle_through_their_kinds() -> None:
    """odd_share makes finished tasks odd in each way in turn, and only finished ones."""
    now_ms = int(NOW.timestamp() * 1000)
    odd = generate_tasks(
        project_id="p", count=400, seed=5, now=NOW, config=PopulationConfig(odd_share=0.2)
    )
    kinds: Counter[str] = Counter()
    for task in odd:
        kind = _odd_kind(task, now_ms=now_ms)
        if kind is not None:
            assert task["status"] in (3, 4, 5)
            kinds[kind] += 1
    assert len(kinds) == 5
    assert max(kinds.values()) - min(kinds.values()) <= 1
    assert 40 <= sum(kinds.values()) <= 100


def test_no_odd_share_draws_nothing_extra() -> None:
    """With odd_share 0 (the default) no task is odd."""
    now_ms = int(NOW.timestamp() * 1000)
    tasks = generate_tasks(project_id="p", count=400, seed=5, now=NOW, config=PopulationConfig())
    assert [task for task in tasks if _odd_kind(task, now_ms=now_ms)] == []
