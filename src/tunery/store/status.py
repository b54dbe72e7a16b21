"""A job's status values and the sets the rest of the code asks about. They sit beside the job
table that stores them, so the store never has to import the state machine above it
(``tunery.queue.states``, which owns the transitions and the only function that writes a status)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPRESSING = "compressing"
    UPLOADING = "uploading"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    PAUSE_REQUESTED = "pause_requested"
    PAUSED = "paused"
    ERROR = "error"
    USER_ERROR = "user_error"
    COMPLETED = "completed"


S = JobStatus
# A job in one of these has ended: nothing changes it any more (it may only be deleted).
TERMINAL = frozenset({S.COMPLETED, S.CANCELLED, S.ERROR, S.USER_ERROR})
ACTIVE = frozenset(S) - TERMINAL
# Statuses in which a worker owns the job (and heartbeats it).
WORKING = frozenset({S.RUNNING, S.COMPRESSING, S.UPLOADING, S.CANCEL_REQUESTED, S.PAUSE_REQUESTED})
# Not yet taken by a worker: cancelling one ends it at once.
WAITING = frozenset({S.PENDING, S.QUEUED})
