"""A job's trained weights on their way to the object store: each part (model, adapter, resume
state) packed as a ``.tar.zst`` (``tunery.storage.archives``), stored under a fresh key, and listed
as the job's checkpoint only once every part is stored — and only while the job is still this
worker's.

Intermediate checkpoints go through ``upload_checkpoint`` as the training child writes them; the
final model is packed and stored by ``pack_parts``/``store_parts`` in the compressing and uploading
stages, then listed by ``list_parts`` in the transaction that completes the job.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.storage import BlobStore
from tunery.storage.archives import pack_dir
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.models import Job
from tunery.worker.fate import JobEnded, Outcome

# Checkpoint parts, as the training engine lays them out (see tunery.training.export).
PARTS = ("model", "adapter", "state")
FINAL_PARTS = ("model", "adapter")

Pause = Callable[[str], None]


def no_pause(phase: str) -> None:
    return None


# -- stored parts ---------------------------------------------------------------------------------

def checkpoint_key(job_id: str, step: int, part: str, final: bool) -> str:
    """A fresh key per upload: a listed blob is never overwritten, not even by a worker that was
    presumed dead and still uploads the same step."""
    return f"jobs/{job_id}/{'final' if final else f'step-{step}'}/{part}-{uuid.uuid4().hex[:12]}.tar.zst"


@dataclass(frozen=True)
class PackedPart:
    part: str
    archive: Path
    size: int


@dataclass(frozen=True)
class StoredPart:
    part: str
    key: str
    size: int


def pack_parts(blobs: BlobStore, job_id: str, step: int, path: Path, parts: tuple[str, ...],
               pause: Pause = no_pause, phase: str = "") -> list[PackedPart]:
    """Package each part present under ``path`` as a .tar.zst in the store's staging dir."""
    packed: list[PackedPart] = []
    try:
        for part in parts:
            src = path / part
            if not src.is_dir():
                continue
            archive = blobs.staging_dir() / f"{job_id}-{step}-{part}-{uuid.uuid4().hex[:8]}.tar.zst"
            packed.append(PackedPart(part, archive, pack_dir(src, archive, part)))
            if phase:
                pause(phase)
    except BaseException:
        for p in packed:  # a retry starts clean, with the disk space back
            p.archive.unlink(missing_ok=True)
        raise
    return packed


def store_parts(blobs: BlobStore, job_id: str, step: int, packed: list[PackedPart], final: bool,
                pause: Pause = no_pause, phase: str = "") -> list[StoredPart]:
    """Put packaged parts in the store (each put is atomic). Nothing is listed yet."""
    stored: list[StoredPart] = []
    try:
        for p in packed:
            key = checkpoint_key(job_id, step, p.part, final)
            blobs.put(key, p.archive)
            stored.append(StoredPart(p.part, key, p.size))
            if phase:
                pause(phase)
    except BaseException:
        discard(blobs, stored)
        for p in packed:
            p.archive.unlink(missing_ok=True)
        raise
    return stored


def discard(blobs: BlobStore, stored: list[StoredPart]) -> None:
    for p in stored:
        with suppress(Exception):  # best effort: an unlisted blob is garbage, never data
            blobs.delete(p.key)


def list_parts(s: Session, job_id: str, worker_id: str, step: int, stored: list[StoredPart], final: bool) -> None:
    """List stored parts as the job's checkpoint — in the caller's transaction, and only while the
    job is still this worker's (``JobEnded`` as lost otherwise), so a listed checkpoint is always
    complete and always from the job's current run."""
    query = select(Job.worker_id).where(Job.id == job_id)
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    if s.scalar(query) != worker_id:
        raise JobEnded(job_id, Outcome.LOST)
    for p in stored:
        job_store.add_checkpoint(s, job_id, step, p.part, p.key, p.size, final)


def upload_checkpoint(db: Database, blobs: BlobStore, job_id: str, worker_id: str, step: int, path: Path,
                      pause: Pause = no_pause) -> list[str]:
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
