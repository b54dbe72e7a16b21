"""Claiming takes each queued job exactly once, fairly; stale jobs are requeued or failed — on SQLite
and on PostgreSQL (where claiming is FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.job_rows import job_row
from tunery.queue.claim import claim_next, queue_position, requeue_stale
from tunery.queue.states import transition
from tunery.store.db import Database
from tunery.store.models import Job, JobEvent, User, utcnow
from tunery.store.status import JobStatus


@pytest.fixture()
def db(database: Database) -> Database:
    """An empty store with two users, on SQLite and on PostgreSQL (tests/backends.py)."""
    with database.session() as s:
        s.add_all([User(id="u1", name="u1"), User(id="u2", name="u2")])
    return database


def _queue(db: Database, job_id: str, user: str = "u1", priority: int = 0, status: str = "queued") -> None:
    with db.session() as s:
        s.add(job_row(job_id, user, status, priority=priority, created_at=utcnow()))


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


def test_a_stale_job_asked_to_pause_is_paused_not_requeued(db: Database) -> None:
    _queue(db, "ft-p")
    with db.session() as s:
        claim_next(s, "w1")
        transition(s, "ft-p", JobStatus.PAUSE_REQUESTED, event_type="pause_requested", message="pause")
        s.get(Job, "ft-p").heartbeat_at = utcnow() - timedelta(seconds=100)  # type: ignore[union-attr]
    with db.session() as s:
        assert requeue_stale(s, timeout_s=30, max_restarts=1) == ["ft-p"]
    with db.session() as s:
        job = s.get(Job, "ft-p")
        assert job is not None and job.status == "paused" and job.worker_id is None and job.restarts == 0
        assert claim_next(s, "w2") is None  # a paused job waits for resume


def test_queue_depth_is_the_number_of_jobs_a_worker_takes_first(db: Database) -> None:
    base = utcnow()
    with db.session() as s:
        s.add(User(id="u3", name="u3"))
        s.add(job_row("ft-run", "u1", "running", created_at=base - timedelta(hours=1)))
    specs = [("ft-a1", "u1", 0), ("ft-a2", "u1", 9), ("ft-a3", "u1", 0), ("ft-b1", "u2", 0), ("ft-b2", "u2", 1),
             ("ft-c1", "u3", 0), ("ft-c2", "u3", 0), ("ft-c3", "u3", 5)]
    for i, (job_id, user, priority) in enumerate(specs):
        with db.session() as s:
            s.add(job_row(job_id, user, "queued", priority=priority, created_at=base + timedelta(seconds=i)))
    with db.session() as s:
        depth = {j: queue_position(s, s.get(Job, j)) for j, _, _ in specs}  # type: ignore[arg-type]
    assert sorted(depth.values()) == list(range(len(specs)))
    order = []
    for _ in specs:
        with db.session() as s:
            order.append(claim_next(s, "w"))
    assert order == sorted(depth, key=depth.__getitem__)
    with db.session() as s:
        assert queue_position(s, s.get(Job, "ft-a1")) == 0  # type: ignore[arg-type]  # running now


def test_concurrent_recoveries_requeue_each_stale_job_once(db: Database) -> None:
    for i in range(6):
        _queue(db, f"ft-{i}")
        with db.session() as s:
            claim_next(s, "dead")
    with db.session() as s:
        for job in s.scalars(select(Job)):
            job.heartbeat_at = utcnow() - timedelta(seconds=100)
    barrier = threading.Barrier(4)
    recovered: list[str] = []

    def recover() -> None:
        barrier.wait()
        with db.session() as s:
            recovered.extend(requeue_stale(s, timeout_s=30, max_restarts=3))

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(recovered) == [f"ft-{i}" for i in range(6)]
    with db.session() as s:
        assert {(j.status, j.restarts) for j in s.scalars(select(Job))} == {("queued", 1)}
        restarted = s.scalars(select(JobEvent).where(JobEvent.type == "job_restarted")).all()
    assert len(restarted) == 6
