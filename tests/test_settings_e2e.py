"""Layered settings in whole runs: no layer drops another's protection or silently moves targets.

Every case is the real command line (`run_cli`, in a thread) against simulators over real
sockets, several projects behind several endpoints; what matters is read from the simulators'
own records, not from the report alone.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cleanup_command import run_arguments
from conftest import SimulatorFactory
from expectations import eligible, validated

from worker.cli import run_cli
from worker.simulator.config import DEFAULT_PROJECT_ID
from worker.simulator.server import SimulatorHandle

PROJECT_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1"
PROJECT_B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2"
PROJECT_C = "ccccccccccccccccccccccccccccccc3"

# Only the simulator's AK/SK among our variables; the temp dir as cwd; logging reset after.
pytestmark = pytest.mark.usefixtures("cli_environment")


@dataclass(frozen=True, slots=True)
class Ended:
    """One command's exit code and output streams."""

    code: int
    stdout: str
    stderr: str

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log events called `name`."""
        found = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found


async def cli(*argv: str) -> Ended:
    """`oms-cleanup <argv>` in this process (its own event loop, in a thread)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(
        run_cli, list(argv), stdin=io.StringIO(), stdout=stdout, stderr=stderr
    )
    return Ended(code, stdout.getvalue(), stderr.getvalue())


def sent(*sims: SimulatorHandle) -> int:
    """Requests the simulators received, refused ones included."""
    total = 0
    for sim in sims:
        truth = sim.state.snapshot()
        total += sum(truth["requests"].values()) + sum(truth["rejected"].values())
    return total


def targets_toml(*targets: tuple[str, str, str], options: str = "") -> str:
    """`options`, then one [[targets]] table per (location key, its value, project id)."""
    return options + "".join(
        f'[[targets]]\n{key} = "{value}"\nproject_id = "{project}"\n'
        for key, value, project in targets
    )


def assert_refused(ended: Ended, fragment: str) -> None:
    """Exit 2, one line on stderr naming the problem, nothing on stdout."""
    assert ended.code == 2, ended.stderr
    assert ended.stderr.count("\n") == 1, ended.stderr
    assert ended.stderr.startswith("oms-cleanup: error: ")
    assert fragment in ended.stderr
    assert ended.stdout == ""


# ------------------------------------------------------------------------------------------
# Protections accumulate


async def test_a_flag_protection_adds_to_the_files_and_the_environments(
    make_simulator: SimulatorFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """File, environment and flag protections all hold in one executing run; the rest goes."""
    sim = await make_simulator(tasks_per_project=60)
    now = datetime.now(UTC)
    tasks = {
        task_id: dict(task)
        for task_id, task in sim.state.projects[DEFAULT_PROJECT_ID].tasks.items()
    }
    candidates = sorted(eligible(tasks, now=now, older_than=timedelta(days=2)))
    assert len(candidates) >= 12, "population too small for this test"
    file_ids, env_id, flag_id = candidates[:2], candidates[2], candidates[3]
    file_name, flag_name = tasks[candidates[4]]["name"], tasks[candidates[5]]["name"]
    (tmp_path / "c.toml").write_text(
        f"protect_ids = {file_ids}\nname_exclude = [{json.dumps(file_name)}]\n", encoding="utf-8"
    )
    monkeypatch.setenv("OMS_CLEANUP_PROTECT_IDS", str(env_id))
    kept = {*file_ids, env_id, flag_id}
    kept |= {i for i in candidates if tasks[i]["name"] in (file_name, flag_name)}

    ended = await cli(
        *run_arguments(sim.url, "--config", "c.toml", "--older-than", "2d"),
        *("--protect-id", str(flag_id), "--name-exclude", flag_name),
        *("--execute", "--yes", "--log-format", "json"),
    )

    assert ended.code == 0, ended.stderr
    deleted = {d["task_id"] for d in sim.state.snapshot()["deletions"]}
    assert deleted == set(candidates) - kept
    assert kept <= set(sim.state.projects[DEFAULT_PROJECT_ID].tasks)
    settings = validated(tmp_path / "oms-cleanup-report.json")["settings"]
    assert {item["id"]: item["from"] for item in settings["protect_ids"]} == {
        file_ids[0]: ["file"],
        file_ids[1]: ["file"],
        env_id: ["environment"],
        flag_id: ["flags"],
    }
    assert settings["name_exclude"] == [
        {"pattern": file_name, "from": ["file"]},
        {"pattern": flag_name, "from": ["flags"]},
    ]


@pytest.mark.parametrize(
    ("variable", "value", "file"),
    [
        ("OMS_CLEANUP_NAME_EXCLUDE", ",", 'name_exclude = ["*"]\n'),
        ("OMS_CLEANUP_PROTECT_IDS", " , ", "protect_ids = [1]\n"),
        ("OMS_CLEANUP_NAME_INCLUDE", " , ", 'name_include = ["nothing-matches-*"]\n'),
    ],
)
async def test_an_environment_list_of_only_commas_is_refused(
    make_simulator: SimulatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variable: str,
    value: str,
    file: str,
) -> None:
    """A variable that names nothing cannot empty the file's list: exit 2, nothing sent."""
    sim = await make_simulator(tasks_per_project=20)
    (tmp_path / "c.toml").write_text(file, encoding="utf-8")
    monkeypatch.setenv(variable, value)

    ended = await cli(
        *run_arguments(sim.url, "--config", "c.toml", "--older-than", "0s", "--execute", "--yes")
    )

    assert_refused(ended, f"({variable}): name at least one")
    assert sent(sim) == 0
    assert sim.state.snapshot()["remaining"][DEFAULT_PROJECT_ID]["total"] == 20


# ------------------------------------------------------------------------------------------
# Targets come from one place


async def test_an_environment_target_next_to_the_files_targets_is_refused(
    make_simulator: SimulatorFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """File targets A and C, environment endpoint B (+ SDK project id): exit 2, nothing sent."""
    here = await make_simulator(project_ids=(PROJECT_A, PROJECT_C), tasks_per_project=20)
    there = await make_simulator(project_ids=(PROJECT_B,), tasks_per_project=20)
    (tmp_path / "c.toml").write_text(
        targets_toml(("endpoint", here.url, PROJECT_A), ("endpoint", here.url, PROJECT_C)),
        encoding="utf-8",
    )
    monkeypatch.setenv("OMS_CLEANUP_ENDPOINT", there.url)
    monkeypatch.setenv("HUAWEICLOUD_SDK_PROJECT_ID", PROJECT_B)

    ended = await cli("run", "--config", "c.toml", "--older-than", "0s", "--execute", "--yes")

    assert_refused(ended, "OMS_CLEANUP_ENDPOINT: the targets come from the [[targets]]")
    assert sent(here, there) == 0
    assert not (tmp_path / "oms-cleanup-report.json").exists()


async def test_the_sdk_project_id_never_joins_the_files_targets(
    make_simulator: SimulatorFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HUAWEICLOUD_SDK_PROJECT_ID next to [[targets]]: exactly the file's targets are cleaned."""
    sim = await make_simulator(project_ids=(PROJECT_A, PROJECT_B), tasks_per_project=20)
    (tmp_path / "c.toml").write_text(
        targets_toml(("endpoint", sim.url, PROJECT_A)), encoding="utf-8"
    )
    monkeypatch.setenv("HUAWEICLOUD_SDK_PROJECT_ID", PROJECT_B)

    ended = await cli("run", "--config", "c.toml", "--older-than", "0s", "--log-format", "json")

    assert ended.code == 0, ended.stderr
    report = validated(tmp_path / "oms-cleanup-report.json")
    assert [target["project_id"] for target in report["settings"]["targets"]] == [PROJECT_A]
    assert {task["project_id"] for task in report["tasks"]} <= {PROJECT_A}
    assert report["settings"]["dropped_targets"] == []
    assert ended.events("targets_replaced") == []


async def test_flags_replacing_the_files_targets_warn_and_are_reported(
    make_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    """Flags may replace [[targets]]: a warning names the dropped ones, the report records them."""
    here = await make_simulator(project_ids=(PROJECT_A, PROJECT_C), tasks_per_project=20)
    there = await make_simulator(project_ids=(PROJECT_B,), tasks_per_project=20)
    (tmp_path / "c.toml").write_text(
        targets_toml(("endpoint", here.url, PROJECT_A), ("endpoint", here.url, PROJECT_C)),
        encoding="utf-8",
    )

    ended = await cli(
        *("run", "--config", "c.toml", "--endpoint", there.url, "--project-id", PROJECT_B),
        *("--older-than", "0s", "--log-format", "json"),
    )

    assert ended.code == 0, ended.stderr
    dropped = [
        {"project_id": PROJECT_A, "region": None, "endpoint": here.url},
        {"project_id": PROJECT_C, "region": None, "endpoint": here.url},
    ]
    [warning] = ended.events("targets_replaced")
    assert warning["level"] == "warning"
    assert warning["dropped"] == dropped
    report = validated(tmp_path / "oms-cleanup-report.json")
    assert report["settings"]["dropped_targets"] == dropped
    assert [target["project_id"] for target in report["settings"]["targets"]] == [PROJECT_B]
    assert sent(here) == 0
    assert sent(there) > 0


# ------------------------------------------------------------------------------------------
# One project, once


DUPLICATES = {
    "identical": (("here", PROJECT_A), ("here", PROJECT_A)),
    "localhost-and-127.0.0.1": (("here", PROJECT_A), ("localhost", PROJECT_A)),
    "region-and-endpoint": (("region", PROJECT_A), ("here", PROJECT_A)),
    "two-endpoints": (("here", PROJECT_A), ("there", PROJECT_A)),
}


@pytest.mark.parametrize("shard", ["0", "1"])
@pytest.mark.parametrize("case", list(DUPLICATES.values()), ids=list(DUPLICATES))
async def test_one_project_twice_is_refused_before_sending(
    make_simulator: SimulatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: tuple[tuple[str, str], ...],
    shard: str,
) -> None:
    """The same project id twice anywhere in the target list: every shard exits 2, sends nothing."""
    here = await make_simulator(project_ids=(PROJECT_A, PROJECT_C), tasks_per_project=20)
    there = await make_simulator(project_ids=(PROJECT_A,), tasks_per_project=20)
    where = {
        "here": ("endpoint", here.url),
        "there": ("endpoint", there.url),
        "localhost": ("endpoint", here.url.replace("127.0.0.1", "localhost")),
        "region": ("region", "cn-north-4"),
    }
    assert "127.0.0.1" in here.url
    targets = [(*where[name], project) for name, project in case]
    # Another project between the copies: the refusal names the first of them, not a neighbour.
    targets.insert(1, ("endpoint", here.url, PROJECT_C))
    (tmp_path / "c.toml").write_text(
        targets_toml(*targets, options="shard_count = 2\n"), encoding="utf-8"
    )
    monkeypatch.setenv("JOB_COMPLETION_INDEX", shard)

    for command in ("validate", "run"):
        ended = await cli(command, "--config", "c.toml", "--older-than", "0s", "--execute", "--yes")
        assert_refused(ended, f"targets[2].project_id: project {PROJECT_A} is already targets[0]")
    assert sent(here, there) == 0
    assert not (tmp_path / "oms-cleanup-report.json").exists()
