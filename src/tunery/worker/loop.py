"""The worker loop: register, recover stale jobs, claim the next job, run it; repeat until told
to stop (SIGTERM/SIGINT: the running job is checkpointed and requeued)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid

from sqlalchemy import update

from tunery.models.catalog import ModelCatalog
from tunery.queue.claim import claim_next, requeue_stale
from tunery.settings import Settings
from tunery.storage import open_blob_store
from tunery.store.db import Database
from tunery.store.models import Worker, utcnow
from tunery.worker.run_job import WorkerContext, run_job

log = logging.getLogger("tunery.worker")

POLL_S = 0.5


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _register(db: Database, worker_id: str) -> None:
    with db.session() as s:
        row = s.get(Worker, worker_id)
        if row is None:
            s.add(Worker(id=worker_id, host=socket.gethostname()))
        s.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat_at=utcnow()))


def run_worker(settings: Settings, *, stop: threading.Event | None = None, models: list[str] | None = None,
               max_jobs: int | None = None, handle_signals: bool = True) -> None:
    """Claim and run jobs until ``stop`` is set (or ``max_jobs`` have run)."""
    stop = stop or threading.Event()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    db = Database(settings.resolved_database_url)
    db.migrate()
    worker_id = new_worker_id()
    ctx = WorkerContext(settings=settings, db=db, blobs=open_blob_store(settings),
                        catalog=ModelCatalog(settings.models_dir, settings.allow_hub_downloads),
                        worker_id=worker_id, scratch=settings.data_dir / "scratch" / worker_id, stopping=stop)
    log.info("worker %s started", worker_id)
    done = 0
    while not stop.is_set() and (max_jobs is None or done < max_jobs):
        _register(db, worker_id)
        with db.session() as s:
            requeue_stale(s, settings.heartbeat_timeout_s, settings.max_restarts)
        with db.session() as s:
            job_id = claim_next(s, worker_id, models)
        if job_id is None:
            stop.wait(POLL_S)
            continue
        log.info("worker %s runs job %s", worker_id, job_id)
        run_job(ctx, job_id)
        done += 1
    with db.session() as s:
        row = s.get(Worker, worker_id)
        if row is not None:
            s.delete(row)
    log.info("worker %s stopped", worker_id)
