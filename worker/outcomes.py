"""What happened to a selected task, and what a delete's answer means for it next."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """The final outcome of one selected task, as written in the report."""

    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    STILL_RUNNING = "still_running"
    FAILED = "failed"
    WOULD_DELETE = "would_delete"
    NOT_ATTEMPTED = "not_attempted"
