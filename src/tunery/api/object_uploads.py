"""Uploads that go straight to the object store (a ``DirectUploads`` store, i.e. S3).

The SDK's ``PUT <Location>`` and multipart part PUTs go to presigned S3 URLs, never through the
API node. The bytes land under ``uploads/<file id>``; when the client calls preprocess (or
multipart complete) ``adopt_upload`` checks their size and SHA-256, moves them to the file's
final key with a server-side copy that only succeeds if the object is still the one checked (a
presigned URL stays valid until it expires, so the client could PUT again), and validates them.
The local store keeps its own signed-URL path in ``routes/uploads.py``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from tunery.api.deps import AppContext
from tunery.errors import Conflict, InvalidRequest, NotFound
from tunery.storage import DirectUploads, direct_uploads
from tunery.storage.staging import READ_CHUNK, too_large
from tunery.store import files as store
from tunery.store.models import File


def upload_key(file_id: str) -> str:
    return f"uploads/{file_id}"


def direct(ctx: AppContext) -> DirectUploads | None:
    return direct_uploads(ctx.blobs)


def file_url(store_: DirectUploads, ctx: AppContext, file_id: str) -> tuple[str, int]:
    """The presigned PUT URL for ``file_id``'s bytes and when it expires (unix seconds)."""
    ttl = ctx.settings.upload_url_ttl_s
    return store_.presigned_put(upload_key(file_id), ttl), int(time.time()) + ttl


def part_urls(store_: DirectUploads, ctx: AppContext, file_id: str, upload_id: str, num_parts: int) -> list[str]:
    ttl = ctx.settings.upload_url_ttl_s
    return [store_.presigned_part(upload_key(file_id), upload_id, n, ttl) for n in range(1, num_parts + 1)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def adopt_upload(ctx: AppContext, store_: DirectUploads, row: File, validate: Callable[[File, Path], File]) -> File:
    """Take the bytes the client PUT to the object store as ``row``'s content: check, promote and
    record them, then ``validate(row, local_path)``. 409 when nothing was uploaded yet or another
    request is already doing this; 400 on a checksum mismatch (the upload URL may then be reused)."""
    with ctx.db.session() as s:
        if not store.claim_upload(s, row.id):
            raise Conflict(f"file {row.id} is already being checked by another request; retry shortly",
                           param="id")
    key, temp = store.blob_key(row.id), upload_key(row.id)
    try:
        found = store_.head(temp)
        if found is None:
            raise Conflict(f"file {row.id} has no content yet: PUT its bytes to the upload URL from "
                           "POST /v1/files, then call preprocess", param="id")
        etag, size = found
        if size > ctx.settings.max_upload_bytes:
            ctx.blobs.delete(temp)
            raise too_large(ctx.settings.max_upload_bytes)
        with ctx.blobs.local_copy(temp) as path:
            checksum = sha256_of(path)
            if row.checksum and checksum != row.checksum:
                ctx.blobs.delete(temp)
                raise InvalidRequest(
                    f"the uploaded bytes do not match the announced checksum: sha256 {checksum}, "
                    f"expected {row.checksum}; upload the file again", param="checksum",
                )
            store_.promote(temp, key, etag)
            with ctx.db.session() as s:
                if not store.finish_upload(s, row.id, size=size, key=key, checksum=checksum):
                    ctx.blobs.delete(key)
                    raise NotFound(f"file {row.id} was deleted during the upload", param="id")
                row = store.get_file(s, row.user_id, row.id)
            return validate(row, path)
    finally:
        with ctx.db.session() as s:
            store.release_upload(s, row.id)  # a no-op once the upload was recorded
