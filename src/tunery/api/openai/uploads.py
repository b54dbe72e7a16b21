"""``/v1/uploads``: OpenAI's Uploads, a file sent in parts (``client.uploads.upload_file_chunked``).

    POST /v1/uploads                 {bytes, filename, mime_type, purpose} → upload (pending, 1 hour)
    POST /v1/uploads/{id}/parts      multipart ``data`` → upload.part (parts may arrive in any order)
    POST /v1/uploads/{id}/complete   {part_ids, md5?} → upload (completed) with its ``file``
    POST /v1/uploads/{id}/cancel     → upload (cancelled)

Parts are kept as blobs of their own until completion, which joins the listed parts in the given
order, checks that they add up to the announced ``bytes`` (and the ``md5`` when given), stores the
result as a file and validates it like ``POST /v1/files`` (an invalid dataset gives a file with
``status: "error"`` whose ``status_details`` name the line). Parts not listed are discarded.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import AppContext, Ctx, CurrentUser
from tunery.api.errors import invalid_request
from tunery.api.file_intake import check_openai_purpose, store_staged_file, validate_file
from tunery.api.openai.schemas import UploadCompleteRequest, UploadCreateRequest, part_object, upload_object
from tunery.api.receiving import receive_form
from tunery.api.schemas.files import FileCreateRequest
from tunery.errors import InvalidRequest, NotFound, PayloadTooLarge
from tunery.storage.staging import StagedFile, too_large
from tunery.store import files as file_store
from tunery.store import uploads as upload_store
from tunery.store.models import File, Upload, UploadPart, User

log = logging.getLogger("tunery.api.uploads")

router = APIRouter(prefix="/v1/uploads", tags=["openai"])
UploadId = Annotated[str, Path(max_length=64)]
_ERRORS: dict[int | str, dict] = {400: {}, 404: {}, 413: {}}
_PART_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["data"], "properties": {"data": {"type": "string", "format": "binary"}}}}}}}


def _file_meta(body: UploadCreateRequest) -> FileCreateRequest:
    try:
        return FileCreateRequest.for_bytes(body.purpose, body.filename)
    except ValidationError as error:
        raise invalid_request(error) from None


def _discard_parts(ctx: AppContext, keys: list[str]) -> None:
    for key in keys:
        ctx.blobs.delete(key)


def _sweep_expired(ctx: AppContext, user: User) -> None:
    """Drop the parts of the user's uploads that expired unfinished (their bytes can never be used)."""
    keys: list[str] = []
    with ctx.db.session() as s:
        for upload_id in upload_store.expired_pending(s, user.id):
            if upload_store.set_status(s, upload_id, (upload_store.PENDING,), upload_store.EXPIRED):
                keys += upload_store.drop_parts(s, upload_id)
    _discard_parts(ctx, keys)


@router.post("", responses=_ERRORS)
def create_upload(body: UploadCreateRequest, user: CurrentUser, ctx: Ctx) -> dict:
    """Start an upload of ``bytes`` bytes; add parts, then complete it within the hour."""
    if body.expires_after is not None:
        raise InvalidRequest("expires_after is not supported: files on this server are kept until you delete "
                             "them (files.delete)", param="expires_after")
    if body.bytes > ctx.settings.max_upload_bytes:
        raise too_large(ctx.settings.max_upload_bytes)
    check_openai_purpose(body.purpose)
    meta = _file_meta(body)
    _sweep_expired(ctx, user)
    with ctx.db.session() as s:
        row = upload_store.create_upload(s, user_id=user.id, filename=meta.file_name, purpose=meta.purpose,
                                         size=body.bytes)
    return upload_object(row)


def _pending(row: Upload, action: str) -> None:
    status = upload_store.visible_status(row)
    if status != upload_store.PENDING:
        raise InvalidRequest(f"Upload {row.id} is {status}; only a pending upload {action}", param="upload_id")


@router.post("/{upload_id}/parts", openapi_extra=_PART_BODY, responses=_ERRORS)
async def add_part(upload_id: UploadId, request: Request, user: CurrentUser, ctx: Ctx) -> Response:
    """Add one part (the multipart field ``data``); its place in the file is set at completion."""
    with ctx.db.session() as s:
        row = upload_store.get_upload(s, user.id, upload_id)
    _pending(row, "takes parts")
    # No part can be larger than the whole upload; the parts' total is checked when it is recorded.
    staged = StagedFile(ctx.blobs.staging_dir(), row.bytes)
    try:
        await receive_form(request, staged, file_field="data")
    except PayloadTooLarge:
        raise _over_size(row, row.bytes + 1) from None
    part_id = upload_store.new_part_id()
    key = upload_store.part_blob_key(upload_id, part_id)
    try:
        await run_in_threadpool(ctx.blobs.put, key, staged.path)
        part = await run_in_threadpool(_record_part, ctx, user, upload_id, part_id, key, staged.size)
    except BaseException:
        staged.discard()
        await run_in_threadpool(ctx.blobs.delete, key)
        raise
    return JSONResponse(part_object(part))


def _record_part(ctx: AppContext, user: User, upload_id: str, part_id: str, key: str, size: int) -> UploadPart:
    with ctx.db.session() as s:
        # Lock the upload row so a concurrent complete or cancel sees this part or refuses it.
        query = select(Upload).where(Upload.id == upload_id, Upload.user_id == user.id)
        if s.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        row = s.scalar(query)
        if row is None:
            raise NotFound(f"No such Upload object: {upload_id}", param="upload_id")
        _pending(row, "takes parts")
        total = upload_store.parts_size(s, upload_id) + size
        if total > row.bytes:
            raise _over_size(row, total)
        return upload_store.add_part(s, upload_id, part_id, key, size)


def _over_size(row: Upload, total: int) -> InvalidRequest:
    return InvalidRequest(f"the parts of upload {row.id} would add up to {total} bytes or more, more than the "
                          f"{row.bytes} announced when it was created", param="data")


@router.post("/{upload_id}/complete", responses=_ERRORS)
def complete_upload(upload_id: UploadId, body: UploadCompleteRequest, request: Request, user: CurrentUser,
                    ctx: Ctx) -> dict:
    """Join the listed parts in order into a file, check its size (and MD5), store and validate it."""
    with ctx.db.session() as s:
        row = upload_store.get_upload(s, user.id, upload_id)
        if row.status == upload_store.COMPLETED and row.file_id:  # a retried complete: answer as the first did
            return upload_object(row, file_store.get_file(s, user.id, row.file_id))
        _pending(row, "can be completed")
        parts = upload_store.list_parts(s, upload_id)
        keys = _ordered_keys(row, parts, body.part_ids)
        if not upload_store.set_status(s, upload_id, (upload_store.PENDING,), upload_store.COMPLETING):
            raise InvalidRequest(f"Upload {upload_id} is being completed or was cancelled", param="upload_id")
    try:
        file = _assemble(ctx, request, user, row, keys, body.md5)
    except BaseException:
        with ctx.db.session() as s:
            upload_store.set_status(s, upload_id, (upload_store.COMPLETING,), upload_store.PENDING)
        raise
    with ctx.db.session() as s:
        upload_store.set_status(s, upload_id, (upload_store.COMPLETING,), upload_store.COMPLETED, file_id=file.id)
        leftovers = upload_store.drop_parts(s, upload_id)
        row = upload_store.get_upload(s, user.id, upload_id)
    _discard_parts(ctx, leftovers)
    return upload_object(row, file)


def _ordered_keys(row: Upload, parts: dict[str, UploadPart], part_ids: list[str]) -> list[str]:
    """The blob keys of ``part_ids`` in order; 400 unless each is one of the upload's parts, listed
    once, and together they make exactly the announced size."""
    unknown = [p for p in part_ids if p not in parts]
    if unknown:
        raise InvalidRequest(f"part_ids {unknown[:5]} are not parts of upload {row.id}", param="part_ids")
    if len(set(part_ids)) != len(part_ids):
        raise InvalidRequest("part_ids lists a part more than once", param="part_ids")
    chosen = [parts[p] for p in part_ids]
    size = sum(p.size for p in chosen)
    if size != row.bytes:
        raise InvalidRequest(f"the listed parts add up to {size} bytes, but the upload was created for "
                             f"{row.bytes} bytes", param="part_ids")
    return [p.blob_key for p in chosen]


def _assemble(ctx: AppContext, request: Request, user: User, row: Upload, keys: list[str], md5: str | None) -> File:
    staged = StagedFile(ctx.blobs.staging_dir(), ctx.settings.max_upload_bytes, md5=True)
    try:
        for key in keys:
            with ctx.blobs.local_copy(key) as path:
                staged.copy_from([path])
        staged.close()
        if md5 and staged.md5 != md5.strip().lower():
            raise InvalidRequest(f"md5 {md5} does not match the uploaded bytes (md5 {staged.md5})", param="md5")
    except BaseException:
        staged.discard()
        raise
    meta = FileCreateRequest.for_bytes(row.purpose, row.filename)
    file = store_staged_file(ctx, user, meta, staged)
    return validate_file(ctx, file)


@router.post("/{upload_id}/cancel", responses=_ERRORS)
def cancel_upload(upload_id: UploadId, user: CurrentUser, ctx: Ctx) -> dict:
    """Cancel an upload that is not completed; its parts are deleted."""
    with ctx.db.session() as s:
        row = upload_store.get_upload(s, user.id, upload_id)
        cancellable = (upload_store.PENDING, upload_store.EXPIRED)
        if row.status != upload_store.CANCELLED and not upload_store.set_status(s, upload_id, cancellable,
                                                                                upload_store.CANCELLED):
            raise InvalidRequest(f"Upload {upload_id} is {upload_store.visible_status(row)}; only a pending upload "
                                     "can be cancelled", param="upload_id")
        keys = upload_store.drop_parts(s, upload_id)
        s.refresh(row)
    _discard_parts(ctx, keys)
    return upload_object(row)
