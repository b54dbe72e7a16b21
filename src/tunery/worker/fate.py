"""``JobFate``: the one owner, on a worker, of what becomes of a running job — every status the
worker writes goes through it.

A worker moves its job on (``advance``: compressing, uploading) and ends its work on it in one of
five ways: completed, failed (error or user_error), requeued (the worker shuts down), cancelled or
paused (the user asked; a paused job waits for ``resume`` with its checkpoint). Each write is a
compare-and-set guarded by ownership (``owned_by``), so a worker that was presumed dead never
touches the job's new run. When a write is refused, ``_settle`` reads the job once and decides what
happened instead — the one place that tells cancel and pause from lost:

- the user asked to cancel (``cancel_requested``, still this worker's): the job is cancelled now;
- the user asked to pause (``pause_requested``): the job is paused now, and the worker is free;
- another worker has the job (this one was presumed dead): it is left alone, lost to us;

and each way ``JobEnded`` tells the job's thread to stop working on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from tunery.queue.states import IllegalTransition, transition
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.status import TERMINAL, JobStatus

log = logging.getLogger("tunery.worker")


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    REQUEUED = "requeued"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    LOST = "lost"  # another worker has the job now


ENDED_AS = {JobStatus.COMPLETED: Outcome.COMPLETED, JobStatus.CANCELLED: Outcome.CANCELLED,
            JobStatus.ERROR: Outcome.FAILED, JobStatus.USER_ERROR: Outcome.FAILED}


class JobEnded(Exception):
    """The job has ended, or is no longer this worker's: stop working on it."""

    def __init__(self, job_id: str, outcome: Outcome):
        super().__init__(f"job {job_id}: {outcome.value}")
        self.job_id, self.outcome = job_id, outcome


class JobFate:
    def __init__(self, db: Database, job_id: str, worker_id: str):
        self.db, self.job_id, self.worker_id = db, job_id, worker_id
        self.outcome: Outcome | None = None

    def advance(self, to: JobStatus, event_type: str, message: str,
                event_fields: dict[str, Any] | None = None) -> None:
        """Move on to the next packaging stage. Raises ``JobEnded`` if the job was cancelled or
        taken over meanwhile."""
        self._write(lambda s: transition(s, self.job_id, to, event_type=event_type, message=message,
                                         owned_by=self.worker_id, event_fields=event_fields))

    def complete(self, record: Callable[[Session], None], event_fields: dict[str, Any] | None = None) -> None:
        """Complete the job in the transaction in which ``record(session)`` lists its model, so a
        completed job always has its model and a listed model always belongs to a completed job.
        Raises ``JobEnded`` (and nothing of ``record``'s is kept) if the job was cancelled or taken
        over meanwhile."""

        def _complete(s: Session) -> None:
            record(s)
            transition(s, self.job_id, JobStatus.COMPLETED, event_type="job_complete",
                       message="Fine-tuning job completed", worker_id=None, owned_by=self.worker_id,
                       event_fields=event_fields)

        self._write(_complete)
        self.outcome = Outcome.COMPLETED

    def fail(self, message: str, *, user_error: bool) -> None:
        """End the job as ``user_error`` (bad data or config) or ``error``. A job whose cancel was
        requested meanwhile is cancelled instead; one that is no longer ours is left alone."""
        to = JobStatus.USER_ERROR if user_error else JobStatus.ERROR
        try:
            self._write(lambda s: transition(s, self.job_id, to, event_type="job_error", level="error",
                                             message=message, error=message, worker_id=None,
                                             owned_by=self.worker_id))
        except JobEnded as ended:
            if ended.outcome == Outcome.LOST:
                log.warning("job %s failed here (%s) but is no longer this worker's", self.job_id, message)
            return
        self.outcome = Outcome.FAILED

    def requeue(self, message: str) -> None:
        """Give the job back to the queue (this worker shuts down); it resumes from its last
        checkpoint on the next worker. Raises ``JobEnded`` if it was cancelled or taken over."""
        self._write(lambda s: transition(s, self.job_id, JobStatus.QUEUED, event_type="job_restarted",
                                         level="warning", message=message, worker_id=None, heartbeat_at=None,
                                         owned_by=self.worker_id))
        self.outcome = Outcome.REQUEUED

    def stop_if_ended(self, step: int | None = None) -> None:
        """Raise ``JobEnded`` if the user asked to cancel or pause (the job, stopped at ``step``, is
        cancelled or paused now) or the job is no longer ours; return if it is still ours to end."""
        self._settle(step)

    def _write(self, change: Callable[[Session], Any]) -> None:
        try:
            with self.db.session() as s:
                change(s)
        except (IllegalTransition, JobEnded):
            self._settle()
            raise

    def _settle(self, step: int | None = None) -> None:
        """Why a write was refused, decided once: raises ``JobEnded`` as cancelled (the user
        asked; the job is cancelled now), lost (another worker has it) or as it already ended;
        returns otherwise."""
        with self.db.session() as s:
            job = job_store.get_job(s, self.job_id)
            if job.status in TERMINAL:
                outcome = ENDED_AS[JobStatus(job.status)]
            elif job.worker_id != self.worker_id:
                outcome = Outcome.LOST
            elif job.status == JobStatus.CANCEL_REQUESTED:
                where = f" at step {step}" if step else ""
                transition(s, self.job_id, JobStatus.CANCELLED, event_type="job_stopped",
                           message=f"Job cancelled{where}", worker_id=None, owned_by=self.worker_id)
                outcome = Outcome.CANCELLED
            elif job.status == JobStatus.PAUSE_REQUESTED:
                where = f"at step {step}; resume it to continue from there" if step else \
                    "before its first step; resume it to start again"
                transition(s, self.job_id, JobStatus.PAUSED, event_type="job_paused", message=f"Job paused {where}",
                           worker_id=None, heartbeat_at=None, owned_by=self.worker_id)
                outcome = Outcome.PAUSED
            else:
                return
        self.outcome = outcome
        raise JobEnded(self.job_id, outcome)

