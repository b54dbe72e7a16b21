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

from tunery.checksums import sha256_of
from tunery.storage import BlobStore
from tunery.storage.archives import pack_dir
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.models import Job, utcnow
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
    sha256: str


@dataclass(frozen=True)
class StoredPart:
    part: str
    key: str
    size: int
    sha256: str


def checkpoint_path(job_id: str, step: int, final: bool, part: str) -> str:
    """Where a listed part is, as the API names it (``path`` of a checkpoint, an event's
    ``checkpoint_path`` or ``model_path``)."""
    return f"jobs/{job_id}/{'final' if final else f'step-{step}'}/{part}"


def primary(stored: list[StoredPart]) -> StoredPart | None:
    """The part a checkpoint is known by: its full model (merged, for LoRA), else its adapter."""
    return next((p for part in ("model", "adapter") for p in stored if p.part == part), None)


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
            made = pack_dir(src, archive, part)
            packed.append(PackedPart(part, archive, made.size, made.sha256))
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
            stored.append(StoredPart(p.part, key, p.size, p.sha256))
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
    _check_owner(s, job_id, worker_id)
    for p in stored:
        job_store.add_checkpoint(s, job_id, step, p.part, p.key, p.size, final)


def _check_owner(s: Session, job_id: str, worker_id: str) -> None:
    """``JobEnded`` (lost) unless the job is still ``worker_id``'s; on PostgreSQL the row stays
    locked until the caller's transaction ends, so it cannot be taken over in between."""
    query = select(Job.worker_id).where(Job.id == job_id)
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    if s.scalar(query) != worker_id:
        raise JobEnded(job_id, Outcome.LOST)


def upload_checkpoint(db: Database, blobs: BlobStore, job_id: str, worker_id: str, step: int, path: Path,
                      pause: Pause = no_pause) -> list[StoredPart]:
    """Package, store, then list an intermediate checkpoint's parts. Returns the parts listed."""
    stored = store_parts(blobs, job_id, step, pack_parts(blobs, job_id, step, path, PARTS), final=False,
                         pause=pause, phase="checkpoint")
    try:
        with db.session() as s:
            list_parts(s, job_id, worker_id, step, stored, final=False)
    except BaseException:
        discard(blobs, stored)
        raise
    return stored


def upload_tokenized_dataset(db: Database, blobs: BlobStore, job_id: str, worker_id: str, path: Path,
                             event_fields: dict[str, object]) -> str:
    """Store the Parquet of the job's tokenized training set and show it on the job (its columns
    and a ``tokenized_dataset_upload_complete`` event), replacing one an earlier run stored. Only
    while the job is still this worker's. Returns the blob key."""
    size, digest = path.stat().st_size, sha256_of(path)
    rows = event_fields.get("rows")
    key = f"jobs/{job_id}/tokenized/{uuid.uuid4().hex[:12]}.parquet"
    blobs.put(key, path)
    stored = [StoredPart("tokenized", key, size, digest)]
    try:
        with db.session() as s:
            _check_owner(s, job_id, worker_id)
            job = job_store.get_job(s, job_id)
            earlier = job.tokenized_dataset_key
            job.tokenized_dataset_key, job.tokenized_dataset_size = key, size
            job.tokenized_dataset_uploaded_at = utcnow()
            job_store.add_event(s, job_id, "tokenized_dataset_upload_complete",
                                f"Tokenized training set uploaded ({rows} rows, {size} bytes)",
                                fields={**event_fields, "tokenized_dataset_path": key, "hash": digest})
    except BaseException:
        discard(blobs, stored)
        raise
    if earlier:
        discard(blobs, [StoredPart("tokenized", earlier, 0, "")])
    return key
