"""The BlobStore protocol: what the API and workers need from a place to keep bytes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

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
