"""Claiming queued jobs (one query, exactly once), where a queued job stands in line, and
recovering jobs whose worker vanished.

The fair order is per-user round-robin, then priority, then age: a user's k-th queued job (in
priority-then-age order) is in round ``running(user) + k``, and jobs are taken by (round, higher
priority, older, id). ``claim_next`` takes the head of that order; ``queue_position`` counts the
jobs ahead of one job in it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection, Select, String, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session, aliased

from tunery.queue.states import transition
from tunery.store.models import Job, utcnow
from tunery.store.status import WORKING, JobStatus


def _working_per_user() -> Select:  # type: ignore[type-arg]
    return (
        select(Job.user_id, func.count().label("n"))
        .where(Job.status.in_([w.value for w in WORKING]))
        .group_by(Job.user_id)
    )


def _next_queued(s: Session, models: list[str] | None) -> str | None:
    """The id of the queued job to run next, fairly: users with fewer jobs in progress first
    (round-robin between users), then higher priority, then older."""
    working = _working_per_user().subquery()
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
        # Concurrent claimers skip the row another claimer holds instead of waiting for it.
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


def _queue_position_query() -> Select:  # type: ignore[type-arg]
    """Built once, with the job id as a bound parameter, so SQLAlchemy compiles it once too."""
    job_id = bindparam("job_id", type_=String())
    working = _working_per_user().subquery()
    rank = func.row_number().over(partition_by=Job.user_id, order_by=(Job.priority.desc(), Job.created_at, Job.id))
    line = (
        select(Job.id, Job.priority, Job.created_at, (func.coalesce(working.c.n, 0) + rank).label("round"))
        .outerjoin(working, working.c.user_id == Job.user_id)
        .where(or_(Job.status == JobStatus.QUEUED.value, Job.id == job_id))
        .cte("line")
    )
    other, me = aliased(line), aliased(line)
    ahead = or_(
        other.c.round < me.c.round,
        and_(other.c.round == me.c.round, or_(
            other.c.priority > me.c.priority,
            and_(other.c.priority == me.c.priority, or_(
                other.c.created_at < me.c.created_at,
                and_(other.c.created_at == me.c.created_at, other.c.id < me.c.id),
            )),
        )),
    )
    return select(func.count()).select_from(other).join(me, me.c.id == job_id).where(ahead)


_QUEUE_POSITION = _queue_position_query()


def queue_position(s: Session | Connection, job: Job) -> int:
    """How many queued jobs a worker would take before ``job`` in the fair order, as things stand
    (0 unless ``job`` is pending or queued; a pending job is placed as if it were queued now)."""
    if job.status not in (JobStatus.QUEUED, JobStatus.PENDING):
        return 0
    return int(s.scalar(_QUEUE_POSITION, {"job_id": job.id}) or 0)


def requeue_stale(s: Session, timeout_s: float, max_restarts: int) -> list[str]:
    """Jobs whose worker stopped heartbeating for ``timeout_s``: requeued to restart from their
    last checkpoint (``job_restarted``), cancelled or paused if that was asked, or failed after
    ``max_restarts`` restarts. Returns the affected job ids.

    Every worker calls this; on PostgreSQL the stale rows are locked ``SKIP LOCKED`` so two
    workers never recover the same job, and a heartbeat racing the recovery either lands first
    (the job is no longer stale) or finds the job gone from its worker."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    query = select(Job).where(
        Job.status.in_([w.value for w in WORKING]),
        and_(Job.heartbeat_at.is_not(None), Job.heartbeat_at < cutoff),
    )
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    stale = s.scalars(query).all()
    for job in stale:
        lost = f"worker {job.worker_id} stopped responding"
        if job.status == JobStatus.CANCEL_REQUESTED:
            transition(s, job.id, JobStatus.CANCELLED, event_type="job_stopped", message=f"Job cancelled ({lost})",
                       worker_id=None)
        elif job.status == JobStatus.PAUSE_REQUESTED:
            transition(s, job.id, JobStatus.PAUSED, event_type="job_paused", worker_id=None, heartbeat_at=None,
                       message=f"Job paused ({lost}); resume it to continue from its last checkpoint")
        elif job.restarts >= max_restarts:
            transition(
                s, job.id, JobStatus.ERROR, event_type="job_error", level="error",
                message=f"Job failed: {lost} and it has already been restarted {job.restarts} times "
                        f"(TUNERY_MAX_RESTARTS={max_restarts}); a job that keeps losing its worker usually "
                        "runs it out of memory",
                error=f"{lost}; gave up after {job.restarts} restarts", worker_id=None,
            )
        else:
            transition(
                s, job.id, JobStatus.QUEUED, event_type="job_restarted", level="warning",
                message=f"Job restarted: {lost}; it resumes from its last checkpoint "
                        f"(restart {job.restarts + 1} of at most {max_restarts})",
                restarts=job.restarts + 1, worker_id=None, heartbeat_at=None,
            )
    return [j.id for j in stale]
