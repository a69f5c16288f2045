"""Properties of the selection policy over random tasks and policies (hypothesis).

The checks are written against the raw task fields (status code, epoch milliseconds, name,
group), not against `select`'s own structure: a task the policy selects must satisfy every
criterion, a task it keeps must fail the criterion its reason names, and tightening a policy
or moving the clock back can never select more.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.oms.models import ACTIVE_STATES, DELETABLE_STATES, Task, TaskStatus
from worker.policy import Policy, SkipReason, select

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
DAY_MS = 86_400_000
KNOWN_CODES = frozenset(int(status) for status in TaskStatus if status is not TaskStatus.UNKNOWN)
ACTIVE_CODES = frozenset(int(status) for status in ACTIVE_STATES)
GROUPS = ("", "g-1", "g-2")
GLOBS = ("*", "a*", "*b", "db-*", "*copy*", "?", "[ab]*", "nightly copy/é*")
NAME_PARTS = ("a", "b", "db-", "copy", "nightly copy/é", "-", "x", "迁移")

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def _often(draw: st.DrawFn, likely: Any, anything: st.SearchStrategy[Any]) -> Any:
    """`likely` three times in five, else a draw from `anything` (keeps selections frequent)."""
    return likely if draw(st.integers(0, 4)) < 3 else draw(anything)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Any policy the Policy type accepts."""
    stop_running = draw(st.booleans())
    allowed = sorted(DELETABLE_STATES | (ACTIVE_STATES if stop_running else frozenset()))
    states = frozenset(draw(st.lists(st.sampled_from(allowed), min_size=1, unique=True)))
    older_than = draw(st.none() | st.integers(0, 200 * DAY_MS).map(_millis))
    started_before = draw(
        st.none() | st.integers(NOW_MS - 300 * DAY_MS, NOW_MS + DAY_MS).map(_moment)
    )
    if older_than is None and started_before is None:
        older_than = _millis(draw(st.integers(0, 200 * DAY_MS)))
    globs = st.lists(st.sampled_from(GLOBS), max_size=2)
    return Policy(
        states=states,
        older_than=older_than,
        started_before=started_before,
        name_include=tuple(_often(draw, [], globs)),
        name_exclude=tuple(_often(draw, [], globs)),
        protect_ids=frozenset(draw(st.lists(st.integers(1, 40), max_size=5))),
        group_id=_often(draw, None, st.sampled_from(GROUPS)),
        stop_running=stop_running,
    )


@st.composite
def raw_tasks_for(draw: st.DrawFn, policy: Policy) -> dict[str, Any]:
    """A task object as OMS lists it, often (not always) one the policy would select.

    Known and unknown codes, missing, zero and future start times, odd names: everything a
    listing can hold. Without the bias towards `policy`, hardly any draw would be selected
    and the properties about selected tasks would go untested.
    """
    code = _often(
        draw,
        int(draw(st.sampled_from(sorted(policy.states)))),
        st.sampled_from(sorted(KNOWN_CODES)) | st.integers(-3, 12),
    )
    oldest = NOW_MS - 400 * DAY_MS
    newest = NOW_MS - (policy.older_than or timedelta()) // timedelta(milliseconds=1)
    if policy.started_before is not None:
        newest = min(newest, int(policy.started_before.timestamp() * 1000) - 1)
    old_enough = st.integers(oldest, newest) if newest >= oldest else st.just(oldest)
    # From 400 days ago to a day in the future (a skewed clock on either side); or none.
    any_start = st.none() | st.just(0) | st.integers(oldest, NOW_MS + DAY_MS)
    start = _often(draw, draw(old_enough), any_start)
    protected = sorted(policy.protect_ids)
    any_id = st.integers(1, 40)
    raw: dict[str, Any] = {
        "id": draw(st.sampled_from(protected) | any_id if protected else any_id),
        "name": "".join(draw(st.lists(st.sampled_from(NAME_PARTS), max_size=4))),
        "status": code,
        "group_id": _often(draw, policy.group_id or "", st.sampled_from(GROUPS)),
    }
    if start is not None:
        raw["start_time"] = start
    return raw


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, Any], Policy]:
    """A policy and a task to judge with it."""
    policy = draw(policies())
    return draw(raw_tasks_for(policy)), policy


def _millis(value: int) -> timedelta:
    return timedelta(milliseconds=value)


def _moment(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


def _start(raw: dict[str, Any]) -> datetime | None:
    millis = raw.get("start_time") or 0
    return _moment(millis) if millis > 0 else None


def _criteria(raw: dict[str, Any], policy: Policy, now: datetime) -> dict[SkipReason, bool]:
    """For each reason to keep a task: whether the raw task gives that reason (True = keep)."""
    code = raw["status"]
    start = _start(raw)
    too_young = start is not None and (
        (policy.older_than is not None and now - start < policy.older_than)
        or (policy.started_before is not None and start >= policy.started_before)
    )
    name = raw["name"]
    return {
        SkipReason.PROTECTED: raw["id"] in policy.protect_ids,
        SkipReason.UNKNOWN_STATE: code not in KNOWN_CODES,
        SkipReason.ACTIVE_STATE: code in ACTIVE_CODES
        and (code not in {int(s) for s in policy.states} or not policy.stop_running),
        SkipReason.STATE: code in KNOWN_CODES
        and code not in ACTIVE_CODES
        and code not in {int(s) for s in policy.states},
        SkipReason.AGE_UNKNOWN: start is None,
        SkipReason.TOO_YOUNG: too_young,
        SkipReason.EXCLUDED_NAME: any(fnmatchcase(name, glob) for glob in policy.name_exclude),
        SkipReason.NOT_INCLUDED: bool(policy.name_include)
        and not any(fnmatchcase(name, glob) for glob in policy.name_include),
        SkipReason.OTHER_GROUP: policy.group_id is not None and raw["group_id"] != policy.group_id,
    }


@PROPERTY_SETTINGS
@given(case=cases())
def test_selected_exactly_when_no_criterion_keeps_it(case: tuple[dict[str, Any], Policy]) -> None:
    """Selected iff no reason to keep holds; a kept task's reason is one that really holds."""
    raw, policy = case
    task = Task.model_validate(raw)
    reason = select(task, policy=policy, now=NOW)
    holding = {why for why, keeps in _criteria(raw, policy, NOW).items() if keeps}
    if reason is None:
        assert not holding, f"selected although {sorted(holding)}"
    else:
        assert reason in holding, f"kept as {reason} but only {sorted(holding)} hold"


@PROPERTY_SETTINGS
@given(case=cases())
def test_never_selects_what_must_be_kept(case: tuple[dict[str, Any], Policy]) -> None:
    """Protected, unknown-state, unstarted/undated and, without stop_running, active: kept."""
    raw, policy = case
    task = Task.model_validate(raw)
    if select(task, policy=policy, now=NOW) is not None:
        return
    assert raw["id"] not in policy.protect_ids
    assert raw["status"] in KNOWN_CODES
    assert policy.stop_running or raw["status"] not in ACTIVE_CODES
    start = _start(raw)
    assert start is not None
    if policy.older_than is not None:
        assert NOW - start >= policy.older_than
    if policy.started_before is not None:
        assert start < policy.started_before


@PROPERTY_SETTINGS
@given(
    case=cases(),
    extra_protect=st.integers(1, 40),
    extra_exclude=st.sampled_from(GLOBS),
    extra_age=st.integers(0, 100 * DAY_MS).map(_millis),
    group=st.sampled_from(GROUPS),
)
def test_tightening_a_policy_never_selects_more(
    case: tuple[dict[str, Any], Policy],
    extra_protect: int,
    extra_exclude: str,
    extra_age: timedelta,
    group: str,
) -> None:
    """More protection, exclusions, age or a group filter only ever keep more tasks."""
    raw, policy = case
    task = Task.model_validate(raw)
    base = policy.older_than or timedelta()
    tighter = [
        dataclasses.replace(policy, protect_ids=policy.protect_ids | {extra_protect}),
        dataclasses.replace(policy, name_exclude=(*policy.name_exclude, extra_exclude)),
        dataclasses.replace(policy, older_than=base + extra_age),
        # Only a policy without a group filter gains one: "" is a filter too (no group).
        dataclasses.replace(
            policy, group_id=policy.group_id if policy.group_id is not None else group
        ),
    ]
    if len(policy.states) > 1:
        dropped = sorted(policy.states)[0]
        tighter.append(dataclasses.replace(policy, states=policy.states - {dropped}))
    if select(task, policy=policy, now=NOW) is not None:
        for stricter in tighter:
            assert select(task, policy=stricter, now=NOW) is not None, stricter


@PROPERTY_SETTINGS
@given(case=cases(), earlier=st.integers(0, 400 * DAY_MS).map(_millis))
def test_selection_only_grows_with_time(
    case: tuple[dict[str, Any], Policy], earlier: timedelta
) -> None:
    """A task selected at some moment was not selectable earlier unless it is selected now."""
    raw, policy = case
    task = Task.model_validate(raw)
    if select(task, policy=policy, now=NOW - earlier) is None:
        assert select(task, policy=policy, now=NOW) is None


@PROPERTY_SETTINGS
@given(
    states=st.lists(st.sampled_from(list(TaskStatus)), max_size=4, unique=True),
    stop_running=st.booleans(),
    older_than=st.none() | st.integers(-DAY_MS, DAY_MS).map(_millis),
    started_before=st.none() | st.just(NOW) | st.just(NOW.replace(tzinfo=None)),
)
def test_unsafe_policies_cannot_be_built(
    states: list[TaskStatus],
    stop_running: bool,
    older_than: timedelta | None,
    started_before: datetime | None,
) -> None:
    """A Policy needs a state and an age criterion, never UNKNOWN, active states only opted in."""
    arguments: dict[str, Any] = {
        "states": frozenset(states),
        "older_than": older_than,
        "started_before": started_before,
        "stop_running": stop_running,
    }
    unsafe = (
        not states
        or TaskStatus.UNKNOWN in states
        or (bool(set(states) & ACTIVE_STATES) and not stop_running)
        or (older_than is None and started_before is None)
        or (older_than is not None and older_than < timedelta())
        or (started_before is not None and started_before.tzinfo is None)
    )
    if unsafe:
        with pytest.raises(ValueError):  # noqa: PT011 - each rule has its own message
            Policy(**arguments)
    else:
        assert Policy(**arguments).states == frozenset(states)
