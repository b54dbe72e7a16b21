"""A job's life on a user's request: create it from a spec, cancel it, delete it once ended."""

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
    if job.status in WAITING:
        transition(s, job.id, JobStatus.CANCELLED, event_type="job_stopped",
                   message=f"Job cancelled by {by} before it started")
    elif job.status != JobStatus.CANCEL_REQUESTED:
        transition(s, job.id, JobStatus.CANCEL_REQUESTED, event_type="cancel_requested",
                   message=f"Cancel requested by {by}; the job stops at the next step")


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
