"""Sharding targets across an Indexed Job: exact cover, stability, balance, and empty shards."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from pydantic import SecretStr

from worker import runner
from worker.oms.auth import AkSk
from worker.settings import Target, load_settings
from worker.sharding import shard_targets

TARGETS = (
    Target(region="cn-north-4", project_id="p1"),
    Target(region="cn-north-4", project_id="p2"),
    Target(region="ap-southeast-1", project_id="p1"),
    Target(endpoint="https://oms.example.com", project_id="p3"),
    Target(endpoint="http://127.0.0.1:8080", project_id="p4"),
    Target(region="af-south-1", project_id="p5"),
    Target(region="cn-east-3", project_id="p6"),
)


def where_ids(targets: tuple[Target, ...]) -> list[str]:
    """The (region or endpoint, project id) of each target, to compare shards readably."""
    return [f"{t.where}/{t.project_id}" for t in targets]


@pytest.mark.parametrize("size", [0, 1, 2, 5, 7])
@pytest.mark.parametrize("count", [1, 2, 3, 7, 10])
def test_shards_cover_every_target_exactly_once(size: int, count: int) -> None:
    """The union of all shards is the targets, none twice, and sizes differ by at most one."""
    targets = TARGETS[:size]
    shards = [shard_targets(targets, index=index, count=count) for index in range(count)]
    found = [target for shard in shards for target in shard]
    assert sorted(where_ids(tuple(found))) == sorted(where_ids(targets))
    assert len(found) == len(targets)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("count", [2, 3, 4])
def test_shards_do_not_depend_on_config_order(seed: int, count: int) -> None:
    """Every pod gets the same share however the config file orders the targets."""
    shuffled = list(TARGETS)
    random.Random(seed).shuffle(shuffled)
    for index in range(count):
        original = shard_targets(TARGETS, index=index, count=count)
        reordered = shard_targets(tuple(shuffled), index=index, count=count)
        assert sorted(where_ids(reordered)) == sorted(where_ids(original))


def test_one_shard_is_everything_in_config_order() -> None:
    """With one shard the targets come back unchanged, in their configured order."""
    assert shard_targets(TARGETS, index=0, count=1) == TARGETS


def test_a_shard_keeps_config_order() -> None:
    """Within a shard, targets keep the order the config gave them."""
    for index in range(3):
        shard = shard_targets(TARGETS, index=index, count=3)
        positions = [TARGETS.index(target) for target in shard]
        assert positions == sorted(positions)


def test_same_project_in_two_regions_are_two_targets() -> None:
    """A project id in two regions is two targets, and the two can land in different shards."""
    pair = (
        Target(region="cn-north-4", project_id="p"),
        Target(region="ap-southeast-1", project_id="p"),
    )
    shards = [shard_targets(pair, index=index, count=2) for index in range(2)]
    assert [len(shard) for shard in shards] == [1, 1]
    assert {shards[0][0].region, shards[1][0].region} == {"cn-north-4", "ap-southeast-1"}


@pytest.mark.parametrize(
    ("index", "count", "message"),
    [
        (0, 0, "shard count must be at least 1"),
        (0, -1, "shard count must be at least 1"),
        (-1, 2, "shard index must be from 0 to 1"),
        (2, 2, "shard index must be from 0 to 1"),
    ],
)
def test_invalid_shard(index: int, count: int, message: str) -> None:
    """An index outside 0..count-1 or a count below 1 is refused, not silently wrapped."""
    with pytest.raises(ValueError, match=message):
        shard_targets(TARGETS, index=index, count=count)


def test_every_permutation_of_three_agrees() -> None:
    """All orderings of three targets give each shard the same set."""
    three = TARGETS[:3]
    expected = [set(where_ids(shard_targets(three, index=i, count=2))) for i in range(2)]
    for ordering in itertools.permutations(three):
        got = [set(where_ids(shard_targets(ordering, index=i, count=2))) for i in range(2)]
        assert got == expected


async def test_an_empty_shard_runs_and_reports(tmp_path: Path) -> None:
    """A shard without targets lists nothing, exits 0 and still writes its report."""
    flags = {
        "region": "cn-north-4",
        "project_id": "p1",
        "older_than": "1d",
        "shard_count": "2",
        "shard_index": "1",
        "report": str(tmp_path / "report-{shard}.json"),
        "execute": True,
    }
    settings = load_settings(flags, environ={})
    assert settings.targets == ()
    credentials = AkSk(access_key="AK0001", secret_key=SecretStr("SK-empty-shard-0001"))
    code = await runner.run_async(settings=settings, credentials=credentials, handle_signals=False)
    assert code == 0
    written = json.loads((tmp_path / "report-1.json").read_text(encoding="utf-8"))
    assert written["exit_code"] == 0
    assert written["summary"]["listed"] == 0
    assert written["tasks"] == []
    assert (written["settings"]["shard_index"], written["settings"]["shard_count"]) == (1, 2)
