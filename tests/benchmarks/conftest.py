"""Benchmarks run only when asked for with `-m benchmark` (as `make bench` does), never in CI.

A plain `pytest` collects them and skips them, so a CI run neither pays for them nor loses
track of them (they are still imported and type-checked).
"""

from __future__ import annotations

import re

import pytest

_ASKED = re.compile(r"(?<!not )\bbenchmark\b")


@pytest.fixture(autouse=True)
def _only_on_demand(request: pytest.FixtureRequest) -> None:
    """Skip unless the marker expression asks for benchmarks."""
    expression = str(request.config.getoption("markexpr") or "")
    if not _ASKED.search(expression):
        pytest.skip("benchmark: run with `-m benchmark` (make bench)")
