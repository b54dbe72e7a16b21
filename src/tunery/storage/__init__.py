"""Blob storage: datasets, checkpoints and exports. ``open_blob_store`` picks the backend from settings."""

from __future__ import annotations

from tunery.settings import Settings
from tunery.storage.base import BlobStore
from tunery.storage.local import LocalBlobStore


def open_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_url.startswith("s3://"):
        raise NotImplementedError("S3 blob storage is not available yet")
    return LocalBlobStore(settings.blob_dir if not settings.blob_url else settings.blob_url)


__all__ = ["BlobStore", "LocalBlobStore", "open_blob_store"]
