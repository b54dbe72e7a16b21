"""A job's life on a user's request: create it from a spec, cancel, pause or resume it, delete it
once ended."""

from __future__ import annotations

import hashlib
from contextlib import suppress

from sqlalchemy.orm import Session

from tunery.errors import Conflict, InvalidRequest
from tunery.jobs.admission import Limits, admit
from tunery.jobspec import JobSpec
from tunery.queue.states import transition
from tunery.storage import BlobStore
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.models import File, Job, User
from tunery.store.secrets import SealedSecrets
from tunery.store.status import TERMINAL, WAITING, JobStatus


def create(s: Session, user: User, spec: JobSpec, secrets: SealedSecrets, training_file: File, *,
           limits: Limits, estimated_tokens: int, priority: int = 0) -> Job:
    """Insert the job ``spec`` describes, for ``user``, and queue it, once the operator's
    ``limits`` admit it (``admission.admit``: 400 or 429 otherwise). ``training_file`` is the
    spec's training file, already checked by the dialect's resolver; ``secrets`` are the job's
    credentials as ``SecretBox.seal`` left them (never stored in clear); ``estimated_tokens`` what
    it will train on (the price estimate's measure), held against the token quota until it starts."""
    admit(s, user, spec, estimated_tokens, limits)
    job_id = job_store.new_job_id()
    job = job_store.create_job(s, Job(
        id=job_id, user_id=user.id, spec=spec, model_output_name=output_name(user, spec.model, spec.suffix, job_id),
        secrets=secrets.value, priority=priority, reserved_tokens=estimated_tokens,
        trainingfile_numlines=training_file.num_samples, trainingfile_size=training_file.bytes,
    ))
    transition(s, job.id, JobStatus.QUEUED, event_type="job_pending", message="Job queued, waiting for a worker")
    s.refresh(job)
    return job


def output_name(user: User, model: str, suffix: str | None, job_id: str) -> str:
    """Together's convention: ``<account>/<base>-<suffix>-<hash>``."""
    base = model.rstrip("/").split("/")[-1]
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:6]
    return f"{user.name}/{base}{'-' + suffix if suffix else ''}-{digest}"


def cancel(s: Session, job: Job, by: str) -> None:
    """Cancel now if no worker has taken the job, else ask its worker to stop at the next step
    (``cancel_requested``; the worker ends it). ``by`` names who asked, for the event. Raises
    ``InvalidRequest`` for a job that has already ended, ``IllegalTransition`` (a ``Conflict``) if
    it ended meanwhile."""
    if job.status in TERMINAL:
        raise InvalidRequest(f"job {job.id} is {job.status}; only unfinished jobs can be cancelled", param="id")
    if job.status in WAITING or job.status == JobStatus.PAUSED:
        started = "while paused" if job.status == JobStatus.PAUSED else "before it started"
        transition(s, job.id, JobStatus.CANCELLED, event_type="job_stopped", message=f"Job cancelled by {by} {started}")
    elif job.status != JobStatus.CANCEL_REQUESTED:
        transition(s, job.id, JobStatus.CANCEL_REQUESTED, event_type="cancel_requested",
                   message=f"Cancel requested by {by}; the job stops at the next step")


def pause(s: Session, job: Job, by: str) -> None:
    """Pause a job: one that waits is paused at once; a running one's worker is asked to save a
    checkpoint at its next step and let the job go (``pause_requested``; the worker then moves it to
    ``paused`` and takes other jobs). Pausing a paused (or pausing) job changes nothing. Raises
    ``InvalidRequest`` for a job that ended or is already packaging its final model."""
    if job.status in WAITING:
        transition(s, job.id, JobStatus.PAUSED, event_type="job_paused",
                   message=f"Job paused by {by} before it started; resume it to queue it again")
    elif job.status == JobStatus.RUNNING:
        transition(s, job.id, JobStatus.PAUSE_REQUESTED, event_type="pause_requested",
                   message=f"Pause requested by {by}; the job saves a checkpoint at its next step and frees its worker")
    elif job.status not in (JobStatus.PAUSE_REQUESTED, JobStatus.PAUSED):
        raise InvalidRequest(f"job {job.id} is {job.status}; only a queued or running job can be paused", param="id")


def resume(s: Session, job: Job, by: str) -> None:
    """Queue a paused job again; it continues from the checkpoint it was paused at. A job whose pause
    was asked for but not yet carried out just keeps running. Raises ``InvalidRequest`` otherwise."""
    if job.status == JobStatus.PAUSED:
        transition(s, job.id, JobStatus.QUEUED, event_type="job_resumed",
                   message=f"Job resumed by {by}; it continues from its last checkpoint", heartbeat_at=None)
    elif job.status == JobStatus.PAUSE_REQUESTED:
        transition(s, job.id, JobStatus.RUNNING, event_type="job_resumed",
                   message=f"Job resumed by {by} before it paused; it carries on")
    else:
        raise InvalidRequest(f"job {job.id} is {job.status}; only a paused job can be resumed", param="id")


def delete(db: Database, blobs: BlobStore, user_id: str, job_id: str) -> None:
    """Delete the user's ended job, its rows and then its stored artifacts. The rows go first, in
    their own committed transaction, so a failure in between leaves unreferenced blobs (garbage)
    and never a listed checkpoint whose blob is gone. Raises ``NotFound``, or ``Conflict`` while
    the job has not ended."""
    with db.session() as s:
        job = job_store.get_job(s, job_id, user_id)
        if job.status not in TERMINAL:
            raise Conflict(f"job {job.id} is {job.status}; cancel it and wait until it ends before deleting it",
                           param="id")
        keys = job_store.delete_job(s, job)
    for key in keys:
        with suppress(Exception):  # best effort: an unlisted blob is garbage, never data
            blobs.delete(key)
