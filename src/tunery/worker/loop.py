"""The worker loop: register, recover stale jobs, claim jobs while it has free slots, run each in
its own thread (the training itself is a child process); repeat until told to stop (SIGTERM/SIGINT:
running jobs are checkpointed and requeued).

What a worker serves comes from settings: ``TUNERY_WORKER_MODELS`` (base models it claims jobs
for), ``TUNERY_WORKER_DEVICES`` (accelerators, handed to jobs ``TUNERY_PROCESSES_PER_JOB`` at a
time through ``CUDA_VISIBLE_DEVICES``) and ``TUNERY_WORKER_JOBS`` (jobs at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from tunery.models.catalog import ModelCatalog
from tunery.queue.claim import claim_next, requeue_stale
from tunery.settings import Settings
from tunery.storage import BlobStore, open_blob_store
from tunery.store.db import Database
from tunery.store.models import Worker, utcnow
from tunery.store.secrets import SecretBox
from tunery.worker.pause import PausePoints
from tunery.worker.run_job import WorkerContext, run_job

log = logging.getLogger("tunery.worker")

POLL_S = 0.25
# Database errors back off exponentially from POLL_S up to this.
MAX_BACKOFF_S = 10.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _register(db: Database, worker_id: str) -> None:
    with db.session() as s:
        row = s.get(Worker, worker_id)
        if row is None:
            s.add(Worker(id=worker_id, host=socket.gethostname()))
        s.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat_at=utcnow()))


class Slots:
    """The worker's capacity: ``count`` jobs at once, each with its own group of devices."""

    def __init__(self, settings: Settings):
        self.count = settings.worker_job_slots
        devices, per_job = settings.worker_device_list, max(1, settings.processes_per_job)
        self.free: list[list[str]] = [devices[i * per_job:(i + 1) * per_job] if devices else []
                                      for i in range(self.count)]
        if devices and len(devices) < self.count * per_job:
            raise ValueError(f"TUNERY_WORKER_DEVICES lists {len(devices)} devices; {self.count} jobs of "
                             f"{per_job} processes need {self.count * per_job}")


def clean_up_after_dead_workers(db: Database, settings: Settings, blobs: BlobStore) -> None:
    """Remove what workers that died without cleaning up left on this host: their scratch folders
    (inputs, checkpoints, a training config that may hold a W&B key) once they have no live row,
    and half-written archives (``*.part``) in the staging directory that nobody has written to
    for a heartbeat timeout (a live packer writes continuously)."""
    root = settings.data_dir / "scratch"
    names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if names:
        fresh = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
        with db.read() as s:
            alive = set(s.scalars(select(Worker.id).where(Worker.id.in_(names), Worker.heartbeat_at > fresh)))
        for name in names:
            if name not in alive:
                log.info("removing the scratch folder of dead worker %s", name)
                shutil.rmtree(root / name, ignore_errors=True)
    cutoff = time.time() - settings.heartbeat_timeout_s
    for part in blobs.staging_dir().glob("*.tar.zst.part"):
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_mtime < cutoff:
                part.unlink()


def run_worker(settings: Settings, *, stop: threading.Event | None = None, models: list[str] | None = None,
               max_jobs: int | None = None, handle_signals: bool = True) -> None:
    """Claim and run jobs until ``stop`` is set (or ``max_jobs`` have been claimed and finished)."""
    stop = stop or threading.Event()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    models = models or settings.worker_model_list or None
    db = Database(settings.resolved_database_url)
    db.migrate()
    worker_id = new_worker_id()
    ctx = WorkerContext(settings=settings, db=db, blobs=open_blob_store(settings),
                        catalog=ModelCatalog(settings.models_dir, settings.allow_hub_downloads),
                        worker_id=worker_id, scratch=settings.data_dir / "scratch" / worker_id, stopping=stop,
                        secrets=SecretBox(settings.signing_key()),
                        pause=PausePoints(settings.test_pause_at, settings.test_pause_dir))
    _register(db, worker_id)
    clean_up_after_dead_workers(db, settings, ctx.blobs)
    slots = Slots(settings)
    running: dict[str, tuple[threading.Thread, list[str]]] = {}
    log.info("worker %s started: %d job slot(s), models %s, devices %s", worker_id, slots.count,
             models or "any", settings.worker_device_list or "unpinned")
    claimed, next_recovery, backoff = 0, 0.0, 0.0
    while not stop.is_set():
        for done_id, (thread, devices) in list(running.items()):
            if not thread.is_alive():
                del running[done_id]
                slots.free.append(devices)
        if max_jobs is not None and claimed >= max_jobs:
            if not running:
                break
            stop.wait(POLL_S)
            continue
        try:
            if time.monotonic() >= next_recovery:  # housekeeping once per heartbeat interval, not per poll
                _register(db, worker_id)
                with db.session() as s:
                    requeue_stale(s, settings.heartbeat_timeout_s, settings.max_restarts)
                next_recovery = time.monotonic() + settings.heartbeat_interval_s
            job_id: str | None = None
            if slots.free:
                with db.session() as s:
                    job_id = claim_next(s, worker_id, models)
        except DBAPIError as error:
            # The database is locked, restarting or unreachable: nothing was claimed (the
            # transaction rolled back), so wait and try again; running jobs carry on meanwhile.
            backoff = min(MAX_BACKOFF_S, max(POLL_S, backoff * 2))
            log.warning("worker %s: database error (%s); retrying in %.1f s", worker_id,
                        type(error.orig).__name__, backoff, exc_info=backoff >= MAX_BACKOFF_S)
            stop.wait(backoff)
            continue
        backoff = 0.0
        if job_id is None:
            stop.wait(POLL_S)
            continue
        devices = slots.free.pop(0)
        log.info("worker %s runs job %s%s", worker_id, job_id, f" on devices {devices}" if devices else "")
        thread = threading.Thread(target=run_job, args=(ctx, job_id, devices), name=f"job-{job_id}")
        thread.start()
        running[job_id] = (thread, devices)
        claimed += 1
    for thread, _ in running.values():  # stopping: each job checkpoints and requeues itself
        thread.join()
    try:
        with db.session() as s:
            row = s.get(Worker, worker_id)
            if row is not None:
                s.delete(row)
    except DBAPIError:  # the row ages out of /metrics by itself
        log.warning("worker %s: could not remove its row on the way out", worker_id, exc_info=True)
    db.dispose()
    log.info("worker %s stopped", worker_id)
