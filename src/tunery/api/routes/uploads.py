"""``PUT /uploads/files/{file_id}`` and ``PUT /uploads/parts/{upload_id}/{n}``: the signed upload URLs.

These are the URLs ``POST /v1/files`` (``Location``) and ``POST /v1/files/multipart/initiate``
(``parts[].URL``) hand out. The `together` SDK PUTs the raw bytes to them with no Authorization
and no Content-Type, so the credential is the signed ``token`` in the query string
(``tunery.api.signing``). They live outside ``/v1`` because they are ours, not Together's API.

Whole-file URLs are single use: the file row's upload state is claimed with a compare-and-set
before any byte is stored, so a second or concurrent PUT gets 403 and stores nothing (a failed
upload releases the claim, so the client may retry the same URL). Part URLs may be re-sent while
their multipart upload is open, like S3's: the last upload of a part wins.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from tunery.api.deps import AppContext, get_ctx, public_base_url
from tunery.api.errors import error_response
from tunery.api.receiving import announced_length, check_announced_length, receive
from tunery.api.signing import FILE, PART, UploadSigner
from tunery.api.validation import PARALLEL_MIN_BYTES
from tunery.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from tunery.storage.staging import PartDir, StagedFile
from tunery.store import files as file_store
from tunery.store.models import File, MultipartUpload

router = APIRouter(prefix="/uploads", tags=["uploads"])

_RAW_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary"}}}}}
Token = Annotated[str | None, Query(description="The signed token from the upload URL.")]


def upload_signer(request: Request) -> UploadSigner:
    """The app's signer, built once (reading the key file on every request would be wasteful)."""
    signer: UploadSigner | None = getattr(request.app.state, "upload_signer", None)
    if signer is None:
        settings = get_ctx(request).settings
        signer = UploadSigner(settings.signing_key(), settings.upload_url_ttl_s)
        request.app.state.upload_signer = signer
    return signer


def file_upload_url(request: Request, file_id: str) -> tuple[str, int]:
    """The absolute, signed URL to PUT ``file_id``'s bytes to, and when it expires (unix seconds)."""
    signer = upload_signer(request)
    token = signer.sign(FILE, file_id)
    base = public_base_url(request, get_ctx(request).settings)
    return f"{base}/uploads/files/{file_id}?token={token}", signer.expires_at(token)


def part_upload_url(request: Request, upload_id: str, part_number: int) -> str:
    token = upload_signer(request).sign(PART, f"{upload_id}/{part_number}")
    base = public_base_url(request, get_ctx(request).settings)
    return f"{base}/uploads/parts/{upload_id}/{part_number}?token={token}"


# Both PUT routes are async, unlike the rest of the API: the body must be streamed to disk in
# constant memory (request.stream()), which needs the event loop. Their database work is sync
# and runs in the thread pool so the loop never waits on SQLite.


@router.put("/files/{file_id}", openapi_extra=_RAW_BODY, responses={403: {}, 413: {}})
async def put_file(request: Request, file_id: Annotated[str, Path(max_length=64)], token: Token = None) -> Response:
    """Receive a whole file's bytes (the second step of the SDK's upload)."""
    ctx = get_ctx(request)
    upload_signer(request).verify(FILE, file_id, token)
    limit = ctx.settings.max_upload_bytes
    check_announced_length(request, limit)
    row = await run_in_threadpool(_claim_file, ctx, file_id)
    if announced_length(request) >= PARALLEL_MIN_BYTES and row.file_type == "jsonl":
        ctx.validator.warm()  # start the validation children while the bytes arrive
    try:
        staged = await receive(request.stream(), StagedFile(ctx.blobs.staging_dir(), limit))
        try:
            if row.checksum and staged.sha256 != row.checksum:
                raise InvalidRequest(
                    f"the uploaded bytes do not match the announced checksum: sha256 {staged.sha256}, "
                    f"expected {row.checksum}; upload the file again", param="checksum",
                )
            stored = await run_in_threadpool(_store_file, ctx, row, staged)
        except BaseException:
            staged.discard()
            raise
    except ClientDisconnect:
        await run_in_threadpool(_release_file, ctx, file_id)
        return error_response(400, "the client disconnected before the upload finished", "invalid_request_error")
    except BaseException:
        await run_in_threadpool(_release_file, ctx, file_id)
        raise
    return JSONResponse({"id": file_id, "bytes": stored, "checksum": staged.sha256}, status_code=200)


def _claim_file(ctx: AppContext, file_id: str) -> File:
    with ctx.db.session() as s:
        row = file_store.get_file_any_owner(s, file_id)
        if row is None:
            raise NotFound(f"file {file_id} no longer exists", param="file_id")
        if not file_store.claim_upload(s, file_id):
            if row.upload_state == file_store.RECEIVING:
                raise Forbidden("an upload to this URL is already in progress; an upload URL is used once")
            raise Forbidden("this upload URL has already been used; request a new one with POST /v1/files")
        return row


def _release_file(ctx: AppContext, file_id: str) -> None:
    with ctx.db.session() as s:
        file_store.release_upload(s, file_id)


def _store_file(ctx: AppContext, row: File, staged: StagedFile) -> int:
    key = file_store.blob_key(row.id)
    ctx.blobs.put(key, staged.path)
    with ctx.db.session() as s:
        finished = file_store.finish_upload(s, row.id, size=staged.size, key=key, checksum=staged.sha256)
    if not finished:  # deleted while we were receiving
        ctx.blobs.delete(key)
        raise NotFound(f"file {row.id} was deleted during the upload", param="file_id")
    return staged.size


@router.put("/parts/{upload_id}/{part_number}", openapi_extra=_RAW_BODY, responses={403: {}, 413: {}})
async def put_part(
    request: Request, upload_id: Annotated[str, Path(max_length=64)],
    part_number: Annotated[int, Path(ge=1, le=10_000)], token: Token = None,
) -> Response:
    """Receive one part of a multipart upload; answers with the part's ``ETag`` (its MD5).

    No part is bigger than the size announced at initiate, and the parts together never hold more:
    a part that would take them past it is refused (413) and not kept."""
    ctx = get_ctx(request)
    upload_signer(request).verify(PART, f"{upload_id}/{part_number}", token)
    mp = await run_in_threadpool(_check_part, ctx, upload_id, part_number)
    limit = min(ctx.settings.max_upload_bytes, mp.file_size or ctx.settings.max_upload_bytes)
    check_announced_length(request, limit)
    staging = ctx.blobs.staging_dir()
    try:
        staged = await receive(request.stream(), StagedFile(staging, limit, md5=True))
    except ClientDisconnect:
        return error_response(400, "the client disconnected before the part was uploaded", "invalid_request_error")
    parts = PartDir(staging, upload_id)
    etag = await run_in_threadpool(parts.store, part_number, staged)
    if await run_in_threadpool(_upload_state, ctx, upload_id) in (None, file_store.MP_ABORTED):
        parts.remove()  # aborted while this part was arriving: leave nothing behind
        raise Forbidden(f"multipart upload {upload_id} was aborted; its part URLs no longer accept data")
    if (held := await run_in_threadpool(parts.size)) > limit:
        await run_in_threadpool(parts.discard, part_number)
        raise PayloadTooLarge(f"the parts of multipart upload {upload_id} would hold {held} bytes; the upload "
                              f"announced {limit} (file_size at initiate)")
    return JSONResponse({"part_number": part_number, "etag": etag}, headers={"ETag": f'"{etag}"'})


def _upload_state(ctx: AppContext, upload_id: str) -> str | None:
    with ctx.db.read() as s:
        mp = file_store.get_multipart(s, upload_id)
        return None if mp is None else mp.state


def _check_part(ctx: AppContext, upload_id: str, part_number: int) -> MultipartUpload:
    with ctx.db.read() as s:
        mp = file_store.get_multipart(s, upload_id)
    if mp is None:
        raise NotFound(f"no multipart upload {upload_id}", param="upload_id")
    if mp.state != file_store.MP_OPEN:
        raise Forbidden(f"multipart upload {upload_id} is {mp.state}; its part URLs no longer accept data")
    if part_number > mp.num_parts:
        raise InvalidRequest(f"part_number must be between 1 and {mp.num_parts}; got {part_number}",
                             param="part_number")
    return mp
