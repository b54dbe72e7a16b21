"""Uploads that go straight to the object store (a ``DirectUploads`` store, i.e. S3).

The SDK's ``PUT <Location>`` and multipart part PUTs go to presigned S3 URLs, never through the
API node. The bytes land under ``uploads/<file id>``; when the client calls preprocess (or
multipart complete) ``adopt_upload`` checks their size and SHA-256, copies them to a final key of
their own with a server-side copy that only succeeds if the object is still the one checked (a
presigned URL stays valid until it expires, so the client could PUT again), and validates them.
The local store keeps its own signed-URL path in ``routes/uploads.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tunery.api.deps import AppContext
from tunery.checksums import sha256_of
from tunery.errors import Conflict, InvalidRequest, NotFound
from tunery.storage import DirectUploads, direct_uploads
from tunery.storage.staging import too_large
from tunery.store import files as file_store
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


def adopt_upload(ctx: AppContext, store_: DirectUploads, row: File, validate: Callable[[File, Path], File]) -> File:
    """Take the bytes the client PUT to the object store as ``row``'s content: check them, copy
    them to a final key of their own, record that key, then ``validate(row, local_path)``. 409 when
    nothing was uploaded yet; 400 on a checksum mismatch (the upload URL may then be used again).

    Nothing is claimed before the final compare-and-set, so a request interrupted anywhere (the
    API node restarting, say) leaves nothing to clean up and its retry simply starts over; of two
    concurrent calls exactly one records its copy, and the other's copy is deleted."""
    try:
        return _adopt(ctx, store_, row, validate)
    except (Conflict, FileNotFoundError) as error:  # the bytes went away under us
        with ctx.db.session() as s:
            current = file_store.get_file_any_owner(s, row.id)
        if current is None:
            raise NotFound(f"file {row.id} was deleted during the upload", param="id") from None
        if current.upload_state == file_store.UPLOADED:
            return current  # a concurrent call took the bytes first and recorded them
        if isinstance(error, Conflict):
            raise
        raise Conflict(f"file {row.id} has no content yet: PUT its bytes to the upload URL from "
                       "POST /v1/files, then call preprocess", param="id") from None


def _adopt(ctx: AppContext, store_: DirectUploads, row: File, validate: Callable[[File, Path], File]) -> File:
    temp = upload_key(row.id)
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
        # A key of its own: a later PUT to the still-valid URL can never change a recorded file.
        key = f"{file_store.blob_key(row.id)}-{uuid.uuid4().hex[:12]}"
        store_.promote(temp, key, etag)
        with ctx.db.session() as s:
            recorded = file_store.finish_direct_upload(s, row.id, size=size, key=key, checksum=checksum)
            current = file_store.get_file_any_owner(s, row.id)
        if not recorded:
            ctx.blobs.delete(key)
            if current is None:
                raise NotFound(f"file {row.id} was deleted during the upload", param="id")
            return current  # a concurrent call recorded (and validates) its own copy
        assert current is not None
        return validate(current, path)
