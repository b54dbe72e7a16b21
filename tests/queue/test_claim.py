"""Claiming takes each queued job exactly once, fairly; stale jobs are requeued or failed — on SQLite
and on PostgreSQL (where claiming is FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import multiprocessing as mp
from datetime import timedelta

import pytest
from sqlalchemy import select

from tunery.queue.claim import claim_next, requeue_stale
from tunery.store.db import Database
from tunery.store.models import Job, JobEvent, User, utcnow


@pytest.fixture()
def db(database: Database) -> Database:
    """An empty store with two users, on SQLite and on PostgreSQL (tests/backends.py)."""
    with database.session() as s:
        s.add_all([User(id="u1", name="u1"), User(id="u2", name="u2")])
    return database


def _queue(db: Database, job_id: str, user: str = "u1", priority: int = 0, status: str = "queued") -> None:
    with db.session() as s:
        s.add(Job(id=job_id, user_id=user, status=status, model="m", model_output_name="o", training_file="f",
                  params={}, priority=priority, created_at=utcnow()))


def _claimer(url: str, worker: str, out: mp.Queue) -> None:
    db = Database(url)
    got = []
    while True:
        with db.session() as s:
            job_id = claim_next(s, worker)
        if job_id is None:
            break
        got.append(job_id)
    out.put(got)


def test_concurrent_claimers_take_each_job_once(db: Database) -> None:
    for i in range(40):
        _queue(db, f"ft-{i:03d}")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(db.url, f"w{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    claimed = [job for _ in procs for job in out.get(timeout=120)]
    for p in procs:
        p.join()
    assert sorted(claimed) == [f"ft-{i:03d}" for i in range(40)]
    with db.session() as s:
        assert {j.status for j in s.scalars(select(Job))} == {"running"}


def test_fair_order_round_robins_users_then_priority_then_age(db: Database) -> None:
    _queue(db, "ft-a1")
    _queue(db, "ft-a2")
    _queue(db, "ft-b1", user="u2")
    _queue(db, "ft-a3", priority=5)
    order = []
    for _ in range(4):
        with db.session() as s:
            order.append(claim_next(s, "w"))
    # u1's highest priority first; then u2 (u1 already has one running); then u1's oldest.
    assert order == ["ft-a3", "ft-b1", "ft-a1", "ft-a2"]


def test_stale_jobs_are_requeued_then_failed_after_max_restarts(db: Database) -> None:
    _queue(db, "ft-x")
    with db.session() as s:
        claim_next(s, "w1")
        s.get(Job, "ft-x").heartbeat_at = utcnow() - timedelta(seconds=100)  # type: ignore[union-attr]
    with db.session() as s:
        assert requeue_stale(s, timeout_s=30, max_restarts=1) == ["ft-x"]
    with db.session() as s:
        job = s.get(Job, "ft-x")
        assert job is not None and job.status == "queued" and job.restarts == 1 and job.worker_id is None
        claim_next(s, "w2")
    with db.session() as s:
        s.get(Job, "ft-x").heartbeat_at = utcnow() - timedelta(seconds=100)  # type: ignore[union-attr]
    with db.session() as s:
        requeue_stale(s, timeout_s=30, max_restarts=1)
    with db.session() as s:
        job = s.get(Job, "ft-x")
        types = [e.type for e in s.scalars(select(JobEvent).where(JobEvent.job_id == "ft-x").order_by(JobEvent.id))]
    assert job is not None and "gave up after 1 restarts" in (job.error or "")
    assert types == ["job_start", "job_restarted", "job_start", "job_error"]
    assert job.status == "error"
