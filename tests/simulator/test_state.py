"""The task store: paging order, filters, deletes, stops and how tasks move on with the clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from conftest import FakeClock

from worker.simulator.config import (
    DEFAULT_PROJECT_ID,
    ChangeConfig,
    SimulatorConfig,
    TimingConfig,
)
from worker.simulator.population import PopulationConfig
from worker.simulator.state import (
    FAILED,
    RENAMED,
    RESTARTED,
    RETRIED,
    RUNNING,
    SUCCEEDED,
    ApiRefusal,
    SimulatorState,
    sort_key,
)

P = DEFAULT_PROJECT_ID


def _state(
    clock: FakeClock,
    *,
    tasks: int = 40,
    weights: tuple[tuple[int, float], ...] | None = None,
    timing: TimingConfig | None = None,
    **population: Any,
) -> SimulatorState:
    knobs: dict[str, Any] = dict(population)
    if weights is not None:
        knobs["status_weights"] = weights
    config = SimulatorConfig(
        tasks_per_project=tasks,
        population=PopulationConfig(**knobs),
        timing=timing or TimingConfig(),
    )
    return SimulatorState(config, now=clock.now)


def _ids(state: SimulatorState, **filters: Any) -> list[int]:
    tasks, _ = state.list_tasks(P, offset=0, limit=10_000, **filters)
    return [t["id"] for t in tasks]


def _refusal(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ApiRefusal) as caught:
        call(*args, **kwargs)
    return caught.value.code


def test_listing_is_newest_first_with_missing_start_times_last(fake_clock: FakeClock) -> None:
    """Order: start_time descending, ties by id, zero/missing start_time at the end."""
    state = _state(fake_clock, tasks=200, zero_start_time_share=0.1, absent_start_time_share=0.1)
    tasks, count = state.list_tasks(P, offset=0, limit=200)
    assert count == 200
    keys = [sort_key(t) for t in tasks]
    assert keys == sorted(keys)
    starts = [t.get("start_time") or 0 for t in tasks]
    assert starts == sorted(starts, reverse=True)
    assert starts[-1] == 0


def test_offset_pages_cover_every_task_once(fake_clock: FakeClock) -> None:
    """Reading by offset without deleting visits each task exactly once."""
    state = _state(fake_clock, tasks=95)
    seen: list[int] = []
    offset = 0
    while True:
        page, count = state.list_tasks(P, offset=offset, limit=10)
        assert count == 95
        seen += [t["id"] for t in page]
        offset += len(page)
        if len(page) < 10:
            break
    assert sorted(seen) == sorted(_ids(state))
    assert len(seen) == 95


def test_deleting_between_pages_shifts_later_pages(fake_clock: FakeClock) -> None:
    """Deleting page 1 then reading offset 10 skips the ten tasks that moved up."""
    state = _state(fake_clock, tasks=30, weights=((5, 1.0),))
    everything = _ids(state)
    first, _ = state.list_tasks(P, offset=0, limit=10)
    for task in list(first):
        state.delete_task(P, task["id"], by="AK")
    second, count = state.list_tasks(P, offset=10, limit=10)
    assert count == 20
    assert [t["id"] for t in second] == everything[20:30]


@pytest.mark.parametrize(
    ("code", "deletable"),
    [(0, False), (1, False), (2, False), (3, True), (4, True), (5, True), (6, False),
     (7, False), (9, False)],
)  # fmt: skip
def test_delete_is_refused_for_active_and_unknown_states(
    fake_clock: FakeClock, code: int, deletable: bool
) -> None:
    """Only 3, 4 and 5 can be deleted; everything else answers OMS.0063 and is kept."""
    state = _state(fake_clock, tasks=3, weights=((code, 1.0),))
    task_id = _ids(state)[0]
    if deletable:
        state.delete_task(P, task_id, by="AK")
        assert task_id not in _ids(state)
        assert [r.task_id for r in state.deletions] == [task_id]
    else:
        assert _refusal(state.delete_task, P, task_id, by="AK") == "OMS.0063"
        assert task_id in _ids(state)
        assert [(r.task_id, r.status) for r in state.refused_deletes] == [(task_id, code)]


def test_deleted_task_is_gone_for_show_delete_and_stop(fake_clock: FakeClock) -> None:
    """After a delete: show, delete and stop answer OMS.1009; the record says who and when."""
    state = _state(fake_clock, tasks=3, weights=((4, 1.0),))
    task_id = _ids(state)[0]
    state.delete_task(P, task_id, by="AKX")
    assert _refusal(state.show_task, P, task_id) == "OMS.1009"
    assert _refusal(state.delete_task, P, task_id, by="AKX") == "OMS.1009"
    assert _refusal(state.stop_task, P, task_id, by="AKX") == "OMS.1009"
    (record,) = state.deletions
    assert (record.task_id, record.project_id, record.by, record.at) == (
        task_id,
        P,
        "AKX",
        fake_clock.now(),
    )


@pytest.mark.parametrize(("failed_share", "final"), [(0.0, 5), (1.0, 4)], ids=["succeeds", "fails"])
def test_migrating_tasks_finish_after_their_time(
    fake_clock: FakeClock, failed_share: float, final: int
) -> None:
    """A migrating task stays 2 until its finish time, then becomes 5 (or 4 with a reason)."""
    timing = TimingConfig(
        finish_after=(timedelta(seconds=10), timedelta(seconds=10)), failed_share=failed_share
    )
    state = _state(fake_clock, tasks=5, weights=((2, 1.0),), timing=timing)
    fake_clock.advance(timedelta(seconds=9))
    assert state.remaining()[P]["by_status"] == {"2": 5}
    fake_clock.advance(timedelta(seconds=1))
    assert state.remaining()[P]["by_status"] == {str(final): 5}
    task = state.show_task(P, _ids(state)[0])
    assert task["left_time"] == 0
    assert (task["error_reason"]["error_code"] != "") == (final == 4)
    assert _ids(state, status=final) == _ids(state)


def test_stop_pauses_through_pausing(fake_clock: FakeClock) -> None:
    """stop: 2 -> 7 (delete refused) -> 3 after the pausing delay (delete allowed)."""
    timing = TimingConfig(
        finish_after=(timedelta(hours=1), timedelta(hours=1)),
        pausing_delay=timedelta(seconds=5),
        sticky_pause_share=0.0,
    )
    state = _state(fake_clock, tasks=2, weights=((2, 1.0),), timing=timing)
    task_id = _ids(state)[0]
    state.stop_task(P, task_id, by="AK")
    assert state.show_task(P, task_id)["status"] == 7
    assert _refusal(state.stop_task, P, task_id, by="AK") == "OMS.0066"
    assert _refusal(state.delete_task, P, task_id, by="AK") == "OMS.0063"
    fake_clock.advance(timedelta(seconds=5))
    assert state.show_task(P, task_id)["status"] == 3
    state.delete_task(P, task_id, by="AK")
    assert [r.task_id for r in state.stops] == [task_id]


def test_stopped_task_does_not_finish_later(fake_clock: FakeClock) -> None:
    """The finish scheduled before a stop is void: the task stays paused."""
    timing = TimingConfig(
        finish_after=(timedelta(seconds=10), timedelta(seconds=10)),
        pausing_delay=timedelta(seconds=1),
    )
    state = _state(fake_clock, tasks=1, weights=((2, 1.0),), timing=timing)
    task_id = _ids(state)[0]
    state.stop_task(P, task_id, by="AK")
    fake_clock.advance(timedelta(minutes=5))
    assert state.show_task(P, task_id)["status"] == 3


@pytest.mark.parametrize("attempts", [1, 3])
def test_some_stopped_tasks_refuse_deletes_for_a_while(
    fake_clock: FakeClock, attempts: int
) -> None:
    """With the sticky share at 1, a paused-after-stop task answers OMS.0063 `attempts` times."""
    timing = TimingConfig(
        finish_after=(timedelta(hours=1), timedelta(hours=1)),
        pausing_delay=timedelta(seconds=1),
        sticky_pause_share=1.0,
        sticky_pause_attempts=attempts,
    )
    state = _state(fake_clock, tasks=1, weights=((2, 1.0),), timing=timing)
    task_id = _ids(state)[0]
    state.stop_task(P, task_id, by="AK")
    fake_clock.advance(timedelta(seconds=1))
    for _ in range(attempts):
        assert _refusal(state.delete_task, P, task_id, by="AK") == "OMS.0063"
    state.delete_task(P, task_id, by="AK")
    assert [r.status for r in state.refused_deletes] == [3] * attempts


@pytest.mark.parametrize("code", [0, 1, 3, 4, 5, 6, 7, 9])
def test_stop_refuses_tasks_that_are_not_migrating(fake_clock: FakeClock, code: int) -> None:
    """stop on anything but status 2 answers OMS.0066 and changes nothing."""
    state = _state(fake_clock, tasks=1, weights=((code, 1.0),))
    task_id = _ids(state)[0]
    assert _refusal(state.stop_task, P, task_id, by="AK") == "OMS.0066"
    assert state.show_task(P, task_id)["status"] == code
    assert state.stops == []


def test_pausing_tasks_at_start_become_paused(fake_clock: FakeClock) -> None:
    """Tasks generated as pausing reach paused after the pausing delay."""
    timing = TimingConfig(pausing_delay=timedelta(seconds=3))
    state = _state(fake_clock, tasks=4, weights=((7, 1.0),), timing=timing)
    assert state.remaining()[P]["by_status"] == {"7": 4}
    fake_clock.advance(timedelta(seconds=3))
    assert state.remaining()[P]["by_status"] == {"3": 4}


def test_filters_and_count(fake_clock: FakeClock) -> None:
    """status, group_id and task_name (case-insensitive substring) filter; count is the total."""
    state = _state(fake_clock, tasks=300, unicode_name_share=0.2)
    everything, _ = state.list_tasks(P, offset=0, limit=300)

    by_status, count = state.list_tasks(P, offset=0, limit=5, status=5)
    assert count == sum(1 for t in everything if t["status"] == 5)
    assert len(by_status) == 5
    assert all(t["status"] == 5 for t in by_status)

    group = next(t["group_id"] for t in everything if t["group_id"])
    grouped, count = state.list_tasks(P, offset=0, limit=100, group_id=group)
    assert count == sum(1 for t in everything if t["group_id"] == group) == len(grouped)

    named, count = state.list_tasks(P, offset=0, limit=100, task_name="NIGHTLY")
    expected = [t["id"] for t in everything if "nightly" in t["name"].casefold()]
    assert [t["id"] for t in named] == expected[:100]
    assert count == len(expected)

    both, count = state.list_tasks(P, offset=1, limit=100, status=5, task_name="copy")
    expected = [t["id"] for t in everything if t["status"] == 5 and "copy" in t["name"]]
    assert [t["id"] for t in both] == expected[1:101]
    assert count == len(expected)


def test_remaining_counts_per_project_and_status(fake_clock: FakeClock) -> None:
    """remaining() reports totals and per-status counts for every hosted project."""
    config = SimulatorConfig(project_ids=("a" * 32, "b" * 32), tasks_per_project=25)
    state = SimulatorState(config, now=fake_clock.now)
    remaining = state.remaining()
    assert set(remaining) == {"a" * 32, "b" * 32}
    for project in remaining.values():
        assert project["total"] == 25 == sum(project["by_status"].values())


def _changing(clock: FakeClock, **changes: Any) -> SimulatorState:
    config = SimulatorConfig(
        tasks_per_project=60,
        population=PopulationConfig(status_weights=((4, 0.5), (5, 0.5))),
        changes=ChangeConfig(**changes),
    )
    return SimulatorState(config, now=clock.now)


def _planned(state: SimulatorState, kind: str) -> list[int]:
    return sorted(task_id for (_, task_id), k in state.planned_changes.items() if k == kind)


def test_retried_task_refuses_its_first_delete_then_succeeds(fake_clock: FakeClock) -> None:
    """A failed task a person retries: the first delete meets OMS.0063, later it succeeded."""
    state = _changing(fake_clock, retried=3, retry_runs=timedelta(seconds=5))
    retried = _planned(state, RETRIED)
    assert len(retried) == 3
    assert all(state.projects[P].tasks[i]["status"] == FAILED for i in retried)
    assert set(retried) <= set(_ids(state, status=FAILED))  # listed as failed
    first = retried[0]
    assert _refusal(state.delete_task, P, first, by="ak") == "OMS.0063"
    assert state.projects[P].tasks[first]["status"] == RUNNING
    assert first not in _ids(state, status=FAILED)
    fake_clock.advance(timedelta(seconds=4))
    assert _refusal(state.delete_task, P, first, by="ak") == "OMS.0063"
    fake_clock.advance(timedelta(seconds=1))
    assert state.show_task(P, first)["status"] == SUCCEEDED
    state.delete_task(P, first, by="ak")
    assert [(c["task_id"], c["kind"]) for c in state.snapshot()["changes"]] == [(first, RETRIED)]
    # The others are untouched until a delete reaches them.
    assert all(state.show_task(P, i)["status"] == FAILED for i in retried[1:])


def test_renamed_and_restarted_tasks_change_after_the_first_listing(
    fake_clock: FakeClock,
) -> None:
    """Renames and restarts happen `after` the first list request, not before."""
    state = _changing(fake_clock, renamed=2, restarted=2, after=timedelta(seconds=10))
    renamed, restarted = _planned(state, RENAMED), _planned(state, RESTARTED)
    assert len(renamed) == len(restarted) == 2
    assert not set(renamed) & set(restarted)
    fake_clock.advance(timedelta(hours=1))  # no listing yet: nothing is due
    names = {i: state.show_task(P, i)["name"] for i in renamed}
    starts = {i: state.show_task(P, i)["start_time"] for i in restarted}
    state.list_tasks(P, offset=0, limit=100)
    fake_clock.advance(timedelta(seconds=9))
    assert {i: state.show_task(P, i)["name"] for i in renamed} == names
    fake_clock.advance(timedelta(seconds=1))
    assert {i: state.show_task(P, i)["name"] for i in renamed} == {
        i: f"{name}-keep" for i, name in names.items()
    }
    moment = int(fake_clock.now().timestamp() * 1000)
    for task_id in restarted:
        assert state.show_task(P, task_id)["start_time"] == moment > starts[task_id]
    # A restarted task moves to the head of the listing (newest first), in every index.
    tasks, _ = state.list_tasks(P, offset=0, limit=100)
    assert {t["id"] for t in tasks[:2]} == set(restarted)
    keys = [sort_key(t) for t in tasks]
    assert keys == sorted(keys)
    by_failed, _ = state.list_tasks(P, offset=0, limit=100, status=FAILED)
    assert [sort_key(t) for t in by_failed] == sorted(sort_key(t) for t in by_failed)
    assert len(state.snapshot()["changes"]) == 4


def test_no_changes_by_default(fake_clock: FakeClock) -> None:
    """The default config changes nothing after listing."""
    state = _changing(fake_clock)
    state.list_tasks(P, offset=0, limit=100)
    fake_clock.advance(timedelta(days=1))
    assert state.planned_changes == {}
    assert state.snapshot()["changes"] == []
