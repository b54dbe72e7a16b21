"""Relays what the training child reports (a JSON-lines file it appends to) into the store:
events, metrics and job progress, and intermediate checkpoints — packaged and uploaded before
they are listed, and listed only while the job is still this worker's."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tunery.storage import BlobStore
from tunery.storage.archives import pack_dir
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.models import Job
from tunery.worker.heartbeat import JobLost

log = logging.getLogger("tunery.worker")

# How long the relay keeps retrying the last reports of a finished child before giving up.
DRAIN_TIMEOUT_S = 120.0
# Checkpoint parts, as the training engine lays them out (see tunery.training.export).
PARTS = ("model", "adapter", "state")
# Events the relay turns into job columns rather than copying verbatim.
INTERNAL_EVENTS = {"error"}

Pause = Callable[[str], None]


def _no_pause(phase: str) -> None:
    return None


def checkpoint_key(job_id: str, step: int, part: str, final: bool) -> str:
    """A fresh key per upload: a listed blob is never overwritten, not even by a worker that was
    presumed dead and still uploads the same step."""
    return f"jobs/{job_id}/{'final' if final else f'step-{step}'}/{part}-{uuid.uuid4().hex[:12]}.tar.zst"


@dataclass
class StoredPart:
    part: str
    key: str
    size: int


def pack_parts(blobs: BlobStore, job_id: str, step: int, path: Path, parts: tuple[str, ...],
               pause: Pause = _no_pause, phase: str = "") -> list[tuple[str, Path, int]]:
    """Package each part present under ``path`` as a .tar.zst in the store's staging dir."""
    packed: list[tuple[str, Path, int]] = []
    try:
        for part in parts:
            src = path / part
            if not src.is_dir():
                continue
            archive = blobs.staging_dir() / f"{job_id}-{step}-{part}-{uuid.uuid4().hex[:8]}.tar.zst"
            packed.append((part, archive, pack_dir(src, archive, part)))
            if phase:
                pause(phase)
    except BaseException:
        for _, archive, _ in packed:  # a retry starts clean, with the disk space back
            archive.unlink(missing_ok=True)
        raise
    return packed


def store_parts(blobs: BlobStore, job_id: str, step: int, packed: list[tuple[str, Path, int]], final: bool,
                pause: Pause = _no_pause, phase: str = "") -> list[StoredPart]:
    """Put packaged parts in the store (each put is atomic). Nothing is listed yet."""
    stored: list[StoredPart] = []
    try:
        for part, archive, size in packed:
            key = checkpoint_key(job_id, step, part, final)
            blobs.put(key, archive)
            stored.append(StoredPart(part, key, size))
            if phase:
                pause(phase)
    except BaseException:
        discard(blobs, stored)
        for _, archive, _ in packed:
            archive.unlink(missing_ok=True)
        raise
    return stored


def discard(blobs: BlobStore, stored: list[StoredPart]) -> None:
    for p in stored:
        with suppress(Exception):  # best effort: an unlisted blob is garbage, never data
            blobs.delete(p.key)


def list_parts(s: Session, job_id: str, worker_id: str, step: int, stored: list[StoredPart], final: bool) -> None:
    """List stored parts as the job's checkpoint — in the caller's transaction, and only while the
    job is still this worker's (``JobLost`` otherwise), so a listed checkpoint is always complete
    and always from the job's current run."""
    query = select(Job.worker_id).where(Job.id == job_id)
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    if s.scalar(query) != worker_id:
        raise JobLost(job_id)
    for p in stored:
        job_store.add_checkpoint(s, job_id, step, p.part, p.key, p.size, final)


def upload_checkpoint(db: Database, blobs: BlobStore, job_id: str, worker_id: str, step: int, path: Path,
                      pause: Pause = _no_pause) -> list[str]:
    """Package, store, then list an intermediate checkpoint's parts. Returns the parts listed."""
    stored = store_parts(blobs, job_id, step, pack_parts(blobs, job_id, step, path, PARTS), final=False,
                         pause=pause, phase="checkpoint")
    try:
        with db.session() as s:
            list_parts(s, job_id, worker_id, step, stored, final=False)
    except BaseException:
        discard(blobs, stored)
        raise
    return [p.part for p in stored]


@dataclass
class Relay:
    db: Database
    blobs: BlobStore
    job_id: str
    worker_id: str
    report_path: Path
    pause: Pause = _no_pause
    offset: int = 0
    total_steps: int = 0
    last_step: int = 0
    final_path: Path | None = None
    final_step: int = 0
    error_message: str | None = None
    # Whether that error was the user's (bad data or config); under torchrun the exit code cannot say.
    error_is_users: bool = False
    # Steps of the intermediate checkpoints this run listed.
    listed_steps: list[int] = field(default_factory=list)
    _first_step: tuple[int, float] | None = None
    _pending: str = field(default="", repr=False)
    # Complete records read but not yet applied, oldest first.
    _unapplied: deque[str] = field(default_factory=deque, repr=False)
    _error: DBAPIError | None = field(default=None, repr=False)

    def pump(self) -> bool:
        """Apply every complete record written since the last call, in order. A database error
        (locked, restarting, unreachable) stops the pump with the record unapplied, to be retried
        at the next call, so a blip never loses a report or fails the job. Returns whether every
        record read so far is applied."""
        if self.report_path.exists():
            with open(self.report_path, encoding="utf-8") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
            lines = (self._pending + chunk).split("\n")
            self._pending = lines.pop()  # an incomplete last line waits for the next pump
            self._unapplied.extend(line for line in lines if line.strip())
        while self._unapplied:
            try:
                self.apply(json.loads(self._unapplied[0]))
            except DBAPIError as error:
                log.warning("job %s: could not record a report (%s); retrying", self.job_id, type(error.orig).__name__)
                self._error = error
                return False
            self._unapplied.popleft()
        return True

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Pump until every record is applied, backing off on database errors; raises the last
        error after ``timeout_s``."""
        deadline, wait = time.monotonic() + timeout_s, 0.1
        while not self.pump():
            if time.monotonic() > deadline and self._error is not None:
                raise self._error
            time.sleep(wait)
            wait = min(5.0, wait * 2)

    def apply(self, record: dict[str, Any]) -> None:
        kind = record.pop("kind")
        if kind == "event":
            self._event(record)
        elif kind == "metrics":
            self._metrics(int(record["step"]), record["values"])
        elif kind == "checkpoint":
            self._checkpoint(int(record["step"]), Path(record["path"]), bool(record["final"]))

    def _event(self, r: dict[str, Any]) -> None:
        type_, message, level = r.pop("type"), r.pop("message"), r.pop("level", "info")
        if type_ in INTERNAL_EVENTS:
            self.error_message, self.error_is_users = message, bool(r.get("user_error"))
            return
        progress: dict[str, Any] = {}
        if type_ == "training_start":
            self.total_steps = int(r.get("total_steps", 0))
            progress = {k: int(r[k]) for k in ("total_steps", "token_count", "param_count") if k in r}
        elif type_ == "epoch_complete" and "epoch" in r:
            progress = {"epochs_completed": int(r["epoch"])}
        elif type_ == "early_stopped":
            # Together's event fields are early_stopping_best_step / early_stopping_best_metric_value.
            r["early_stopping_best_step"] = r.pop("best_step", None)
            r["early_stopping_best_metric_value"] = r.pop("best_metric", None)
            progress = {"early_stopped": True, "early_stopping_best_step": r["early_stopping_best_step"],
                        "early_stopping_best_metric": r["early_stopping_best_metric_value"]}
        elif type_ == "wandb_init" and r.get("wandb_url"):
            progress = {"wandb_url": r["wandb_url"]}
        with self.db.session() as s:
            job_store.add_event(s, self.job_id, type_, message, level, r)
            if type_ == "eval_complete":
                job = job_store.get_job(s, self.job_id)
                progress["evals_completed"] = job.evals_completed + 1
            if type_ == "training_start" and "batch_size" in r:
                job = job_store.get_job(s, self.job_id)
                job.params = {**job.params, "batch_size_resolved": r["batch_size"]}
            if progress:
                job_store.update_progress(s, self.job_id, **progress)

    def _metrics(self, step: int, values: dict[str, float]) -> None:
        now = time.monotonic()
        if self._first_step is None:
            self._first_step = (step, now)
        first_step, t0 = self._first_step
        eta = None
        if step > first_step and self.total_steps:
            eta = (now - t0) / (step - first_step) * max(0, self.total_steps - step)
        self.last_step = max(self.last_step, step)
        with self.db.session() as s:
            job_store.add_metrics(s, self.job_id, step, values)
            job_store.update_progress(s, self.job_id, steps_completed=self.last_step, seconds_remaining=eta)

    def _checkpoint(self, step: int, path: Path, final: bool) -> None:
        if final:
            # Packaged after the child exits, in the compressing/uploading stages.
            self.final_path, self.final_step = path, step
            return
        # The test seam pauses in a checkpoint upload only once an earlier one is listed, so the
        # kill tests can check that the job resumes from the earlier one.
        pause = self.pause if self.listed_steps else _no_pause
        upload_checkpoint(self.db, self.blobs, self.job_id, self.worker_id, step, path, pause)
        self.listed_steps.append(step)
