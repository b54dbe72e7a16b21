"""Job rows and what hangs off them: events, metrics, checkpoints. Status changes go through
``tunery.queue.states.transition``, never through here."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from tunery.errors import NotFound
from tunery.store.models import Checkpoint, Job, JobEvent, JobMetric, utcnow
from tunery.store.status import WORKING, JobStatus


def new_job_id() -> str:
    return f"ft-{uuid.uuid4()}"


def create_job(s: Session, job: Job) -> Job:
    """Insert a new ``pending`` job with its ``job_pending`` event."""
    job.status = JobStatus.PENDING.value
    s.add(job)
    s.flush()
    add_event(s, job.id, "job_pending", "Fine-tuning job created")
    return job


def get_job(s: Session, job_id: str, user_id: str | None = None) -> Job:
    """The job, if it exists and (when ``user_id`` is given) belongs to that user; else NotFound."""
    job = s.get(Job, job_id)
    if job is None or (user_id is not None and job.user_id != user_id):
        raise _job_not_found(job_id)
    return job


def _job_not_found(job_id: str) -> NotFound:
    return NotFound(f"fine-tuning job {job_id} not found", param="id")


_JOB_ROW = select(Job.__table__).where(Job.__table__.c.id == bindparam("job_id"))


def read_job(conn: Connection, job_id: str, user_id: str) -> Job:
    """``get_job`` on a plain connection (``Database.read_rows``): the job as a detached ``Job``,
    for reading only."""
    row = conn.execute(_JOB_ROW, {"job_id": job_id}).one_or_none()
    if row is None or row.user_id != user_id:
        raise _job_not_found(job_id)
    return Job(**row._mapping)


_JOB_OWNER = select(Job.user_id).where(Job.id == bindparam("job_id"))


def check_owner(conn: Connection, job_id: str, user_id: str) -> None:
    """NotFound unless the job exists and belongs to ``user_id`` (``read_job`` without the row)."""
    if conn.scalar(_JOB_OWNER, {"job_id": job_id}) != user_id:
        raise _job_not_found(job_id)


def find_job_by_output_name(s: Session, name: str, user_id: str) -> Job | None:
    return s.scalar(select(Job).where(Job.model_output_name == name, Job.user_id == user_id))


def list_jobs(s: Session, user_id: str, status: str | None = None, limit: int | None = None,
              offset: int = 0) -> list[Job]:
    q = select(Job).where(Job.user_id == user_id)
    if status:
        q = q.where(Job.status == status)
    q = q.order_by(Job.created_at.desc(), Job.id.desc()).offset(offset)
    if limit:
        q = q.limit(limit)
    return list(s.scalars(q))


def count_jobs(s: Session, user_id: str, status: str | None = None) -> int:
    q = select(func.count()).select_from(Job).where(Job.user_id == user_id)
    if status:
        q = q.where(Job.status == status)
    return int(s.scalar(q) or 0)


def delete_job(s: Session, job: Job) -> list[str]:
    """Delete a job and its rows; returns the blob keys the caller must remove."""
    keys = list(s.scalars(select(Checkpoint.blob_key).where(Checkpoint.job_id == job.id)))
    if job.tokenized_dataset_key:
        keys.append(job.tokenized_dataset_key)
    for table in (Checkpoint, JobMetric, JobEvent):
        s.execute(delete(table).where(table.job_id == job.id))
    s.delete(job)
    return keys


# -- events ---------------------------------------------------------------------------------------

def add_event(s: Session, job_id: str, type_: str, message: str, level: str = "info",
              fields: dict[str, Any] | None = None) -> None:
    s.execute(insert(JobEvent).values(job_id=job_id, created_at=utcnow(), type=type_, level=level,
                                      message=message, fields=fields or None))


class Event(NamedTuple):
    """One event of a job, as read (plain values rather than ORM rows: a retrieve reads dozens)."""

    created_at: datetime
    type: str
    level: str
    message: str
    fields: dict[str, Any] | None


_EVENTS = (select(JobEvent.created_at, JobEvent.type, JobEvent.level, JobEvent.message, JobEvent.fields)
           .where(JobEvent.job_id == bindparam("job_id")).order_by(JobEvent.id))


def list_events(s: Session | Connection, job_id: str) -> list[Event]:
    return [Event(*row) for row in s.execute(_EVENTS, {"job_id": job_id}).all()]


# -- metrics --------------------------------------------------------------------------------------

def add_metrics(s: Session, job_id: str, step: int, values: dict[str, float]) -> None:
    """Non-finite values (an overflowing gradient norm) are stored as null: JSON has no NaN or
    Infinity, PostgreSQL refuses them and no client could parse them."""
    finite = {k: v if v is None or math.isfinite(v) else None for k, v in values.items()}
    s.execute(insert(JobMetric).values(job_id=job_id, step=step, logged_at=utcnow(), values=finite))


def list_metrics(s: Session, job_id: str, step_from: int | None = None, step_to: int | None = None,
                 logged_from: datetime | None = None, logged_to: datetime | None = None) -> list[JobMetric]:
    q = select(JobMetric).where(JobMetric.job_id == job_id)
    if step_from is not None:
        q = q.where(JobMetric.step >= step_from)
    if step_to is not None:
        q = q.where(JobMetric.step <= step_to)
    if logged_from is not None:
        q = q.where(JobMetric.logged_at >= logged_from)
    if logged_to is not None:
        q = q.where(JobMetric.logged_at <= logged_to)
    return list(s.scalars(q.order_by(JobMetric.step, JobMetric.id)))


# -- checkpoints ----------------------------------------------------------------------------------

def add_checkpoint(s: Session, job_id: str, step: int, variant: str, blob_key: str, size: int,
                   final: bool) -> None:
    """List a checkpoint artifact. Call only after its blob is completely stored."""
    s.add(Checkpoint(job_id=job_id, step=step, variant=variant, blob_key=blob_key, size=size, final=final))


def list_checkpoints(s: Session, job_id: str) -> list[Checkpoint]:
    return list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                          .order_by(Checkpoint.step, Checkpoint.final, Checkpoint.variant)))


def find_checkpoint(s: Session, job_id: str, variant: str, step: int | None) -> Checkpoint | None:
    """The artifact ``variant`` at ``step``, or the final one when ``step`` is None."""
    q = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.variant == variant)
    q = q.where(Checkpoint.final.is_(True)) if step is None else q.where(Checkpoint.step == step)
    return s.scalar(q.order_by(Checkpoint.final.desc(), Checkpoint.id.desc()).limit(1))


def latest_state_checkpoint(s: Session, job_id: str) -> Checkpoint | None:
    return s.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.variant == "state")
                    .order_by(Checkpoint.step.desc()).limit(1))


# -- worker-side progress -------------------------------------------------------------------------

def update_progress(s: Session, job_id: str, **values: Any) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow(), **values)
              .execution_options(synchronize_session=False))


def heartbeat(s: Session, job_id: str, worker_id: str) -> str | None:
    """Record that ``worker_id`` still works on ``job_id``; returns the job's status, or None if
    the job is no longer this worker's (it was requeued to someone else)."""
    s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                Job.status.in_([w.value for w in WORKING]))
              .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False))
    job = s.get(Job, job_id)
    return job.status if job is not None and job.worker_id == worker_id else None


# -- newest-first pages (OpenAI's cursor lists) ---------------------------------------------------

def events_page(s: Session, job_id: str, limit: int, before: datetime | None = None, before_id: int | None = None,
                ) -> list[JobEvent]:
    """Up to ``limit`` events, newest first, created before ``before`` — or at that very time with an id
    below ``before_id`` (every one at that time when ``before_id`` is None)."""
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    if before is not None:
        at = JobEvent.created_at == before
        q = q.where((JobEvent.created_at < before) | (at & (JobEvent.id < before_id) if before_id is not None else at))
    return list(s.scalars(q.order_by(JobEvent.created_at.desc(), JobEvent.id.desc()).limit(limit)))


def metrics_page(s: Session, job_id: str, limit: int, before: datetime | None = None, before_id: int | None = None,
                 ) -> list[JobMetric]:
    """As ``events_page``, for metrics rows (by the time they were logged)."""
    q = select(JobMetric).where(JobMetric.job_id == job_id)
    if before is not None:
        at = JobMetric.logged_at == before
        q = q.where((JobMetric.logged_at < before) | (at & (JobMetric.id < before_id) if before_id is not None else at))
    return list(s.scalars(q.order_by(JobMetric.logged_at.desc(), JobMetric.id.desc()).limit(limit)))
