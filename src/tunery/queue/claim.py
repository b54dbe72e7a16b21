"""Claiming queued jobs (one query, exactly once) and recovering jobs whose worker vanished."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from tunery.queue.states import WORKING, JobStatus, transition
from tunery.store.models import Job, utcnow


def _next_queued(s: Session, models: list[str] | None) -> str | None:
    """The id of the queued job to run next, fairly: users with fewer jobs in progress first
    (round-robin between users), then higher priority, then older."""
    working = (
        select(Job.user_id, func.count().label("n"))
        .where(Job.status.in_([w.value for w in WORKING]))
        .group_by(Job.user_id)
        .subquery()
    )
    query = (
        select(Job.id)
        .outerjoin(working, working.c.user_id == Job.user_id)
        .where(Job.status == JobStatus.QUEUED.value)
        .order_by(func.coalesce(working.c.n, 0), Job.priority.desc(), Job.created_at, Job.id)
        .limit(1)
    )
    if models:
        query = query.where(Job.model.in_(models))
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Job)
    return s.scalar(query)


def claim_next(s: Session, worker_id: str, models: list[str] | None = None) -> str | None:
    """Atomically take the next queued job for ``worker_id``: it becomes ``running`` with this
    worker as owner. Returns the job id or None. On PostgreSQL the row is locked with
    ``FOR UPDATE SKIP LOCKED``; on SQLite the session's ``BEGIN IMMEDIATE`` serialises claimers."""
    job_id = _next_queued(s, models)
    if job_id is None:
        return None
    now = utcnow()
    transition(
        s, job_id, JobStatus.RUNNING, event_type="job_start", message=f"Job started on worker {worker_id}",
        only_from=frozenset({JobStatus.QUEUED}), worker_id=worker_id, heartbeat_at=now, started_at=now,
    )
    return job_id


def requeue_stale(s: Session, timeout_s: float, max_restarts: int) -> list[str]:
    """Jobs whose worker stopped heartbeating for ``timeout_s``: requeued to restart from their
    last checkpoint (``job_restarted``), cancelled if a cancel was pending, or failed after
    ``max_restarts`` restarts. Returns the affected job ids."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    stale = s.scalars(
        select(Job).where(
            Job.status.in_([w.value for w in WORKING]),
            and_(Job.heartbeat_at.is_not(None), Job.heartbeat_at < cutoff),
        )
    ).all()
    for job in stale:
        lost = f"worker {job.worker_id} stopped responding"
        if job.status == JobStatus.CANCEL_REQUESTED:
            transition(s, job.id, JobStatus.CANCELLED, event_type="job_stopped", message=f"Job cancelled ({lost})",
                       worker_id=None)
        elif job.restarts >= max_restarts:
            transition(
                s, job.id, JobStatus.ERROR, event_type="job_error", level="error",
                message=f"Job failed: {lost} and it has already been restarted {job.restarts} times",
                error=f"{lost}; gave up after {job.restarts} restarts", worker_id=None,
            )
        else:
            transition(
                s, job.id, JobStatus.QUEUED, event_type="job_restarted", level="warning",
                message=f"Job restarted: {lost}; it resumes from its last checkpoint",
                restarts=job.restarts + 1, worker_id=None, heartbeat_at=None,
            )
    return [j.id for j in stale]
