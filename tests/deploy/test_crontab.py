"""config/crontab.example: valid cron lines, locked, %-escaped, credentials kept out."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

import pytest
from dockerfile_model import REPO

from worker.cli import build_parser

CRONTAB = REPO / "config" / "crontab.example"
ENV_LINE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\s*=")
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (low, high, names) for minute, hour, day of month, month, day of week.
FIELDS: tuple[tuple[int, int, list[str]], ...] = (
    (0, 59, []),
    (0, 23, []),
    (1, 31, []),
    (1, 12, MONTHS),
    (0, 7, DAYS),
)
UNESCAPED_PERCENT = re.compile(r"(?<!\\)%")


@dataclass(frozen=True, slots=True)
class Job:
    """One crontab job line: its five schedule fields and its command (as written)."""

    schedule: tuple[str, ...]
    command: str

    def shell_command(self) -> str:
        """What cron hands to the shell: `\\%` becomes `%` (no unescaped % may remain)."""
        if UNESCAPED_PERCENT.search(self.command):
            raise ValueError("unescaped % (cron would cut the command there)")
        return self.command.replace("\\%", "%")

    def script(self) -> str:
        """The script the job passes to `sh -c` (after cron's unescaping)."""
        words = shlex.split(self.shell_command())
        return words[words.index("-c") + 1]


def parse_field(text: str, low: int, high: int, names: list[str]) -> set[int]:
    """The values a cron schedule field selects; ValueError when it is not a valid field."""
    selected: set[int] = set()

    def number(word: str) -> int:
        if word.lower() in names:
            return names.index(word.lower()) + low  # names start at the lowest value
        if not word.isdigit() or not low <= int(word) <= high:
            raise ValueError(f"{word!r} is not a value from {low} to {high}")
        return int(word)

    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad step in {part!r}")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            start, _, end = span.partition("-")
            first, last = number(start), number(end)
            if first > last:
                raise ValueError(f"backwards range {span!r}")
        else:
            first = last = number(span)
            if step is not None:
                last = high
        selected.update(range(first, last + 1, step or 1))
    return selected


def read_crontab(text: str) -> tuple[dict[str, str], list[Job]]:
    """A crontab's environment assignments and its jobs; ValueError on any other line."""
    env: dict[str, str] = {}
    jobs: list[Job] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if ENV_LINE.match(line):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
            continue
        words = line.split(maxsplit=5)
        if len(words) < 6 or words[0].startswith("@"):
            raise ValueError(f"line {number}: not five schedule fields and a command")
        for word, (low, high, names) in zip(words[:5], FIELDS, strict=True):
            try:
                parse_field(word, low, high, names)
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None
        jobs.append(Job(tuple(words[:5]), words[5]))
    return env, jobs


@pytest.fixture(scope="module")
def crontab() -> tuple[dict[str, str], list[Job]]:
    """The example crontab, read."""
    return read_crontab(CRONTAB.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("text", "low", "high", "names", "expected"),
    [
        ("*", 0, 5, [], {0, 1, 2, 3, 4, 5}),
        ("17", 0, 59, [], {17}),
        ("1-3,5", 0, 59, [], {1, 2, 3, 5}),
        ("*/15", 0, 59, [], {0, 15, 30, 45}),
        ("10/20", 0, 59, [], {10, 30, 50}),
        ("mon-fri", 0, 7, DAYS, {1, 2, 3, 4, 5}),
        ("jan,dec", 1, 12, MONTHS, {1, 12}),
    ],
)
def test_parse_field_accepts(
    text: str, low: int, high: int, names: list[str], expected: set[int]
) -> None:
    """Valid schedule fields select the expected values."""
    assert parse_field(text, low, high, names) == expected


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("60", 0, 59), ("0", 1, 31), ("5-1", 0, 59), ("*/0", 0, 59), ("x", 0, 59), ("", 0, 59)],
)
def test_parse_field_rejects(text: str, low: int, high: int) -> None:
    """Out-of-range values, backwards ranges, zero steps and words are refused."""
    with pytest.raises(ValueError, match=r"\S"):
        parse_field(text, low, high, [])


@pytest.mark.parametrize(
    "text",
    [
        "17 3 * * echo four fields\n",
        "@daily flock -n /l true\n",
        "61 3 * * * flock -n /l true\n",
    ],
)
def test_read_crontab_rejects_bad_job_lines(text: str) -> None:
    """A line with a bad or missing schedule is an error, not a silently skipped job."""
    with pytest.raises(ValueError, match="line 1"):
        read_crontab(text)


@pytest.mark.parametrize(
    ("command", "ok"),
    [("date +\\%F", True), ("date +%F", False), ("echo 100\\%", True), ("a % b", False)],
)
def test_unescaped_percent_is_caught(command: str, ok: bool) -> None:
    """An unescaped % (where cron would cut the command) is refused; \\% becomes %."""
    job = Job(("*",) * 5, command)
    if ok:
        assert "\\%" not in job.shell_command()
    else:
        with pytest.raises(ValueError, match="unescaped"):
            job.shell_command()


def test_has_jobs_and_a_path_to_the_tool(crontab: tuple[dict[str, str], list[Job]]) -> None:
    """At least one job; PATH reaches the tool's venv and SHELL is a POSIX shell."""
    env, jobs = crontab
    assert jobs
    assert env["SHELL"] == "/bin/sh"
    assert "/opt/oms-cleanup/bin" in env["PATH"].split(":")


def test_every_job_runs_under_a_nonblocking_lock(
    crontab: tuple[dict[str, str], list[Job]],
) -> None:
    """Each job starts with `flock -n LOCKFILE`, so overlapping runs cannot happen."""
    for job in crontab[1]:
        words = shlex.split(job.shell_command())
        assert words[0] == "flock"
        assert words[1] in ("-n", "--nonblock")
        assert words[2].startswith("/")


def test_every_percent_is_escaped(crontab: tuple[dict[str, str], list[Job]]) -> None:
    """No job has a bare % (dated paths use \\%)."""
    for job in crontab[1]:
        assert "%" in job.shell_command()
        job.shell_command()  # raises on an unescaped %


def test_commands_are_valid_shell(crontab: tuple[dict[str, str], list[Job]]) -> None:
    """What cron hands to /bin/sh parses, and so does the inner `sh -c` script."""
    sh = shutil.which("sh")
    assert sh is not None
    for job in crontab[1]:
        for script in (job.shell_command(), job.script()):
            result = subprocess.run(
                [sh, "-n", "-c", script], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, result.stderr


def test_reports_and_logs_are_dated(crontab: tuple[dict[str, str], list[Job]]) -> None:
    """The report path and the log file both carry the date (from `date`), so runs don't clash."""
    for job in crontab[1]:
        command = job.shell_command()
        inner = shlex.split(job.script())
        report = inner[inner.index("--report") + 1]
        assert "$(date" in report
        assert report.endswith(".json")
        log = command.rsplit(">>", 1)[1]
        assert "$(date" in log
        assert "2>&1" in log


def test_credentials_come_from_an_env_file(crontab: tuple[dict[str, str], list[Job]]) -> None:
    """No credential is set in the crontab; each job exports an env file to the tool."""
    env, jobs = crontab
    secrets = re.compile(r"(OMS_CLEANUP|HUAWEICLOUD_SDK)_(AK|SK|SECURITY_TOKEN|AUTH_TOKEN)\b")
    assert not [name for name in env if secrets.search(name)]
    for job in jobs:
        assert not secrets.search(job.command)
        assert re.search(r"set -a && \. /\S+\.env && set \+a", job.script())


def test_tool_options_exist(crontab: tuple[dict[str, str], list[Job]]) -> None:
    """The oms-cleanup command line in each job parses with the real parser."""
    parser = build_parser()
    for job in crontab[1]:
        inner = shlex.split(job.script())
        args = inner[inner.index("oms-cleanup") + 1 :]
        parsed = parser.parse_args(args)
        assert parsed.command == "run"
        assert parsed.config is not None
