"""Removing uploads that were begun and never finished, and whatever they left staged.

A client that asks for an upload URL (or starts a multipart upload) and never finishes leaves a
file row with no bytes, staged parts on this node's disk or an open multipart upload in the
object store, and a killed API process leaves half-received ``upload-*.part`` files. ``sweep``
removes what is older than ``TUNERY_ABANDONED_UPLOAD_TTL_S``: the rows in the database (so it
holds across restarts and API nodes; concurrent sweepers take each row once), then the staged
bytes. ``UploadSweeper`` runs it at start-up and then every ``interval_s`` in the API process.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from tunery.api.object_uploads import upload_key
from tunery.storage import BlobStore, direct_uploads
from tunery.storage.staging import PartDir
from tunery.store import files as file_store
from tunery.store.db import Database
from tunery.store.models import utcnow

log = logging.getLogger("tunery.api.uploads")

SWEEP_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class Swept:
    files: int
    multiparts: int
    staged: int


def sweep(db: Database, blobs: BlobStore, ttl_s: float) -> Swept:
    """Remove the uploads begun more than ``ttl_s`` ago and never finished, and staged leftovers
    as old (by modification time: a file still being written is never that old)."""
    with db.session() as s:
        abandoned = file_store.abandon_uploads(s, utcnow() - timedelta(seconds=ttl_s))
    objects = direct_uploads(blobs)
    staging = blobs.staging_dir()
    for upload_id, file_id, backend_id in abandoned.multiparts:
        PartDir(staging, upload_id).remove()
        if objects is not None and backend_id:
            with suppress(Exception):  # already gone from the store is as good
                objects.abort_multipart(upload_key(file_id), backend_id)
    if objects is not None:
        for file_id in abandoned.files:  # bytes PUT to the store but never preprocessed
            blobs.delete(upload_key(file_id))
    return Swept(len(abandoned.files), len(abandoned.multiparts), _staged_leftovers(db, staging, ttl_s))


def _staged_leftovers(db: Database, staging: Path, ttl_s: float) -> int:
    """Delete old loose files in the staging directory and the part folders of uploads that are
    no longer open; returns how many went."""
    cutoff = time.time() - ttl_s
    removed = 0
    for path in staging.iterdir() if staging.is_dir() else ():
        with suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    parts = staging / "parts"
    folders = [p.name for p in parts.iterdir()] if parts.is_dir() else []
    if folders:
        with db.read() as s:
            open_ids = file_store.open_multipart_ids(s, folders)
        for name in folders:
            if name not in open_ids:
                with suppress(ValueError):
                    PartDir(staging, name).remove()
                    removed += 1
    return removed


class UploadSweeper:
    """``sweep`` at start-up and every ``interval_s`` after, on a daemon thread, until ``stop``."""

    def __init__(self, db: Database, blobs: BlobStore, ttl_s: float, interval_s: float = SWEEP_INTERVAL_S):
        self.db, self.blobs, self.ttl_s, self.interval_s = db, blobs, ttl_s, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            try:
                swept = sweep(self.db, self.blobs, self.ttl_s)
                if swept.files or swept.multiparts or swept.staged:
                    log.info("removed abandoned uploads: %d files, %d multipart uploads, %d staged leftovers",
                             swept.files, swept.multiparts, swept.staged)
            except Exception:  # a database blip: try again next time
                log.warning("sweeping abandoned uploads failed", exc_info=True)
            if self._stop.wait(self.interval_s):
                return
