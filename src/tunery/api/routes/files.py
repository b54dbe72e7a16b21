"""``/v1/files``: upload, validate, list, read and delete dataset files (contract §3).

The SDK's upload is three calls: ``POST /v1/files`` (metadata) → 302 to a signed URL;
``PUT <url>`` (bytes, see ``routes/uploads.py``); ``POST /v1/files/{id}/preprocess`` (validate).
Files over 5 GiB go through ``/v1/files/multipart/{initiate,complete,abort}`` instead, and
``complete`` validates because the SDK does not call preprocess after it. ``POST
/v1/files/upload`` is the one-request form for curl users. Validation streams the stored blob
through ``tunery.datasets.validate_stream``; an invalid dataset is a 400 naming the line, and the
file stays listed with ``processing_status: INVALID_FORMAT`` and its report.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import AppContext, Ctx, CurrentUser
from tunery.api.errors import error_body, invalid_request
from tunery.api.file_intake import check_openai_purpose, store_staged_file, validate_file
from tunery.api.object_uploads import adopt_upload, direct, file_url, part_urls, upload_key
from tunery.api.receiving import FormParts, check_announced_length, is_multipart, receive_form
from tunery.api.routes.uploads import file_upload_url, part_upload_url
from tunery.api.schemas.files import (
    FileCreateRequest,
    FileDeleteResponse,
    FileList,
    FileResponse,
    FileUploadUrl,
    MultipartAbortRequest,
    MultipartAbortResponse,
    MultipartCompleteRequest,
    MultipartCompleteResponse,
    MultipartInitiateRequest,
    MultipartInitiateResponse,
    MultipartPart,
)
from tunery.api.streaming import blob_response
from tunery.errors import Conflict, InvalidRequest, NotFound, TuneryError
from tunery.jobs.results import PURPOSE as RESULTS_PURPOSE
from tunery.storage import DirectUploads
from tunery.storage.staging import PartDir, StagedFile, too_large
from tunery.store import files as file_store
from tunery.store.models import File, MultipartUpload, User

router = APIRouter(prefix="/v1/files", tags=["files"])

_ERRORS: dict[int | str, dict[str, Any]] = {400: {}, 404: {}, 409: {}, 413: {}}


# ---- responses shared by several routes ----------------------------------------------------------


def _exists_response(file_id: str) -> JSONResponse:
    """The SDK's "already exists" answer: 409 with a top-level ``file_id``, and no retries."""
    body = error_body(
        f"a file with the same name and checksum was already uploaded and validated: {file_id}",
        "conflict_error", "checksum", "file_exists",
    )
    return JSONResponse({**body, "file_id": file_id}, status_code=409, headers={"x-should-retry": "false"})


def _invalid_response(row: File) -> JSONResponse:
    """400 for a file whose dataset is invalid; the message names the line."""
    report = row.report or {}
    message = report.get("error") or "the dataset is invalid"
    body = error_body(message, "invalid_request_error", None, "invalid_format")
    return JSONResponse({**body, "file_id": row.id}, status_code=400)


def _validated(row: File, wrap: bool = False) -> JSONResponse:
    """The file after validation: 200 with the FileResponse, or 400 when the dataset is invalid."""
    if row.processing_status == file_store.INVALID_FORMAT:
        return _invalid_response(row)
    if row.processing_status == file_store.FAILED:
        report = row.report or {}
        raise TuneryError(f"validating file {row.id} failed: {report.get('error', 'unknown error')}")
    wire = FileResponse.from_row(row).wire()
    return JSONResponse({"file": wire} if wrap else wire)


# ---- validation ----------------------------------------------------------------------------------


def _validate_if_needed(ctx: AppContext, row: File) -> File:
    if row.processing_status in (file_store.COMPLETED, file_store.INVALID_FORMAT):
        return row  # already validated: preprocess is idempotent
    return validate_file(ctx, row)


# ---- POST /v1/files: Together's metadata-then-PUT, or OpenAI's bytes in the form ---------------

_CREATE_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["purpose"],
    "properties": {
        "purpose": {"type": "string", "enum": ["fine-tune", "calibration", "eval", "batch-api"]},
        "file_name": {"type": "string", "description": "Together: the file's basename (no `file` part)."},
        "file_type": {"type": "string", "enum": ["jsonl", "csv", "parquet"]},
        "checksum": {"type": "string", "description": "Together: SHA-256 of the file as 64 hex digits."},
        "file": {"type": "string", "format": "binary", "description": "OpenAI: the file's bytes."},
    },
}}}}}
# A metadata-only form is a few hundred bytes; anything bigger without a file part is not one.
MAX_METADATA_BYTES = 64 * 1024


@router.post(
    "", status_code=302, response_model=FileUploadUrl, openapi_extra=_CREATE_BODY, responses={**_ERRORS, 200: {
        "description": "OpenAI's form with a `file` part: the stored and validated file "
                       "(`status` processed, or error with `status_details` naming the line).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FileResponse"}}},
    }, 302: {
        "description": "Together's form without a `file` part: created; PUT the bytes to `Location` (signed, "
                       "expiring, single use).",
        "headers": {"Location": {"schema": {"type": "string"}}, "X-Together-File-Id": {"schema": {"type": "string"}}},
    }},
)
async def create_file(request: Request, user: CurrentUser, ctx: Ctx) -> Response:
    """Two dialects on one URL. The `together` SDK sends only metadata (``purpose``, ``file_name``,
    ``file_type``, ``checksum``) and gets a 302 to the signed URL to PUT the bytes to. The `openai`
    SDK sends the bytes in a ``file`` part and gets the stored, validated file object (200 even when
    the dataset is invalid: ``status: "error"`` and ``status_details`` name the line, as OpenAI
    reports it)."""
    if not is_multipart(request):  # a urlencoded metadata form (curl -d)
        check_announced_length(request, MAX_METADATA_BYTES)
        fields = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        return await run_in_threadpool(_register_for_put, request, ctx, user, fields)
    limit = ctx.settings.max_upload_bytes
    check_announced_length(request, limit, slack=1024 * 1024)
    staged = StagedFile(ctx.blobs.staging_dir(), limit)
    form = await receive_form(request, staged, require_file=False)
    if form.file_parts == 0:
        staged.discard()
        return await run_in_threadpool(_register_for_put, request, ctx, user, form.texts())
    if form.text("expires_after[anchor]") is not None or form.text("expires_after[seconds]") is not None:
        staged.discard()
        raise InvalidRequest("expires_after is not supported: files on this server are kept until you delete "
                             "them (files.delete)", param="expires_after")
    try:
        check_openai_purpose(form.text("purpose"))
    except InvalidRequest:
        staged.discard()
        raise
    row = await _receive_whole_file(request, ctx, user, form, staged)
    return JSONResponse(FileResponse.from_row(row).wire())


def _register_for_put(request: Request, ctx: AppContext, user: User, fields: dict[str, str]) -> Response:
    """Register a file and answer 302 with the signed URL to PUT its bytes to."""
    try:
        form = FileCreateRequest.model_validate(fields)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None
    with ctx.db.session() as s:
        dup = file_store.find_duplicate(
            s, user_id=user.id, checksum=form.checksum, filename=form.file_name, purpose=form.purpose,
        )
        if dup is not None:
            return _exists_response(dup.id)
        row = file_store.create_file(
            s, user_id=user.id, filename=form.file_name, purpose=form.purpose, file_type=form.file_type,
            checksum=form.checksum,
        )
    # With an object store the bytes go straight to it (presigned S3 PUT); else to routes/uploads.py.
    objects = direct(ctx)
    url, expires = file_url(objects, ctx, row.id) if objects else file_upload_url(request, row.id)
    body = FileUploadUrl(id=row.id, upload_url=url, expires_at=expires)
    return JSONResponse(body.model_dump(), status_code=302, headers={"Location": url, "X-Together-File-Id": row.id})


@router.post("/{file_id}/preprocess", response_model=FileResponse, responses=_ERRORS)
def preprocess(file_id: str, request: Request, user: CurrentUser, ctx: Ctx) -> Response:
    """Validate an uploaded file's dataset (idempotent): 200 when valid, 400 naming the bad line."""
    with ctx.db.read() as s:
        row = file_store.get_file(s, user.id, file_id)
    objects = direct(ctx)
    if objects is not None and row.upload_state == file_store.AWAITING_UPLOAD:
        return _validated(adopt_upload(ctx, objects, row, lambda r, p: validate_file(ctx, r, p)))
    if row.upload_state != file_store.UPLOADED:
        raise Conflict(
            f"file {file_id} has no content yet: PUT its bytes to the upload URL from POST /v1/files, "
            "then call preprocess", param="id",
        )
    return _validated(_validate_if_needed(ctx, row))


# ---- one-request upload for curl users -----------------------------------------------------------

_FORM_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "file_name": {"type": "string"},
        "purpose": {"type": "string", "enum": ["fine-tune", "calibration", "eval", "batch-api"]},
        "file_type": {"type": "string", "enum": ["jsonl", "csv", "parquet"]},
    },
}}}}}


@router.post("/upload", response_model=FileResponse, openapi_extra=_FORM_BODY, responses=_ERRORS)
async def upload_file(request: Request, user: CurrentUser, ctx: Ctx) -> Response:
    """Upload and validate a file in one multipart request (``file``, ``purpose``, ``file_name``,
    ``file_type``); 400 naming the line when the dataset is invalid (the file stays listed)."""
    # async: the body is streamed to disk in constant memory (see routes/uploads.py).
    limit = ctx.settings.max_upload_bytes
    check_announced_length(request, limit, slack=1024 * 1024)
    staged = StagedFile(ctx.blobs.staging_dir(), limit)
    form = await receive_form(request, staged)
    return _validated(await _receive_whole_file(request, ctx, user, form, staged))


async def _receive_whole_file(request: Request, ctx: AppContext, user: User, form: FormParts,
                              staged: StagedFile) -> File:
    """Store the bytes a form's ``file`` part brought (already in ``staged``) as a new file of the
    user's and validate them. The name is ``file_name`` or the part's filename. Bad metadata is a
    400 naming the field."""
    try:
        meta = FileCreateRequest.for_bytes(form.text("purpose"), form.text("file_name") or form.filename or "",
                                           form.text("file_type"))
    except ValidationError as error:
        staged.discard()
        raise invalid_request(error) from None
    row = await run_in_threadpool(store_staged_file, ctx, user, meta, staged)
    return await run_in_threadpool(validate_file, ctx, row)


# ---- multipart upload (files over 5 GiB) ---------------------------------------------------------


@router.post("/multipart/initiate", response_model=MultipartInitiateResponse, responses=_ERRORS)
def multipart_initiate(request: Request, body: MultipartInitiateRequest, user: CurrentUser, ctx: Ctx) -> Response:
    """Start a multipart upload: one signed part URL per part (PUT each, keep the ``ETag``)."""
    if body.file_size > ctx.settings.max_upload_bytes:
        raise too_large(ctx.settings.max_upload_bytes)
    with ctx.db.read() as s:
        dup = file_store.find_duplicate(
            s, user_id=user.id, checksum=body.checksum, filename=body.file_name, purpose=body.purpose,
        )
    if dup is not None:
        return _exists_response(dup.id)
    file_id = file_store.new_file_id()
    objects = direct(ctx)
    # The object store's multipart upload is started before the transaction, which never waits on it.
    backend_id = objects.start_multipart(upload_key(file_id)) if objects is not None else ""
    with ctx.db.session() as s:
        row = file_store.create_file(
            s, user_id=user.id, filename=body.file_name, purpose=body.purpose, file_type=body.file_type,
            checksum=body.checksum, file_id=file_id,
        )
        mp = file_store.create_multipart(s, row.id, body.num_parts, body.file_size, backend_id)
    if objects is not None:  # parts go straight to the object store
        urls = part_urls(objects, ctx, row.id, backend_id, body.num_parts)
    else:
        urls = [part_upload_url(request, mp.id, n) for n in range(1, body.num_parts + 1)]
    parts = [MultipartPart(PartNumber=n, URL=url, Headers={}) for n, url in enumerate(urls, start=1)]
    out = MultipartInitiateResponse(upload_id=mp.id, file_id=row.id, parts=parts)
    return JSONResponse(out.model_dump())


@router.post("/multipart/complete", response_model=MultipartCompleteResponse, responses=_ERRORS)
def multipart_complete(request: Request, body: MultipartCompleteRequest, user: CurrentUser, ctx: Ctx) -> Response:
    """Assemble the parts in order, check the checksum, validate, and return ``{"file": …}``."""
    with ctx.db.session() as s:
        mp = file_store.get_user_multipart(s, user.id, body.upload_id, body.file_id)
        row = file_store.get_file(s, user.id, body.file_id)
        objects = direct(ctx)
        # In the object store completing is idempotent, so a complete interrupted by a restart
        # (left "completing") may simply be retried.
        completable = (file_store.MP_OPEN,) if objects is None else (file_store.MP_OPEN, file_store.MP_COMPLETING)
        if not file_store.set_multipart_state(s, mp.id, completable, file_store.MP_COMPLETING):
            if mp.state == file_store.MP_COMPLETED:
                return _validated(row, wrap=True)  # a repeated complete: answer as the first did
            raise Conflict(f"multipart upload {mp.id} is {mp.state}; it cannot be completed", param="upload_id")
        if objects is None:
            file_store.claim_upload(s, row.id)
    if objects is not None:
        return _complete_in_object_store(ctx, objects, body, mp, row)
    staging = ctx.blobs.staging_dir()
    parts = PartDir(staging, mp.id)
    try:
        paths = _checked_parts(parts, body, mp.num_parts)
        staged = StagedFile(staging, ctx.settings.max_upload_bytes)
        try:
            staged.copy_from(paths)
            staged.close()
            if mp.file_size and staged.size != mp.file_size:
                raise InvalidRequest(f"the parts add up to {staged.size} bytes; initiate announced file_size "
                                     f"{mp.file_size}", param="parts")
            if row.checksum and staged.sha256 != row.checksum:
                raise InvalidRequest(
                    f"the assembled file does not match the announced checksum: sha256 {staged.sha256}, "
                    f"expected {row.checksum}", param="checksum",
                )
            key = file_store.blob_key(row.id)
            ctx.blobs.put(key, staged.path)
        except BaseException:
            staged.discard()
            raise
        with ctx.db.session() as s:
            if not file_store.finish_upload(s, row.id, size=staged.size, key=key, checksum=staged.sha256):
                ctx.blobs.delete(key)
                raise NotFound(f"file {row.id} was deleted during the upload", param="file_id")
            file_store.set_multipart_state(s, mp.id, (file_store.MP_COMPLETING,), file_store.MP_COMPLETED)
            row = file_store.get_file(s, user.id, row.id)
    except BaseException:
        with ctx.db.session() as s:
            file_store.set_multipart_state(s, mp.id, (file_store.MP_COMPLETING,), file_store.MP_OPEN)
            file_store.release_upload(s, row.id)
        raise
    parts.remove()
    return _validated(validate_file(ctx, row), wrap=True)


def _complete_in_object_store(ctx: AppContext, objects: DirectUploads, body: MultipartCompleteRequest,
                              mp: MultipartUpload, row: File) -> Response:
    """Complete the S3 multipart upload (S3 checks the parts' ETags), then adopt it like a PUT."""
    try:
        numbers = [p.part_number for p in body.parts]
        if numbers != list(range(1, mp.num_parts + 1)):
            raise InvalidRequest(
                f"parts must list every part number from 1 to {mp.num_parts} once, in order; got {numbers[:20]}",
                param="parts",
            )
        key = upload_key(row.id)
        if objects.head(key) is None:  # else an earlier complete assembled it and then failed
            objects.complete_multipart(key, mp.backend_id, [(p.part_number, p.etag.strip().strip('"'))
                                                           for p in body.parts])
        row = adopt_upload(ctx, objects, row, lambda r, p: validate_file(ctx, r, p))
    except BaseException:
        with ctx.db.session() as s:
            file_store.set_multipart_state(s, mp.id, (file_store.MP_COMPLETING,), file_store.MP_OPEN)
        raise
    with ctx.db.session() as s:
        file_store.set_multipart_state(s, mp.id, (file_store.MP_COMPLETING,), file_store.MP_COMPLETED)
    return _validated(row, wrap=True)


def _checked_parts(parts: PartDir, body: MultipartCompleteRequest, num_parts: int) -> list:
    """The part files in order; 400 unless every part 1..num_parts is listed once with its ETag."""
    numbers = [p.part_number for p in body.parts]
    if numbers != list(range(1, num_parts + 1)):
        raise InvalidRequest(
            f"parts must list every part number from 1 to {num_parts} once, in order; got {numbers[:20]}",
            param="parts",
        )
    paths = []
    for p in body.parts:
        stored = parts.etag(p.part_number)
        if stored is None:
            raise InvalidRequest(f"part {p.part_number} was never uploaded", param="parts")
        if p.etag.strip().strip('"') != stored:
            raise InvalidRequest(
                f"part {p.part_number}: etag {p.etag!r} does not match the uploaded part ({stored!r})",
                param="parts",
            )
        paths.append(parts.part(p.part_number))
    return paths


@router.post("/multipart/abort", response_model=MultipartAbortResponse, responses=_ERRORS)
def multipart_abort(body: MultipartAbortRequest, user: CurrentUser, ctx: Ctx) -> MultipartAbortResponse:
    """Abandon a multipart upload: its parts and its (never completed) file are removed.

    Aborting a completed upload is a no-op: the SDK calls abort after *any* failed complete,
    including one that failed only because the dataset is invalid, and that file must stay listed.
    """
    with ctx.db.session() as s:
        mp = file_store.get_user_multipart(s, user.id, body.upload_id, body.file_id)
        if mp.state == file_store.MP_COMPLETED:
            return MultipartAbortResponse(upload_id=mp.id, file_id=mp.file_id, aborted=False)
        abortable = (file_store.MP_OPEN, file_store.MP_ABORTED) + ((file_store.MP_COMPLETING,) if direct(ctx) else ())
        if not file_store.set_multipart_state(s, mp.id, abortable, file_store.MP_ABORTED):
            raise Conflict(f"multipart upload {mp.id} is {mp.state}; try again", param="upload_id")
        row = file_store.get_file(s, user.id, mp.file_id)
        if row.upload_state == file_store.AWAITING_UPLOAD:
            file_store.delete_file(s, user.id, row.id)
    objects = direct(ctx)
    if objects is not None and mp.backend_id:
        objects.abort_multipart(upload_key(mp.file_id), mp.backend_id)
        ctx.blobs.delete(upload_key(mp.file_id))
    PartDir(ctx.blobs.staging_dir(), mp.id).remove()
    return MultipartAbortResponse(upload_id=mp.id, file_id=mp.file_id, aborted=True)


# ---- reading and deleting ------------------------------------------------------------------------


MAX_LIST = 10_000


@router.get("", response_model=FileList, responses={400: {}, 404: {}})
def list_files(
    user: CurrentUser, ctx: Ctx, purpose: str | None = None,
    after: str | None = Query(None, description="A file id: list the files after it (OpenAI's cursor)."),
    limit: int = Query(MAX_LIST, ge=1, le=MAX_LIST), order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """The caller's files, newest first by default; ``purpose`` filters, ``after``/``limit`` page
    (``has_more`` says whether another page follows). Jobs' results files (OpenAI's
    ``fine-tune-results``) are listed only when asked for by purpose: Together's listing has no such
    purpose, and each job names its own (``result_files``)."""
    with ctx.db.read() as s:
        rows = file_store.list_files(s, user.id, purpose=purpose, after=after, limit=limit + 1,
                                     ascending=order == "asc", unless_asked=(RESULTS_PURPOSE,))
    page = [FileResponse.from_row(r) for r in rows[:limit]]
    return FileList(data=page, has_more=len(rows) > limit, first_id=page[0].id if page else None,
                    last_id=page[-1].id if page else None)


@router.get("/{file_id}", response_model=FileResponse, responses={404: {}})
def retrieve_file(file_id: str, user: CurrentUser, ctx: Ctx) -> FileResponse:
    with ctx.db.read() as s:
        return FileResponse.from_row(file_store.get_file(s, user.id, file_id))


@router.get(
    "/{file_id}/content", responses={200: {"content": {"application/octet-stream": {}}}, 206: {}, 404: {},
                                     409: {}, 416: {}},
)
def file_content(file_id: str, request: Request, user: CurrentUser, ctx: Ctx) -> Response:
    """The file's bytes, streamed; honours a single ``Range: bytes=…`` (206, or 416)."""
    with ctx.db.read() as s:
        row = file_store.get_file(s, user.id, file_id)
    objects = direct(ctx)
    if objects is not None and row.upload_state == file_store.AWAITING_UPLOAD:
        return _validated(adopt_upload(ctx, objects, row, lambda r, p: validate_file(ctx, r, p)))
    if row.upload_state != file_store.UPLOADED:
        raise Conflict(f"file {file_id} has no content yet; finish its upload first", param="id")
    return blob_response(request, ctx.blobs, row.blob_key, row.bytes, filename=row.filename)


@router.delete("/{file_id}", response_model=FileDeleteResponse, responses={404: {}, 409: {}})
def delete_file(file_id: str, user: CurrentUser, ctx: Ctx) -> FileDeleteResponse:
    """Delete a file and its bytes; 409 while an unfinished fine-tuning job uses it."""
    with ctx.db.session() as s:
        upload_ids = file_store.multipart_ids(s, file_id)
        row = file_store.delete_file(s, user.id, file_id)
    if row.blob_key:
        ctx.blobs.delete(row.blob_key)
    if direct(ctx) is not None:
        ctx.blobs.delete(upload_key(file_id))  # bytes PUT to the store but never preprocessed
    for upload_id in upload_ids:
        PartDir(ctx.blobs.staging_dir(), upload_id).remove()
    return FileDeleteResponse(id=file_id)
