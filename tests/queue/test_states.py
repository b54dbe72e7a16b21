"""The state machine: every (from, to) pair behaves as the table says, status and event together,
on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from tests.job_rows import job_row
from tunery.queue.states import ALLOWED_FROM, IllegalTransition, transition
from tunery.store.db import Database
from tunery.store.models import Job, JobEvent, User
from tunery.store.status import TERMINAL, JobStatus

# The lifecycle a user sees, spelled out independently of ALLOWED_FROM.
EXPECTED = {
    ("pending", "queued"), ("queued", "running"), ("running", "compressing"), ("compressing", "uploading"),
    ("uploading", "completed"),
    ("pending", "cancelled"), ("queued", "cancelled"),
    ("running", "cancel_requested"), ("compressing", "cancel_requested"), ("uploading", "cancel_requested"),
    ("cancel_requested", "cancelled"),
    ("running", "queued"), ("compressing", "queued"), ("uploading", "queued"),
    # pause: at once while waiting; a running job's worker saves a checkpoint first; resume queues it
    ("pending", "paused"), ("queued", "paused"), ("running", "pause_requested"), ("pause_requested", "paused"),
    ("paused", "queued"), ("pause_requested", "running"), ("pause_requested", "compressing"),
    ("paused", "cancelled"), ("pause_requested", "cancel_requested"),
} | {(a, b) for a in ("pending", "queued", "running", "compressing", "uploading", "cancel_requested",
                      "pause_requested", "paused")
     for b in ("error", "user_error")}


@pytest.fixture(scope="module")
def db(backend_url: str) -> Iterator[Database]:
    """One store per module, on SQLite and on PostgreSQL (tests/backends.py); jobs get unique ids."""
    db = Database(backend_url)
    db.migrate()
    with db.session() as s:
        s.add(User(id="u1", name="u1"))
    yield db
    db.dispose()


def _job(db: Database, status: JobStatus) -> str:
    job_id = f"ft-{status.value}-{uuid.uuid4().hex[:8]}"
    with db.session() as s:
        s.add(job_row(job_id, "u1", status.value))
    return job_id


def test_table_matches_the_documented_lifecycle() -> None:
    table = {(a.value, b.value) for b, froms in ALLOWED_FROM.items() for a in froms}
    assert table == EXPECTED


@pytest.mark.parametrize("from_,to", list(itertools.product(JobStatus, JobStatus)))
def test_every_pair(db: Database, from_: JobStatus, to: JobStatus) -> None:
    job_id = _job(db, from_)
    allowed = (from_.value, to.value) in EXPECTED
    if allowed:
        with db.session() as s:
            transition(s, job_id, to, event_type="t", message=f"{from_}->{to}")
    else:
        with pytest.raises(IllegalTransition), db.session() as s:
            transition(s, job_id, to, event_type="t", message="no")
    with db.session() as s:
        job = s.get(Job, job_id)
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).all()
    assert job is not None
    assert job.status == (to.value if allowed else from_.value)
    # The event is written in the same transaction: present exactly when the status changed.
    assert len(events) == (1 if allowed else 0)
    if allowed and to in TERMINAL:
        assert job.finished_at is not None and job.secrets is None


def test_compare_and_set_loses_the_race_cleanly(db: Database) -> None:
    job_id = _job(db, JobStatus.QUEUED)
    with db.session() as s:
        transition(s, job_id, JobStatus.RUNNING, event_type="job_start", message="a")
    with pytest.raises(IllegalTransition), db.session() as s:
        transition(s, job_id, JobStatus.RUNNING, event_type="job_start", message="b",
                   only_from=frozenset({JobStatus.QUEUED}))
