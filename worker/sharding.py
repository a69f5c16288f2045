"""Which targets one shard of an Indexed Job handles.

Every pod of the Job reads the same config and keeps the targets at its index in a canonical
order: sorted by (region or endpoint, project id), then every `count`-th from `index`. The
order depends only on the targets themselves, so pods agree whatever order the file lists
them in, each target lands in exactly one shard, and shard sizes differ by at most one.
Adding a target may move others to different shards; that is harmless because every run of
the Job covers all shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Shardable(Protocol):
    """What sharding needs to know about a target."""

    @property
    def region(self) -> str | None: ...

    @property
    def endpoint(self) -> str | None: ...

    @property
    def project_id(self) -> str: ...


T = TypeVar("T", bound=Shardable)


def shard_key(target: Shardable) -> tuple[str, str, str]:
    """The canonical sort key of a target."""
    return (target.region or target.endpoint or "", target.project_id, target.endpoint or "")


def shard_targets(targets: Sequence[T], *, index: int, count: int) -> tuple[T, ...]:
    """The targets shard `index` of `count` handles, in their configured order.

    Raises ValueError unless 1 <= count and 0 <= index < count. A shard may get no target
    (more shards than targets); that is a valid, empty run.
    """
    if count < 1:
        raise ValueError(f"shard count must be at least 1 (got {count})")
    if not 0 <= index < count:
        raise ValueError(f"shard index must be from 0 to {count - 1} (got {index})")
    ranked = sorted(range(len(targets)), key=lambda position: shard_key(targets[position]))
    mine = sorted(ranked[index::count])
    return tuple(targets[position] for position in mine)
