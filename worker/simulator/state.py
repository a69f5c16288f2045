"""The task store of a simulator and its behaviour over time, read from an injected clock.

Per project the tasks live in a dict by id plus sorted key lists (all tasks, and one per
status), so a page by offset is a slice and a delete is a bisect: cheap at 100,000 tasks.
Time-driven changes (a migration finishing, a pause completing) sit in a heap and are
applied lazily whenever the store is touched, so no background task is needed.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from worker.simulator.config import SimulatorConfig
from worker.simulator.population import generate_tasks

RUNNING = 2
PAUSED = 3
FAILED = 4
SUCCEEDED = 5
PAUSING = 7
DELETABLE_CODES = frozenset({PAUSED, FAILED, SUCCEEDED})

TASK_RUNNING = "OMS.0063"
INVALID_PARAMETERS = "OMS.0064"
NOT_MIGRATING = "OMS.0066"
NOT_FOUND = "OMS.1009"

# Who the `other_deleter_*` faults delete as, in `other_deletions`.
OTHER_ACTOR = "another-actor"

_FINISH = "finish"
_PAUSED = "paused"
# What a person does to a task after a client listed it (see ChangeConfig).
RETRIED = "retried"
RENAMED = "renamed"
RESTARTED = "restarted"

SortKey = tuple[int, int]


class ApiRefusal(Exception):
    """An OMS answer other than success: HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _record_json(record: ActionRecord | RefusedDelete | ChangeRecord) -> dict[str, Any]:
    """A record's fields as JSON values (the time in ISO 8601)."""
    return {**dataclasses.asdict(record), "at": record.at.isoformat()}


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """A delete or stop that took effect: which task, where, by whom, when."""

    task_id: int
    project_id: str
    by: str
    at: datetime

    def as_json(self) -> dict[str, Any]:
        """The /_sim/state shape."""
        return _record_json(self)


@dataclass(frozen=True, slots=True)
class RefusedDelete:
    """A delete answered OMS.0063: the status it met tells whether a client was careless."""

    task_id: int
    project_id: str
    status: int
    by: str
    at: datetime

    def as_json(self) -> dict[str, Any]:
        """The /_sim/state shape."""
        return _record_json(self)


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """A change a person made to a task after it was listed (RETRIED, RENAMED, RESTARTED)."""

    task_id: int
    project_id: str
    kind: str
    at: datetime

    def as_json(self) -> dict[str, Any]:
        """The /_sim/state shape."""
        return _record_json(self)


@dataclass(slots=True)
class _Runtime:
    """Per-task simulation state that is not part of the API's task object."""

    generation: int = 0
    fails_when_finishing: bool = False
    sticky_refusals: int = 0


def sort_key(task: dict[str, Any]) -> SortKey:
    """Listing order: newest start_time first, ties by id; missing or 0 start_time last."""
    return (-int(task.get("start_time") or 0), int(task["id"]))


class ProjectTasks:
    """One project's tasks with the sorted indexes that make paging cheap."""

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.tasks: dict[int, dict[str, Any]] = {task["id"]: task for task in tasks}
        # Encoded task JSON, so a 100-task page is a join rather than 100 json.dumps calls.
        self._encoded: dict[int, bytes] = {}
        self.order: list[SortKey] = sorted(sort_key(task) for task in tasks)
        self.by_status: dict[int, list[SortKey]] = {}
        for key in self.order:
            self.by_status.setdefault(self.tasks[key[1]]["status"], []).append(key)

    def page(
        self,
        *,
        offset: int,
        limit: int,
        status: int | None,
        group_id: str | None,
        task_name: str | None,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of matching tasks and the total number that match."""
        source = self.order if status is None else self.by_status.get(status, [])
        if not group_id and not task_name:
            return [self.tasks[key[1]] for key in source[offset : offset + limit]], len(source)
        # Name and group filters are rare: a scan is acceptable there.
        needle = task_name.casefold() if task_name else None
        matching = [
            task
            for task in (self.tasks[key[1]] for key in source)
            if (not group_id or task["group_id"] == group_id)
            and (needle is None or needle in str(task["name"] or "").casefold())
        ]
        return matching[offset : offset + limit], len(matching)

    def remove(self, task: dict[str, Any]) -> None:
        """Drop a task from the dict and every index."""
        key = sort_key(task)
        _discard(self.order, key)
        _discard(self.by_status[task["status"]], key)
        del self.tasks[task["id"]]
        self._encoded.pop(task["id"], None)

    def set_status(self, task: dict[str, Any], status: int) -> None:
        """Change a task's status, move it between the status indexes, forget its encoding.

        Callers change the task's other fields first, then call this last.
        """
        key = sort_key(task)
        _discard(self.by_status[task["status"]], key)
        bisect.insort(self.by_status.setdefault(status, []), key)
        task["status"] = status
        self._encoded.pop(task["id"], None)

    def encoded(self, task: dict[str, Any]) -> bytes:
        """The task as compact UTF-8 JSON, cached until its next change."""
        body = self._encoded.get(task["id"])
        if body is None:
            body = json.dumps(task, ensure_ascii=False, separators=(",", ":")).encode()
            self._encoded[task["id"]] = body
        return body

    def restamp(self, task: dict[str, Any], start_ms: int) -> None:
        """Give a task a new start_time, moving it in the listing order."""
        old = sort_key(task)
        _discard(self.order, old)
        _discard(self.by_status[task["status"]], old)
        task["start_time"] = start_ms
        new = sort_key(task)
        bisect.insort(self.order, new)
        bisect.insort(self.by_status[task["status"]], new)
        self._encoded.pop(task["id"], None)

    def forget_encoding(self, task: dict[str, Any]) -> None:
        """After a change to a field outside the indexes (the name, say)."""
        self._encoded.pop(task["id"], None)

    def counts_by_status(self) -> dict[int, int]:
        """Remaining tasks per status code."""
        return {code: len(keys) for code, keys in sorted(self.by_status.items()) if keys}


def _discard(keys: list[SortKey], key: SortKey) -> None:
    index = bisect.bisect_left(keys, key)
    if index < len(keys) and keys[index] == key:
        del keys[index]


class SimulatorState:
    """All projects' tasks, the record of what was done to them, and request counts."""

    def __init__(self, config: SimulatorConfig, *, now: Callable[[], datetime]) -> None:
        self.config = config
        self._now = now
        self.started_at = now()
        self._rng = random.Random(f"oms-state:{config.seed}")
        self.projects: dict[str, ProjectTasks] = {
            project_id: ProjectTasks(
                generate_tasks(
                    project_id=project_id,
                    count=config.tasks_per_project,
                    seed=config.seed,
                    now=self.started_at,
                    config=config.population,
                )
            )
            for project_id in config.project_ids
        }
        self._runtime: dict[tuple[str, int], _Runtime] = {}
        self._due: list[tuple[datetime, int, str, int, int, str]] = []
        self._sequence = 0
        self.deletions: list[ActionRecord] = []
        self.stops: list[ActionRecord] = []
        self.refused_deletes: list[RefusedDelete] = []
        # Deletions by another actor (the `other_deleter_*` faults), not by any client.
        self.other_deletions: list[ActionRecord] = []
        self.requests: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.iam_token_uses = 0
        # (project, task id) -> what a person will do to it after the first listing.
        self.planned_changes: dict[tuple[str, int], str] = self._plan_changes()
        self.changes: list[ChangeRecord] = []
        self._retries_due = {key for key, kind in self.planned_changes.items() if kind == RETRIED}
        self._changes_scheduled = False
        self.access_key_uses = 0
        # Consecutive failed requests per access key, and keys locked until a moment.
        self.key_failures: Counter[str] = Counter()
        self.locked_until: dict[str, datetime] = {}
        # API requests being served right now, the most at once, and how many were being
        # served when the first 401 went out (it included): the requests a client that
        # stops at its first 401 can still have met it with.
        self.in_flight = 0
        self.peak_in_flight = 0
        self.in_flight_at_first_auth_refusal: int | None = None
        # The same per project (of the request's path), and the 401s each project's got.
        self.in_flight_by_project: Counter[str] = Counter()
        self.peak_in_flight_by_project: Counter[str] = Counter()
        self.auth_refused_by_project: Counter[str] = Counter()
        self._schedule_initial()

    def _plan_changes(self) -> dict[tuple[str, int], str]:
        changes = self.config.changes
        rng = random.Random(f"oms-changes:{self.config.seed}")
        planned: dict[tuple[str, int], str] = {}
        for project_id, project in self.projects.items():
            failed = [key[1] for key in project.by_status.get(FAILED, [])]
            finished = [
                key[1]
                for key in project.order
                if project.tasks[key[1]]["status"] in (FAILED, SUCCEEDED)
            ]
            for kind, pool, count in (
                (RETRIED, failed, changes.retried),
                (RENAMED, finished, changes.renamed),
                (RESTARTED, finished, changes.restarted),
            ):
                free = [task_id for task_id in pool if (project_id, task_id) not in planned]
                for task_id in rng.sample(free, min(count, len(free))):
                    planned[(project_id, task_id)] = kind
        return planned

    def _schedule_changes(self) -> None:
        self._changes_scheduled = True
        due = self._now() + self.config.changes.after
        for (project_id, task_id), kind in self.planned_changes.items():
            if kind != RETRIED:  # retried on the first delete that reaches it
                self._schedule(due, project_id, task_id, kind)

    def _schedule_initial(self) -> None:
        timing = self.config.timing
        low, high = (span.total_seconds() for span in timing.finish_after)
        for project_id, project in self.projects.items():
            for key in project.order:
                task = project.tasks[key[1]]
                if task["status"] == RUNNING:
                    runtime = self._runtime_of(project_id, task["id"])
                    runtime.fails_when_finishing = self._rng.random() < timing.failed_share
                    delay = timedelta(seconds=self._rng.uniform(low, high))
                    self._schedule(self.started_at + delay, project_id, task["id"], _FINISH)
                elif task["status"] == PAUSING:
                    due = self.started_at + timing.pausing_delay
                    self._schedule(due, project_id, task["id"], _PAUSED)

    def _runtime_of(self, project_id: str, task_id: int) -> _Runtime:
        runtime = self._runtime.get((project_id, task_id))
        if runtime is None:
            runtime = self._runtime[(project_id, task_id)] = _Runtime()
        return runtime

    def _schedule(self, due: datetime, project_id: str, task_id: int, kind: str) -> None:
        self._sequence += 1
        generation = self._runtime_of(project_id, task_id).generation
        heapq.heappush(self._due, (due, self._sequence, project_id, task_id, generation, kind))

    def now(self) -> datetime:
        """The simulator's clock."""
        return self._now()

    def advance(self) -> datetime:
        """Apply every time-driven change that is due; returns the moment used."""
        now = self._now()
        due = self._due
        while due and due[0][0] <= now:
            when, _, project_id, task_id, generation, kind = heapq.heappop(due)
            project = self.projects[project_id]
            task = project.tasks.get(task_id)
            if task is None or self._runtime_of(project_id, task_id).generation != generation:
                continue
            if kind == _FINISH and task["status"] == RUNNING:
                self._finish(project_id, task, when)
            elif kind == _PAUSED and task["status"] == PAUSING:
                task["left_time"] = 0
                project.set_status(task, PAUSED)
            elif kind in (RETRIED, RENAMED, RESTARTED):
                self._change(project_id, task, kind, when)
        return now

    def _change(self, project_id: str, task: dict[str, Any], kind: str, when: datetime) -> None:
        project = self.projects[project_id]
        if kind == RETRIED and task["status"] == FAILED:
            runtime = self._runtime_of(project_id, task["id"])
            runtime.fails_when_finishing = False
            task["error_reason"] = {"error_code": "", "error_msg": ""}
            project.set_status(task, RUNNING)
            self._schedule(when + self.config.changes.retry_runs, project_id, task["id"], _FINISH)
        elif kind == RENAMED:
            task["name"] = f"{task['name']}{self.config.changes.rename_suffix}"
            project.forget_encoding(task)
        elif kind == RESTARTED:
            project.restamp(task, int(when.timestamp() * 1000))
        else:
            return
        self.changes.append(ChangeRecord(task["id"], project_id, kind, when))

    def _finish(self, project_id: str, task: dict[str, Any], when: datetime) -> None:
        project = self.projects[project_id]
        start_ms = int(task.get("start_time") or 0)
        if start_ms:
            task["total_time"] = max(0, int(when.timestamp() * 1000) - start_ms)
        task["left_time"] = 0
        task["migrate_speed"] = 0
        task["is_query_over"] = True
        if self._runtime_of(project_id, task["id"]).fails_when_finishing:
            task["error_reason"] = {
                "error_code": "OMS.1205",
                "error_msg": "Failed to list objects on the source end.",
            }
            task["failed_num"] = max(1, task["total_num"] - task["successful_num"])
            project.set_status(task, FAILED)
        else:
            task["progress"] = 1.0
            task["successful_num"] = task["total_num"]
            task["complete_size"] = task["real_size"] = task["total_size"]
            project.set_status(task, SUCCEEDED)

    def hosts(self, project_id: str) -> bool:
        """Whether this simulator hosts the project."""
        return project_id in self.projects

    def list_tasks(
        self,
        project_id: str,
        *,
        offset: int,
        limit: int,
        status: int | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of tasks (live objects: serialise before the next change) and the count."""
        if not self._changes_scheduled and self.planned_changes:
            self._schedule_changes()
        self.advance()
        return self.projects[project_id].page(
            offset=offset, limit=limit, status=status, group_id=group_id, task_name=task_name
        )

    def show_task(self, project_id: str, task_id: int) -> dict[str, Any]:
        """One task; ApiRefusal OMS.1009 when there is none."""
        self.advance()
        return self._task(project_id, task_id)

    def delete_task(self, project_id: str, task_id: int, *, by: str) -> None:
        """Delete a finished or paused task; OMS.0063 while it is active, OMS.1009 when gone."""
        now = self.advance()
        project = self.projects[project_id]
        task = self._task(project_id, task_id)
        if (project_id, task_id) in self._retries_due:
            self._retries_due.discard((project_id, task_id))
            self._change(project_id, task, RETRIED, now)
        status = task["status"]
        runtime = self._runtime.get((project_id, task_id))
        # Unknown codes are refused like active ones: the simulator cannot know they are safe.
        sticky = runtime is not None and runtime.sticky_refusals > 0 and status == PAUSED
        if status not in DELETABLE_CODES or sticky:
            if sticky and runtime is not None:
                runtime.sticky_refusals -= 1
            self.refused_deletes.append(RefusedDelete(task_id, project_id, status, by, now))
            raise ApiRefusal(
                400,
                TASK_RUNNING,
                "The task is in progress and cannot be deleted. Pause the task first.",
            )
        project.remove(task)
        self._runtime.pop((project_id, task_id), None)
        self.deletions.append(ActionRecord(task_id, project_id, by, now))

    def delete_behind(
        self,
        project_id: str,
        *,
        before: int,
        count: int,
        states: frozenset[int],
        budget: int | None,
        status: int | None = None,
        group_id: str | None = None,
        task_name: str | None = None,
    ) -> int:
        """Another actor deletes up to `count` tasks in `states` among the first `before` of
        this listing's order (so every later offset shifts); returns how many it deleted."""
        if budget is not None:
            count = min(count, budget - len(self.other_deletions))
        if count <= 0:
            return 0
        now = self.advance()
        project = self.projects[project_id]
        passed, _ = project.page(
            offset=0, limit=before, status=status, group_id=group_id, task_name=task_name
        )
        victims = [task for task in passed if task["status"] in states][:count]
        for task in victims:
            project.remove(task)
            self._runtime.pop((project_id, task["id"]), None)
            self.other_deletions.append(ActionRecord(task["id"], project_id, OTHER_ACTOR, now))
        return len(victims)

    def stop_task(self, project_id: str, task_id: int, *, by: str) -> None:
        """Pause a migrating task (2 -> 7, then 3 after the pausing delay); else OMS.0066."""
        now = self.advance()
        project = self.projects[project_id]
        task = self._task(project_id, task_id)
        if task["status"] != RUNNING:
            raise ApiRefusal(400, NOT_MIGRATING, "The task is not in the migrating state.")
        timing = self.config.timing
        runtime = self._runtime_of(project_id, task_id)
        runtime.generation += 1
        if self._rng.random() < timing.sticky_pause_share:
            runtime.sticky_refusals = timing.sticky_pause_attempts
        task["migrate_speed"] = 0
        project.set_status(task, PAUSING)
        self._schedule(now + timing.pausing_delay, project_id, task_id, _PAUSED)
        self.stops.append(ActionRecord(task_id, project_id, by, now))

    def _task(self, project_id: str, task_id: int) -> dict[str, Any]:
        task = self.projects[project_id].tasks.get(task_id)
        if task is None:
            raise ApiRefusal(400, NOT_FOUND, f"The task {task_id} does not exist.")
        return task

    def remaining(self) -> dict[str, dict[str, Any]]:
        """Per project: total tasks left and counts per status code."""
        self.advance()
        return {
            project_id: {
                "total": len(project.tasks),
                "by_status": {str(code): n for code, n in project.counts_by_status().items()},
            }
            for project_id, project in self.projects.items()
        }

    def snapshot(self) -> dict[str, Any]:
        """The /_sim/state document."""
        remaining = self.remaining()
        return {
            "now": self._now().isoformat(),
            "deletions": [record.as_json() for record in self.deletions],
            "stops": [record.as_json() for record in self.stops],
            "refused_deletes": [record.as_json() for record in self.refused_deletes],
            "changes": [record.as_json() for record in self.changes],
            "other_deletions": [record.as_json() for record in self.other_deletions],
            "requests": {kind: self.requests[kind] for kind in ("list", "show", "delete", "stop")},
            "rejected": {
                reason: self.rejected[reason]
                for reason in ("auth", "forbidden", "throttled", "5xx", "dropped", "malformed")
            },
            "peak_in_flight": self.peak_in_flight,
            "in_flight_at_first_auth_refusal": self.in_flight_at_first_auth_refusal,
            "peak_in_flight_by_project": dict(self.peak_in_flight_by_project),
            "locked_keys": sorted(self.locked_until),
            "auth_refused_by_project": dict(self.auth_refused_by_project),
            "remaining": remaining,
        }
