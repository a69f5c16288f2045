"""The process's exit codes: the contract cron, Kubernetes and scripts act on (see README)."""

from __future__ import annotations

EXIT_OK = 0
# Finished with tasks left: failed, still_running, not_attempted, or out of reach.
EXIT_TASKS_LEFT = 1
# Usage or configuration error; nothing was sent.
EXIT_USAGE = 2
# --max-deletions exceeded or confirmation declined; nothing (more) deleted.
EXIT_SAFETY_ABORT = 3
# Authentication, permission, or a listing that cannot complete.
EXIT_FATAL = 4
# 130 (SIGINT) and 143 (SIGTERM) come from shutdown.SIGNAL_EXIT_CODES.
