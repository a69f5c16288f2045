"""`exit_code(RunEnd)`: the one place a run's exit code is chosen, by table."""

from __future__ import annotations

import pytest

from worker.exit_codes import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_REPORT_UNWRITTEN,
    EXIT_SAFETY_ABORT,
    EXIT_TASKS_LEFT,
    RunEnd,
    exit_code,
)

CASES = [
    (RunEnd(), EXIT_OK),
    (RunEnd(tasks_left=True), EXIT_TASKS_LEFT),
    (RunEnd(safety_abort=True), EXIT_SAFETY_ABORT),
    (RunEnd(safety_abort=True, tasks_left=True), EXIT_SAFETY_ABORT),
    (RunEnd(fatal=True), EXIT_FATAL),
    (RunEnd(fatal=True, safety_abort=True, tasks_left=True), EXIT_FATAL),
    (RunEnd(signal="SIGTERM"), 143),
    (RunEnd(signal="SIGINT", fatal=True, tasks_left=True), 130),
    (RunEnd(report_written=False), EXIT_REPORT_UNWRITTEN),
    (RunEnd(report_written=False, signal="SIGTERM", fatal=True), EXIT_REPORT_UNWRITTEN),
    # A signal name the table does not know is still not a success.
    (RunEnd(signal="SIGHUP"), EXIT_TASKS_LEFT),
]


@pytest.mark.parametrize(("end", "code"), CASES, ids=[repr(end) for end, _ in CASES])
def test_exit_code_table(end: RunEnd, code: int) -> None:
    """Each way a run can end maps to its documented code, the most urgent news first."""
    assert exit_code(end) == code


def test_codes_are_distinct() -> None:
    """No two meanings share a code (5 is not 1: a lost report is not 'tasks left')."""
    codes = [EXIT_OK, EXIT_TASKS_LEFT, 2, EXIT_SAFETY_ABORT, EXIT_FATAL, EXIT_REPORT_UNWRITTEN]
    assert len(set(codes)) == len(codes)
