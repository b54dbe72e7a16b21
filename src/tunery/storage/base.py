"""The BlobStore protocol: what the API and workers need from a place to keep bytes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

CHUNK = 1024 * 1024


class BlobStore(Protocol):
    def staging_dir(self) -> Path:
        """A local directory for files about to be ``put`` (same filesystem for the local store)."""
        ...

    def put(self, key: str, src: Path) -> None:
        """Store the local file ``src`` under ``key``, atomically; ``src`` is consumed."""
        ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the bytes ``[start, end)`` of ``key`` in chunks."""
        ...

    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        """A readable local path holding the blob for the duration of the context."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; missing keys are ignored."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...


@runtime_checkable
class DirectUploads(Protocol):
    """A store that clients upload to directly, with presigned URLs (S3), so that file bytes never
    pass through the API node. Uploads land under a temporary key; ``promote`` moves them to their
    final key once their size and checksum were checked."""

    def presigned_put(self, key: str, ttl_s: int) -> str: ...

    def start_multipart(self, key: str) -> str:
        """Begin a multipart upload to ``key``; returns the store's upload id."""
        ...

    def presigned_part(self, key: str, upload_id: str, part_number: int, ttl_s: int) -> str: ...

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None: ...

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def head(self, key: str) -> tuple[str, int] | None:
        """``(etag, size)``, or None when ``key`` does not exist."""
        ...

    def promote(self, src: str, dest: str, etag: str) -> None:
        """Move ``src`` to ``dest`` if it still has ``etag``; ``Conflict`` otherwise."""
        ...
