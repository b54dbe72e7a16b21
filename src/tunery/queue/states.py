"""The job state machine: the transition table, and ``transition`` — the only function that
writes a job's status (the status values live beside the job table, in ``tunery.store.status``).
It is a compare-and-set ``UPDATE … WHERE status IN (allowed)`` that
records the matching event in the same transaction.

    pending → queued → running → compressing → uploading → completed
    pending|queued → cancelled                  (cancel before a worker took it)
    running|compressing|uploading → cancel_requested → cancelled
    running|compressing|uploading → queued      (worker lost or shut down: restart)
    pending|queued → paused ──resume──► queued  (pause before a worker took it)
    running → pause_requested → paused          (the worker saves a checkpoint and lets the job go)
    pause_requested → running                   (resumed before the worker stopped)
    pause_requested → compressing               (training ended before the pause took effect)
    paused → cancelled;  pause_requested → cancel_requested
    any active status → error | user_error
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from tunery.errors import Conflict
from tunery.store.models import Job, JobEvent, utcnow
from tunery.store.status import ACTIVE, TERMINAL, JobStatus

S = JobStatus

# to-status → the statuses it may be entered from.
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    S.PENDING: frozenset(),
    S.QUEUED: frozenset({S.PENDING, S.RUNNING, S.COMPRESSING, S.UPLOADING, S.PAUSED}),
    S.RUNNING: frozenset({S.QUEUED, S.PAUSE_REQUESTED}),
    S.COMPRESSING: frozenset({S.RUNNING, S.PAUSE_REQUESTED}),
    S.UPLOADING: frozenset({S.COMPRESSING}),
    S.COMPLETED: frozenset({S.UPLOADING}),
    S.CANCEL_REQUESTED: frozenset({S.RUNNING, S.COMPRESSING, S.UPLOADING, S.PAUSE_REQUESTED}),
    S.CANCELLED: frozenset({S.PENDING, S.QUEUED, S.CANCEL_REQUESTED, S.PAUSED}),
    S.PAUSE_REQUESTED: frozenset({S.RUNNING}),
    S.PAUSED: frozenset({S.PENDING, S.QUEUED, S.PAUSE_REQUESTED}),
    S.ERROR: ACTIVE,
    S.USER_ERROR: ACTIVE,
}


class IllegalTransition(Conflict):
    """The job is not in a status from which this change is allowed."""


def transition(
    s: Session,
    job_id: str,
    to: JobStatus,
    *,
    event_type: str,
    message: str,
    level: str = "info",
    only_from: frozenset[JobStatus] | None = None,
    owned_by: str | None = None,
    event_fields: dict[str, Any] | None = None,
    **columns: Any,
) -> None:
    """Move ``job_id`` to ``to`` if its current status allows it (optionally narrowed to
    ``only_from``) and — with ``owned_by`` — it is still that worker's, set ``columns`` on the row,
    and record one event, all in the caller's transaction. Raises ``IllegalTransition`` when the
    job is not in an allowed status (or belongs to another worker by now)."""
    allowed = ALLOWED_FROM[to] if only_from is None else ALLOWED_FROM[to] & only_from
    now = utcnow()
    if to in TERMINAL:
        columns.setdefault("finished_at", now)
        columns.setdefault("secrets", None)  # secrets never outlive the job
        columns.setdefault("seconds_remaining", None)
    where = [Job.id == job_id, Job.status.in_([a.value for a in allowed])]
    if owned_by is not None:
        where.append(Job.worker_id == owned_by)
    result = s.execute(
        update(Job)
        .where(*where)
        .values(status=to.value, updated_at=now, **columns)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        current = s.get(Job, job_id)
        status = current.status if current else "missing"
        if current is not None and owned_by is not None and current.worker_id != owned_by:
            raise IllegalTransition(f"job {job_id} is no longer run by worker {owned_by}")
        raise IllegalTransition(f"job {job_id} cannot go from {status} to {to.value}")
    s.execute(
        insert(JobEvent).values(
            job_id=job_id, created_at=now, type=event_type, level=level, message=message, fields=event_fields
        )
    )
