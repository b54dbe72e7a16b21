"""A running job's heartbeat, kept from a background thread.

The thread beats for as long as this worker works on the job — staging, training, packaging,
uploading — so a long download or upload never looks like a dead worker, while a killed worker
stops beating at once and its job is requeued by ``tunery.queue.claim.requeue_stale``. Each beat
also learns whether the user asked to cancel and whether the job was given to another worker
meanwhile (this one was presumed dead); the job's thread checks both between steps.
"""

from __future__ import annotations

import logging
import threading

from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.status import JobStatus
from tunery.worker.fate import JobEnded, Outcome

log = logging.getLogger("tunery.worker")


class JobHeartbeat:
    def __init__(self, db: Database, job_id: str, worker_id: str, interval_s: float):
        self.db, self.job_id, self.worker_id, self.interval_s = db, job_id, worker_id, interval_s
        self.lost = threading.Event()
        self.cancel_requested = threading.Event()
        self.pause_requested = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> JobHeartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and not self.lost.is_set():
            self.beat()

    def beat(self) -> None:
        try:
            with self.db.session() as s:
                status = job_store.heartbeat(s, self.job_id, self.worker_id)
        except Exception:  # a database blip: keep beating; a long outage makes the job stale anyway
            log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)
            return
        if status is None:
            self.lost.set()
        elif status == JobStatus.CANCEL_REQUESTED:
            self.cancel_requested.set()
        elif status == JobStatus.PAUSE_REQUESTED:
            self.pause_requested.set()

    def check(self) -> None:
        """Raise ``JobEnded`` (lost) if the job was given to another worker."""
        if self.lost.is_set():
            raise JobEnded(self.job_id, Outcome.LOST)
