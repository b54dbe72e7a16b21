"""Blob storage: datasets, checkpoints and exports. ``open_blob_store`` picks the backend from
settings: a local directory (default) or S3 (``TUNERY_BLOB_URL=s3://bucket/prefix``)."""

from __future__ import annotations

from tunery.settings import Settings
from tunery.storage.base import BlobStore, DirectUploads
from tunery.storage.local import LocalBlobStore


def open_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_url.startswith("s3://"):
        from tunery.storage.s3 import S3BlobStore  # boto3 is only imported when S3 is used

        return S3BlobStore.from_settings(settings)
    return LocalBlobStore(settings.blob_dir if not settings.blob_url else settings.blob_url)


def direct_uploads(blobs: BlobStore) -> DirectUploads | None:
    """The store as ``DirectUploads`` when clients can upload to it directly, else None."""
    return blobs if isinstance(blobs, DirectUploads) else None


__all__ = ["BlobStore", "DirectUploads", "LocalBlobStore", "direct_uploads", "open_blob_store"]
