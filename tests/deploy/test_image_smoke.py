"""Smoke test of what the container image does, without a Docker engine.

The module fixture repeats the Dockerfile's steps on this machine: the builder stage's `pip
wheel` over exactly the files the Dockerfile copies, then a fresh venv (no system site
packages) that installs those wheels with `--no-index`, as the final stage does. The tests
then run the console script the way the image runs it: the final stage's environment (its
paths mapped onto temporary directories), its numeric user (when the tests run as root), a
read-only working directory, and only the report directory and HOME writable.

Building the wheels needs a package index (setuptools, and the dependencies' wheels unless
pip's cache has them). Without one the tests skip with the reason, except under CI (the CI
environment variable set), where they must run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dockerfile_model import DOCKERFILE, REPO, copy_sources, parse_dockerfile

from worker import __version__
from worker.simulator.config import DEFAULT_ACCESS_KEY, DEFAULT_PROJECT_ID, DEFAULT_SECRET_KEY

# Where the final stage puts the venv and what the image's PATH is built on.
IMAGE_VENV = "/opt/oms-cleanup"
IMAGE_TMP = "/tmp"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
STEP_TIMEOUT = 300
RUN_TIMEOUT = 60
# pip's words for "the index could not be reached" (as opposed to a broken build).
UNREACHABLE = re.compile(
    r"Could not find a version|No matching distribution|NewConnectionError|"
    r"Failed to establish a new connection|Temporary failure in name resolution|"
    r"Network is unreachable|ConnectTimeout|ReadTimeout|Max retries exceeded"
)


@dataclass(frozen=True, slots=True)
class LocalImage:
    """The image acted out in a directory: venv, writable dirs, user and environment."""

    venv: Path
    workdir: Path
    reports: Path
    home: Path
    secrets: Path
    etc: Path
    uid: int | None
    gid: int | None
    env: dict[str, str]
    venv_files: frozenset[str]

    def entrypoint(self, args: Sequence[str]) -> list[str]:
        """ENTRYPOINT + args, the entry point found on the image's PATH."""
        final = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[-1]
        program, *rest = final.last("ENTRYPOINT").exec_form()
        found = shutil.which(program, path=self.env["PATH"])
        assert found is not None, f"{program} is not on the image's PATH"
        assert Path(found).is_relative_to(self.venv)
        return [found, *rest, *args]

    def as_user(self) -> dict[str, Any]:
        """subprocess arguments that drop to the image's user (no-op when not root)."""
        if self.uid is None:
            return {}
        # extra_groups=[]: no leftover supplementary groups from root (group 0 among them).
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run the image with these args (after ENTRYPOINT) and wait."""
        return subprocess.run(
            self.entrypoint(args),
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
            **self.as_user(),
        )

    def config(self, name: str, text: str) -> Path:
        """A read-only config file for one test."""
        path = self.etc / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o444)
        return path

    def changed_venv_files(self) -> set[str]:
        """Files that appeared in or vanished from the venv since the install."""
        return set(_tree(self.venv)) ^ self.venv_files


def _tree(root: Path) -> frozenset[str]:
    return frozenset(str(path.relative_to(root)) for path in root.rglob("*"))


def _step(command: Sequence[str | Path], *, what: str) -> None:
    # pip's own configuration (index URLs, certificates, cache) comes from the environment.
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    if UNREACHABLE.search(output) and not os.environ.get("CI"):
        pytest.skip(f"{what}: no package index reachable (set CI=1 to make this a failure)")
    pytest.fail(f"{what} failed ({result.returncode}):\n{output[-4000:]}")


def _may(path: Path, uid: int, gid: int, bits: int) -> bool:
    """Whether uid/gid has these permission bits (r=4, w=2, x=1) on `path`."""
    info = path.stat()
    if info.st_uid == uid:
        return info.st_mode & (bits << 6) == bits << 6
    if info.st_gid == gid:
        return info.st_mode & (bits << 3) == bits << 3
    return info.st_mode & bits == bits


def _base_python(uid: int | None, gid: int | None) -> str:
    """An interpreter of this Python version that the image's user can run.

    The venv links to its base interpreter, as the image's venv links to the base image's
    /usr/local/bin/python. The one behind the test venv may live under a directory the image's
    user cannot enter (/root), so a system interpreter of the same version is the fallback.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [getattr(sys, "_base_executable", sys.executable), shutil.which(version)]
    candidates.append(shutil.which(version, path=BASE_PATH))
    for candidate in candidates:
        if candidate is None:
            continue
        if uid is None or gid is None:
            return candidate
        binary = Path(candidate).resolve()
        if all(_may(parent, uid, gid, 1) for parent in binary.parents) and _may(
            binary, uid, gid, 5
        ):
            return str(binary)
    pytest.fail(f"no {version} that uid {uid} may run (tried {candidates})")


def _image_env(final_env: dict[str, str], *, venv: Path, home: Path) -> dict[str, str]:
    """The final stage's ENV with the image's paths mapped onto the local directories."""
    env: dict[str, str] = {}
    for name, value in final_env.items():
        if value == IMAGE_TMP or value.startswith(IMAGE_TMP + "/"):
            value = str(home) + value[len(IMAGE_TMP) :]
        value = value.replace("${PATH}", BASE_PATH).replace("$PATH", BASE_PATH)
        env[name] = value.replace(IMAGE_VENV, str(venv))
    env["TMPDIR"] = str(home)
    env["LANG"] = "C.UTF-8"
    return env


def _own(path: Path, uid: int | None, gid: int | None, mode: int) -> None:
    if uid is not None and gid is not None:
        os.chown(path, uid, gid)
    path.chmod(mode)


@pytest.fixture(scope="module")
def image() -> Iterator[LocalImage]:
    """Build the wheels, install them into a fresh venv, lay out the image's directories."""
    stages = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    builder, final = stages[0], stages[-1]
    env = final.merged("ENV")
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:"), "the final stage's venv moved"
    assert env["HOME"] == IMAGE_TMP
    user, group = (int(part) for part in final.last("USER").arguments.split(":"))
    uid, gid = (user, group) if os.geteuid() == 0 else (None, None)

    # Not pytest's tmp_path: its parent is private to root and the image's user must get in.
    with tempfile.TemporaryDirectory(prefix="oms-cleanup-image-") as name:
        root = Path(name)
        root.chmod(0o755)
        context = root / "context"
        context.mkdir()
        for source in copy_sources(builder):
            origin = REPO / source.rstrip("/")
            if origin.is_dir():
                ignored = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(origin, context / origin.name, ignore=ignored)
            else:
                shutil.copy2(origin, context / origin.name)
        wheels = root / "wheels"
        _step(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheels, context],
            what="building the wheels (builder stage)",
        )
        venv = root / "venv"
        _step([_base_python(uid, gid), "-m", "venv", venv], what="creating the venv")
        install = ("install", "--quiet", "--no-index", "--find-links", wheels, "oms-cleanup")
        _step([venv / "bin" / "pip", *install], what="installing the wheels (final stage)")

        workdir = root / "workdir"
        workdir.mkdir()
        workdir.chmod(0o555)  # read-only, owned by root (or by us when not root)
        reports = root / "reports"
        reports.mkdir()
        _own(reports, uid, gid, 0o755)
        home = root / "home"
        home.mkdir()
        _own(home, uid, gid, 0o700)
        etc = root / "etc"
        etc.mkdir()
        # Like the Kubernetes Secret volume: files readable by the group (fsGroup), not others.
        secrets = root / "secrets"
        secrets.mkdir()
        for key, value in (("ak", DEFAULT_ACCESS_KEY), ("sk", DEFAULT_SECRET_KEY)):
            (secrets / key).write_text(value + "\n", encoding="utf-8")
            _own(secrets / key, 0 if uid is not None else None, gid, 0o440)
        yield LocalImage(
            venv=venv,
            workdir=workdir,
            reports=reports,
            home=home,
            secrets=secrets,
            etc=etc,
            uid=uid,
            gid=gid,
            env=_image_env(env, venv=venv, home=home),
            venv_files=_tree(venv),
        )


def test_version_from_the_installed_wheel(image: LocalImage) -> None:
    """`oms-cleanup --version` runs from the fresh venv and reports the package version."""
    result = image.run(["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"oms-cleanup {__version__}"
    config = (image.venv / "pyvenv.cfg").read_text(encoding="utf-8")
    assert "include-system-site-packages = false" in config
    where = subprocess.run(
        [image.venv / "bin" / "python", "-c", "import worker; print(worker.__file__)"],
        cwd=image.workdir,
        env=image.env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
        **image.as_user(),
    )
    assert Path(where.stdout.strip()).is_relative_to(image.venv)
    assert not image.changed_venv_files()


def test_default_command_without_settings_fails_cleanly(image: LocalImage) -> None:
    """The image's CMD (`run`) with no target is a one-line usage error, exit 2."""
    final = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[-1]
    before = set(image.reports.iterdir())
    result = image.run(final.last("CMD").exec_form())
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines
    assert all(line.startswith("oms-cleanup: error: ") for line in lines)
    assert "Traceback" not in result.stderr
    assert set(image.reports.iterdir()) == before


def test_validate_reads_config_and_secret_files(image: LocalImage) -> None:
    """`validate` accepts a config file and the secrets dir, and masks the key."""
    config = image.config(
        "validate.toml",
        'older_than = "30d"\nendpoint = "http://127.0.0.1:9"\n'
        f'project_id = "{DEFAULT_PROJECT_ID}"\n',
    )
    result = image.run(
        [
            *("validate", "--config", str(config), "--secrets-dir", str(image.secrets)),
            *("--report", str(image.reports / "validate.json")),
        ]
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["auth_mode"] == "ak_sk"
    assert shown["access_key"] == "****" + DEFAULT_ACCESS_KEY[-4:]
    assert shown["dry_run"] is True
    assert DEFAULT_SECRET_KEY not in result.stdout + result.stderr
    assert not (image.reports / "validate.json").exists()


async def test_dry_run_against_the_simulator(image: LocalImage, make_simulator: Any) -> None:
    """A dry run as the image's user writes its report, deletes nothing and writes nowhere else."""
    simulator = await make_simulator()
    config = image.config(
        "dry-run.toml",
        f'older_than = "1d"\nendpoint = "{simulator.url}"\nproject_id = "{DEFAULT_PROJECT_ID}"\n',
    )
    report_path = image.reports / "dry-run.json"
    before = set(image.reports.iterdir())
    process = await asyncio.create_subprocess_exec(
        *image.entrypoint(
            [
                *("run", "--config", str(config), "--secrets-dir", str(image.secrets)),
                *("--report", str(report_path), "--log-format", "json"),
            ]
        ),
        cwd=image.workdir,
        env=image.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **image.as_user(),
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    logs = (stdout + stderr).decode()
    assert process.returncode == 0, logs

    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["dry_run"] is True
    assert report["exit_code"] == 0
    summary = report["summary"]
    assert summary["would_delete"] == summary["selected"] > 0
    assert summary["deleted"] == 0
    assert summary["listed"] == simulator.config.tasks_per_project
    if image.uid is not None:
        assert report_path.stat().st_uid == image.uid

    state = simulator.state.snapshot()
    assert state["deletions"] == []
    assert state["requests"]["delete"] == 0
    assert state["remaining"][DEFAULT_PROJECT_ID]["total"] == simulator.config.tasks_per_project

    assert DEFAULT_SECRET_KEY not in logs + report_path.read_text(encoding="utf-8")
    assert list(image.workdir.iterdir()) == []
    assert not image.changed_venv_files()
    # The atomic write leaves only the report itself behind.
    assert set(image.reports.iterdir()) - before == {report_path}
