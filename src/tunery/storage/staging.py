"""Receiving uploads into the blob store's staging directory, in constant memory.

``StagedFile`` is one file being written: it hashes (SHA-256, and MD5 for multipart ETags) and
counts as it goes and refuses to grow past a byte limit. ``BodyPump`` feeds it from an async
request body so that receiving and writing overlap: the event loop gathers up to ``BATCH`` bytes
while a worker thread writes and hashes the previous batch (file writes and hashlib release the
GIL), and at most two batches are ever held in memory.

Multipart parts of a local upload live under ``<staging>/parts/<upload id>/`` until the upload is
completed or aborted; ``PartDir`` names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio.to_thread

from tunery.errors import PayloadTooLarge

BATCH = 4 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload is larger than this server accepts ({limit} bytes); "
        "raise TUNERY_MAX_UPLOAD_BYTES or split the dataset"
    )


class StagedFile:
    """A temporary file in ``staging_dir`` that hashes and counts what is written to it."""

    def __init__(self, staging_dir: Path, limit: int, *, md5: bool = False):
        staging_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=staging_dir, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._f = os.fdopen(fd, "wb")
        self.limit = limit
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def write(self, data: bytes | bytearray) -> None:
        if self.size + len(data) > self.limit:
            raise too_large(self.limit)
        self._f.write(data)
        self._sha256.update(data)
        if self._md5 is not None:
            self._md5.update(data)
        self.size += len(data)

    def copy_from(self, paths: Iterable[Path]) -> None:
        """Append the files at ``paths`` in order (multipart assembly)."""
        for path in paths:
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    self.write(chunk)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def md5(self) -> str:
        return self._md5.hexdigest() if self._md5 is not None else ""

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class BodyPump:
    """Feeds an async request body into a ``StagedFile`` with receiving and writing overlapped.

    Call ``feed`` for each received chunk (it counts bytes and raises ``PayloadTooLarge`` as soon
    as the limit is passed, before anything more is written), ``await maybe_flush()`` after it, and
    ``await finish()`` at the end. ``abort()`` waits for the writer and deletes the file.
    """

    def __init__(self, staged: StagedFile):
        self.staged = staged
        self.received = 0
        self._buf = bytearray()
        self._pending: asyncio.Future[Any] | None = None

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.staged.limit:
            raise too_large(self.staged.limit)
        self._buf += data

    async def maybe_flush(self) -> None:
        if len(self._buf) >= BATCH:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if self._buf:
            data, self._buf = self._buf, bytearray()
            self._pending = asyncio.ensure_future(anyio.to_thread.run_sync(self.staged.write, data))

    async def finish(self) -> StagedFile:
        await self._flush()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        await anyio.to_thread.run_sync(self.staged.close)
        return self.staged

    async def abort(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            with contextlib.suppress(Exception):  # the upload is being thrown away anyway
                await pending
        self.staged.discard()


class PartDir:
    """Where the parts of one local multipart upload wait: ``<staging>/parts/<upload_id>/``."""

    def __init__(self, staging_dir: Path, upload_id: str):
        if not upload_id.replace("-", "").isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        self.root = staging_dir / "parts" / upload_id

    def part(self, n: int) -> Path:
        return self.root / f"{n:05d}"

    def etag_path(self, n: int) -> Path:
        return self.root / f"{n:05d}.etag"

    def store(self, n: int, staged: StagedFile) -> str:
        """Move a received part into place (replacing an earlier upload of it); returns its ETag."""
        self.root.mkdir(parents=True, exist_ok=True)
        etag = staged.md5
        os.replace(staged.path, self.part(n))
        tmp = self.etag_path(n).with_suffix(".etag.tmp")
        tmp.write_text(etag)
        os.replace(tmp, self.etag_path(n))
        return etag

    def size(self) -> int:
        """Bytes held by all the parts received so far."""
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.iterdir() if p.suffix == "" and p.is_file())

    def etag(self, n: int) -> str | None:
        try:
            return self.etag_path(n).read_text().strip()
        except FileNotFoundError:
            return None

    def discard(self, n: int) -> None:
        """Forget part ``n`` (refused after it arrived)."""
        self.part(n).unlink(missing_ok=True)
        self.etag_path(n).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
