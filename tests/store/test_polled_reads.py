"""The reads behind the two routes every SDK polls (``GET /v1/fine-tunes/{id}`` and its events): on
a plain connection (``Database.read_rows``) they return exactly what the ORM reads return, on both
backends, and the JSON and datetime decoders they run behind are exact."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, text

from tests.job_rows import job_row
from tunery.errors import NotFound
from tunery.queue.claim import queue_position
from tunery.store import jobs as job_store
from tunery.store.db import Database, load_json
from tunery.store.models import Job, User
from tunery.store.status import JobStatus
from tunery.store.users import create_key, user_for_key, user_id_for_key

STAMP = datetime(2026, 12, 1, 21, 30, 5, 123456, tzinfo=UTC)


def seeded(database: Database) -> str:
    """Users u1 (with the returned key) and u2; u1's completed job ft-a with every datetime set,
    three events, a metric; u1's queued jobs ft-b and ft-c."""
    with database.session() as s:
        s.add_all([User(id="u1", name="one"), User(id="u2", name="two")])
    with database.session() as s:
        key = create_key(s, "one")
        s.add(job_row("ft-a", "u1", JobStatus.COMPLETED, created_at=STAMP, updated_at=STAMP.replace(microsecond=0),
                      started_at=STAMP, finished_at=STAMP, heartbeat_at=STAMP, tokenized_dataset_uploaded_at=STAMP,
                      batch_size=8, seconds_remaining=1.5, wandb_url="https://wandb.ai/x", total_steps=10))
        s.add(job_row("ft-b", "u1", JobStatus.QUEUED, created_at=STAMP))
        s.add(job_row("ft-c", "u1", JobStatus.QUEUED, created_at=STAMP.replace(second=6)))
    with database.session() as s:
        job_store.add_event(s, "ft-a", "job_start", "started")
        job_store.add_event(s, "ft-a", "training_progress", "step 1", fields={"step": 1, "token_count": 99})
        job_store.add_event(s, "ft-a", "job_complete", "done", level="info", fields={"model_path": "jobs/ft-a"})
    return key


def columns(job: Job) -> dict[str, object]:
    return {attr.key: getattr(job, attr.key) for attr in inspect(Job).column_attrs}


def test_a_job_read_on_a_plain_connection_is_the_orm_job(database: Database) -> None:
    key = seeded(database)
    for job_id in ("ft-a", "ft-b", "ft-c"):
        with database.read() as s:
            orm = job_store.get_job(s, job_id, "u1")
            orm_events, orm_position = job_store.list_events(s, job_id), queue_position(s, orm)
        with database.read_rows() as conn:
            row = job_store.read_job(conn, job_id, "u1")
            events, position = job_store.list_events(conn, job_id), queue_position(conn, row)
        assert columns(row) == columns(orm)
        assert events == orm_events and position == orm_position
    assert [e.type for e in events] == [] and position == 1  # ft-c waits behind ft-b
    with database.read_rows() as conn:
        got = job_store.read_job(conn, "ft-a", "u1")
        events = job_store.list_events(conn, "ft-a")
        assert user_id_for_key(conn, key) == "u1" and user_id_for_key(conn, key + "x") is None
    assert got.started_at == STAMP and got.updated_at == STAMP.replace(microsecond=0)
    assert [(e.type, e.fields) for e in events] == [
        ("job_start", None), ("training_progress", {"step": 1, "token_count": 99}),
        ("job_complete", {"model_path": "jobs/ft-a"})]
    with database.read() as s:
        assert user_for_key(s, key).id == "u1"  # type: ignore[union-attr]


def test_a_plain_connection_read_finds_only_the_users_own_jobs(database: Database) -> None:
    seeded(database)
    with database.read_rows() as conn:
        for job_id, user_id in (("ft-a", "u2"), ("ft-missing", "u1")):
            with pytest.raises(NotFound, match=f"fine-tuning job {job_id} not found"):
                job_store.read_job(conn, job_id, user_id)
            with pytest.raises(NotFound, match=f"fine-tuning job {job_id} not found"):
                job_store.check_owner(conn, job_id, user_id)
        job_store.check_owner(conn, "ft-a", "u1")


def test_sqlite_datetimes_are_read_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite keeps datetimes as text; the fast reader must give what SQLAlchemy's regex did, for
    each form a row can hold (with and without microseconds, with an offset)."""
    database = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    database.migrate()
    seeded(database)
    forms = {"2026-12-01 21:30:05.123456": STAMP, "2026-12-01 21:30:05": STAMP.replace(microsecond=0),
             "2026-12-01T22:30:05.123456+01:00": STAMP}
    for stored, expected in forms.items():
        with database.session() as s:
            s.execute(text("UPDATE jobs SET started_at = :v WHERE id = 'ft-a'"), {"v": stored})
        with database.read_rows() as conn:
            got = job_store.read_job(conn, "ft-a", "u1").started_at
        assert got == expected and got.tzinfo is UTC, stored


def test_json_columns_decode_what_json_dumps_wrote() -> None:
    assert load_json('{"step": 1, "loss": 0.5, "name": "é"}') == {"step": 1, "loss": 0.5, "name": "é"}
    got = load_json('{"loss": NaN, "grad_norm": Infinity}')  # a diverged run's metrics
    assert math.isnan(got["loss"]) and got["grad_norm"] == math.inf


def test_a_non_finite_metric_is_stored_as_null(database: Database) -> None:
    seeded(database)
    with database.session() as s:
        job_store.add_metrics(s, "ft-a", 1, {"grad_norm": math.inf, "loss": float("nan"), "lr": 1e-3})
    with database.read() as s:
        (metric,) = job_store.list_metrics(s, "ft-a")
    assert metric.values == {"grad_norm": None, "loss": None, "lr": 1e-3}
