"""The project's Dockerfile read into stages and instructions, for the deployment tests.

Only the subset of the Dockerfile syntax this project uses: comments, line continuations,
`FROM image [AS name]`, and instructions whose arguments are either shell words or a JSON
array. Enough to hold the image's promises (user, environment, entry point) against the tests
that act them out.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True, slots=True)
class Instruction:
    """One instruction: its keyword (upper case) and its argument text, continuations joined."""

    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON-array (exec) form's items; ValueError if written in shell form."""
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError:
            raise ValueError(f"{self.keyword} is not in exec (JSON array) form") from None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{self.keyword} is not a JSON array of strings")
        return value

    def pairs(self) -> dict[str, str]:
        """`KEY=value` words (ENV, LABEL, ARG) as a mapping, quotes removed."""
        found: dict[str, str] = {}
        for word in shlex.split(self.arguments):
            key, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"{self.keyword} {word!r} is not KEY=value")
            found[key] = value
        return found


@dataclass(frozen=True, slots=True)
class Stage:
    """A build stage: its base image, its name (if any) and its instructions after FROM."""

    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def every(self, keyword: str) -> list[Instruction]:
        """The stage's instructions with this keyword, in order."""
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        """The stage's last instruction with this keyword (the one in effect)."""
        found = self.every(keyword)
        if not found:
            raise LookupError(f"no {keyword} in the stage FROM {self.base}")
        return found[-1]

    def merged(self, keyword: str) -> dict[str, str]:
        """All KEY=value pairs of this keyword in the stage, later ones winning."""
        merged: dict[str, str] = {}
        for item in self.every(keyword):
            merged.update(item.pairs())
        return merged


def logical_lines(text: str) -> list[str]:
    """Instruction lines: comments and blank lines dropped, backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append((pending + stripped).strip())
        pending = ""
    if pending.strip():
        lines.append(pending.strip())
    return lines


def parse_dockerfile(text: str) -> tuple[Stage, ...]:
    """The stages of a Dockerfile, in order."""
    stages: list[Stage] = []
    base: str | None = None
    name: str | None = None
    body: list[Instruction] = []
    for line in logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            if base is not None:
                stages.append(Stage(base, name, tuple(body)))
            words = arguments.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            body = []
        elif base is None:
            if keyword != "ARG":
                raise ValueError(f"{keyword} before the first FROM")
        else:
            body.append(Instruction(keyword, arguments))
    if base is None:
        raise ValueError("no FROM instruction")
    stages.append(Stage(base, name, tuple(body)))
    return tuple(stages)


def copy_sources(stage: Stage) -> list[str]:
    """The build-context paths a stage COPYs (COPY --from=... copies from stages, not here)."""
    sources: list[str] = []
    for item in stage.every("COPY"):
        words = item.arguments.split()
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources.extend(paths[:-1])
    return sources
