"""Files and multipart uploads: the small queries the Files API needs.

A file row moves through two independent states:

    upload_state       awaiting_upload ──claim──► receiving ──finish──► uploaded
                                ▲                      │
                                └──────release─────────┘  (the upload failed; the URL may be retried)

    processing_status  PENDING ──► RUNNING ──► COMPLETED | INVALID_FORMAT | FAILED

Upload-state changes are compare-and-set ``UPDATE … WHERE upload_state = <expected>``, so two
concurrent PUTs of the same signed URL cannot both win, and a finished upload cannot be
overwritten. Every lookup takes the owner's user id: another user's file does not exist.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, tuple_, update
from sqlalchemy.orm import Session

from tunery.errors import Conflict, NotFound
from tunery.store.models import File, Job, MultipartUpload

AWAITING_UPLOAD = "awaiting_upload"
RECEIVING = "receiving"
UPLOADED = "uploaded"

PENDING = "PENDING"
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
INVALID_FORMAT = "INVALID_FORMAT"
FAILED = "FAILED"

# Job statuses after which a job no longer reads its files (contract §10).
FINISHED_JOB_STATUSES = ("completed", "cancelled", "error", "user_error")


def new_file_id() -> str:
    return f"file-{uuid.uuid4()}"


def new_upload_id() -> str:
    return f"up-{uuid.uuid4()}"


def blob_key(file_id: str) -> str:
    return f"files/{file_id}"


def create_file(
    s: Session, *, user_id: str, filename: str, purpose: str, file_type: str, checksum: str = "",
    size: int = 0, file_id: str | None = None,
) -> File:
    row = File(
        id=file_id or new_file_id(), user_id=user_id, filename=filename, purpose=purpose, file_type=file_type,
        checksum=checksum, bytes=size, blob_key="",
    )
    s.add(row)
    s.flush()
    return row


def create_stored_file(s: Session, *, file_id: str, user_id: str, filename: str, purpose: str, file_type: str,
                       size: int, key: str) -> File:
    """A file the server itself wrote (a job's results): its bytes are stored under ``key`` already,
    and there is nothing to validate."""
    row = File(id=file_id, user_id=user_id, filename=filename, purpose=purpose, file_type=file_type, bytes=size,
               blob_key=key, upload_state=UPLOADED, processing_status=COMPLETED)
    s.add(row)
    s.flush()
    return row


def find_duplicate(s: Session, *, user_id: str, checksum: str, filename: str, purpose: str) -> File | None:
    """The caller's newest completed, valid file with this checksum, name and purpose (the SDK's
    409 case; a file validated for one purpose says nothing about another)."""
    if not checksum:
        return None
    return s.scalar(
        select(File)
        .where(
            File.user_id == user_id, File.checksum == checksum, File.filename == filename, File.purpose == purpose,
            File.upload_state == UPLOADED, File.processing_status == COMPLETED,
        )
        .order_by(File.created_at.desc())
        .limit(1)
    )


def get_file(s: Session, user_id: str, file_id: str) -> File:
    row = s.scalar(select(File).where(File.id == file_id, File.user_id == user_id))
    if row is None:
        raise NotFound(f"no file with id {file_id!r}", param="id")
    return row


def get_file_any_owner(s: Session, file_id: str) -> File | None:
    """For the signed upload endpoints, where the URL's signature, not a key, identifies the caller."""
    return s.get(File, file_id)


def list_files(s: Session, user_id: str, *, purpose: str | None = None, after: str | None = None,
               limit: int | None = None, ascending: bool = False, unless_asked: tuple[str, ...] = ()) -> list[File]:
    """The caller's files, newest first (oldest first with ``ascending``), of one purpose or of any
    but those ``unless_asked`` for, starting after the file ``after`` (a cursor: 404 when it is not
    one of the caller's files)."""
    query = select(File).where(File.user_id == user_id)
    if purpose:
        query = query.where(File.purpose == purpose)
    elif unless_asked:
        query = query.where(File.purpose.not_in(unless_asked))
    if after:
        cursor = get_file(s, user_id, after)
        key = tuple_(File.created_at, File.id)
        query = query.where(key > (cursor.created_at, cursor.id) if ascending else key < (cursor.created_at, cursor.id))
    order = (File.created_at.asc(), File.id.asc()) if ascending else (File.created_at.desc(), File.id.desc())
    return list(s.scalars(query.order_by(*order).limit(limit)))


def _cas_upload_state(s: Session, file_id: str, expected: str, new: str, **values: Any) -> bool:
    result = s.execute(
        update(File)
        .where(File.id == file_id, File.upload_state == expected)
        .values(upload_state=new, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def claim_upload(s: Session, file_id: str) -> bool:
    """awaiting_upload → receiving; False when someone else holds or has used the URL."""
    return _cas_upload_state(s, file_id, AWAITING_UPLOAD, RECEIVING)


def release_upload(s: Session, file_id: str) -> None:
    """receiving → awaiting_upload, after a failed upload, so the same URL can be retried."""
    _cas_upload_state(s, file_id, RECEIVING, AWAITING_UPLOAD)


def finish_upload(s: Session, file_id: str, *, size: int, key: str, checksum: str) -> bool:
    """receiving → uploaded with the stored blob's size, key and checksum; False if the row is gone."""
    return _cas_upload_state(s, file_id, RECEIVING, UPLOADED, bytes=size, blob_key=key, checksum=checksum)


def finish_direct_upload(s: Session, file_id: str, *, size: int, key: str, checksum: str) -> bool:
    """awaiting_upload → uploaded in one step, for bytes a client put straight into the object
    store: concurrent preprocess calls may each check and copy them; exactly one records its copy."""
    return _cas_upload_state(s, file_id, AWAITING_UPLOAD, UPLOADED, bytes=size, blob_key=key, checksum=checksum)


def release_interrupted_uploads(s: Session) -> int:
    """Reopen uploads a crashed or restarted API node was receiving (files ``receiving`` →
    ``awaiting_upload``, multipart ``completing`` → ``open``), so the client's retry works. Only
    for the local store, where the one API node that holds the blobs is also the only receiver."""
    files = s.execute(update(File).where(File.upload_state == RECEIVING).values(upload_state=AWAITING_UPLOAD)
                      .execution_options(synchronize_session=False))
    parts = s.execute(update(MultipartUpload).where(MultipartUpload.state == MP_COMPLETING)
                      .values(state=MP_OPEN).execution_options(synchronize_session=False))
    return int(files.rowcount or 0) + int(parts.rowcount or 0)  # type: ignore[attr-defined]


def mark_validating(s: Session, file_id: str, status: str = RUNNING) -> None:
    """``RUNNING`` while a validation runs (or back to ``PENDING`` when it could not start)."""
    s.execute(
        update(File).where(File.id == file_id).values(processing_status=status)
        .execution_options(synchronize_session=False)
    )


def record_validation(
    s: Session, file_id: str, *, valid: bool, report: dict[str, Any], dataset_format: str | None,
    num_samples: int,
) -> File | None:
    """Store the validator's verdict; returns the updated row, or None when the file was deleted."""
    row = s.get(File, file_id)
    if row is None:
        return None
    row.processing_status = COMPLETED if valid else INVALID_FORMAT
    row.report = report
    row.dataset_format = dataset_format
    row.num_samples = num_samples
    s.flush()
    return row


def record_scan(s: Session, file_id: str, key: str, verdict: dict[str, Any]) -> None:
    """Cache what a model made of the file under ``key`` (files never change: it never goes stale)."""
    row = s.get(File, file_id)
    if row is not None:
        row.scans = {**(row.scans or {}), key: verdict}


def record_validation_failure(s: Session, file_id: str, message: str) -> None:
    """The validator itself crashed (not the dataset's fault): FAILED, with the reason in the report."""
    s.execute(
        update(File).where(File.id == file_id)
        .values(processing_status=FAILED, report={"valid": False, "error": message})
        .execution_options(synchronize_session=False)
    )


def jobs_using(s: Session, file_id: str) -> list[str]:
    """Ids of unfinished jobs that read ``file_id`` as training or validation data."""
    rows = s.scalars(
        select(Job.id).where(
            or_(Job.training_file == file_id, Job.validation_file == file_id),
            Job.status.not_in(FINISHED_JOB_STATUSES),
        )
    )
    return list(rows)


def delete_file(s: Session, user_id: str, file_id: str) -> File:
    """Delete the caller's file row (the caller removes the blob); 409 while an unfinished job uses it."""
    row = get_file(s, user_id, file_id)
    jobs = jobs_using(s, file_id)
    if jobs:
        raise Conflict(
            f"file {file_id} is used by unfinished fine-tuning job(s) {', '.join(jobs)}; "
            "cancel them or wait for them to finish, then delete the file",
            param="id",
        )
    s.execute(delete(MultipartUpload).where(MultipartUpload.file_id == file_id))
    s.execute(delete(File).where(File.id == file_id))
    return row


# ---- multipart uploads -------------------------------------------------------------------------

MP_OPEN = "open"
MP_COMPLETING = "completing"
MP_COMPLETED = "completed"
MP_ABORTED = "aborted"


def create_multipart(s: Session, file_id: str, num_parts: int, file_size: int = 0,
                     backend_id: str = "") -> MultipartUpload:
    """An open multipart upload of ``file_size`` announced bytes (0: unknown, bounded by the cap)."""
    row = MultipartUpload(id=new_upload_id(), file_id=file_id, num_parts=num_parts, state=MP_OPEN,
                          file_size=file_size, backend_id=backend_id)
    s.add(row)
    s.flush()
    return row


def get_multipart(s: Session, upload_id: str) -> MultipartUpload | None:
    return s.get(MultipartUpload, upload_id)


def get_user_multipart(s: Session, user_id: str, upload_id: str, file_id: str) -> MultipartUpload:
    """The caller's upload ``upload_id`` of ``file_id``, or 404."""
    row = s.scalar(
        select(MultipartUpload)
        .join(File, File.id == MultipartUpload.file_id)
        .where(MultipartUpload.id == upload_id, MultipartUpload.file_id == file_id, File.user_id == user_id)
    )
    if row is None:
        raise NotFound(f"no multipart upload {upload_id!r} for file {file_id!r}", param="upload_id")
    return row


def multipart_ids(s: Session, file_id: str) -> list[str]:
    return list(s.scalars(select(MultipartUpload.id).where(MultipartUpload.file_id == file_id)))


def set_multipart_state(s: Session, upload_id: str, expected: tuple[str, ...], new: str) -> bool:
    """Compare-and-set the upload's state; False when it was not in ``expected``."""
    result = s.execute(
        update(MultipartUpload)
        .where(MultipartUpload.id == upload_id, MultipartUpload.state.in_(expected))
        .values(state=new)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# ---- abandoned uploads ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Abandoned:
    """Uploads begun before a cutoff and never finished, taken off the books by ``abandon``:
    ``files`` never received their bytes (their rows are gone); ``multiparts`` are now aborted,
    as ``(upload id, file id, backend id)``. The caller removes what they had staged."""

    files: list[str]
    multiparts: list[tuple[str, str, str]]


def abandon_uploads(s: Session, before: datetime) -> Abandoned:
    """Abort the open multipart uploads and delete the files still awaiting their bytes that
    were created before ``before``. Compare-and-set, so concurrent sweepers never both take one."""
    stale = s.execute(select(MultipartUpload.id, MultipartUpload.file_id, MultipartUpload.backend_id)
                      .where(MultipartUpload.state == MP_OPEN, MultipartUpload.created_at < before)).all()
    multiparts = [(u, f, b) for u, f, b in stale if set_multipart_state(s, u, (MP_OPEN,), MP_ABORTED)]
    files = list(s.scalars(select(File.id).where(File.upload_state == AWAITING_UPLOAD, File.created_at < before)))
    for file_id in files:
        s.execute(delete(MultipartUpload).where(MultipartUpload.file_id == file_id))
        s.execute(delete(File).where(File.id == file_id, File.upload_state == AWAITING_UPLOAD))
    return Abandoned(files, multiparts)


def open_multipart_ids(s: Session, ids: list[str]) -> set[str]:
    """Which of ``ids`` are multipart uploads still open or completing (their parts are in use)."""
    return set(s.scalars(select(MultipartUpload.id).where(
        MultipartUpload.id.in_(ids), MultipartUpload.state.in_((MP_OPEN, MP_COMPLETING)))))
