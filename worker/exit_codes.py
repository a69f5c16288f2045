"""The process's exit codes (the contract cron, Kubernetes and scripts act on, see README),
and the one function that picks a run's code from how the run ended.

`exit_code` is pure: the runner gathers the facts once, at the end, into a `RunEnd`, and
nothing else in the run returns or juggles an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
# Finished with tasks left: failed, still_running, not_attempted, out of reach, or a
# listing the run stopped before it completed (deadline).
EXIT_TASKS_LEFT = 1
# Usage or configuration error (the report path not writable included); nothing was sent.
EXIT_USAGE = 2
# --max-deletions exceeded or confirmation declined; nothing (more) deleted.
EXIT_SAFETY_ABORT = 3
# Authentication, permission, or a listing that cannot complete.
EXIT_FATAL = 4
# The run ended but its report could not be written (the summary went to the log).
EXIT_REPORT_UNWRITTEN = 5
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnd:
    """The facts about a finished run that decide its exit code.

    `tasks_left`: a selected task not done (failed, still running, not attempted), a target
    whose listing did not complete, or tasks out of reach of the offset cap.
    """

    report_written: bool = True
    signal: str | None = None
    fatal: bool = False
    safety_abort: bool = False
    tasks_left: bool = False


def exit_code(end: RunEnd) -> int:
    """The process exit code for a run that ended like `end`, most urgent news first.

    A missing report outranks everything (whatever else happened, nobody can read it); a
    signal outranks the rest, because whoever sent it waits for 130/143; then the run's own
    stops: fatal, safety, tasks left.
    """
    if not end.report_written:
        return EXIT_REPORT_UNWRITTEN
    if end.signal is not None:
        return SIGNAL_EXIT_CODES.get(end.signal, EXIT_TASKS_LEFT)
    if end.fatal:
        return EXIT_FATAL
    if end.safety_abort:
        return EXIT_SAFETY_ABORT
    if end.tasks_left:
        return EXIT_TASKS_LEFT
    return EXIT_OK
