"""OpenAI-style Uploads (``/v1/uploads``): a file sent as parts in any order, assembled on completion.

    status   pending ──complete──► completing ──► completed      (the File exists from here on)
                │                      │
                │                      └──(assembly failed)──► pending
                └──cancel──► cancelled
    an upload still pending past ``expires_at`` reads as expired and takes no more parts

Each part's bytes are a blob of their own (``upload_parts/<upload id>/<part id>``) until the upload
completes or is cancelled. Status changes are compare-and-set, so two completes (or a complete and a
cancel) cannot both win. Every lookup takes the owner's user id.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from tunery.errors import NotFound
from tunery.store.models import Upload, UploadPart, utcnow

PENDING = "pending"
COMPLETING = "completing"
COMPLETED = "completed"
CANCELLED = "cancelled"
EXPIRED = "expired"
# OpenAI's Uploads expire an hour after they are created.
UPLOAD_TTL = timedelta(hours=1)


def new_upload_id() -> str:
    return f"upload_{secrets.token_hex(12)}"


def new_part_id() -> str:
    return f"part_{secrets.token_hex(12)}"


def part_blob_key(upload_id: str, part_id: str) -> str:
    return f"upload_parts/{upload_id}/{part_id}"


def create_upload(s: Session, *, user_id: str, filename: str, purpose: str, size: int) -> Upload:
    now = utcnow()
    row = Upload(id=new_upload_id(), user_id=user_id, filename=filename, purpose=purpose, bytes=size,
                 status=PENDING, created_at=now, expires_at=now + UPLOAD_TTL)
    s.add(row)
    s.flush()
    return row


def get_upload(s: Session, user_id: str, upload_id: str) -> Upload:
    row = s.scalar(select(Upload).where(Upload.id == upload_id, Upload.user_id == user_id))
    if row is None:
        raise NotFound(f"No such Upload object: {upload_id}", param="upload_id")
    return row


def visible_status(row: Upload, now: datetime | None = None) -> str:
    """The status a client sees: a pending (or mid-completion) upload past its expiry is expired."""
    if row.status in (PENDING, COMPLETING):
        return EXPIRED if (now or utcnow()) >= row.expires_at else PENDING
    return row.status


def set_status(s: Session, upload_id: str, expected: tuple[str, ...], new: str, **values: object) -> bool:
    """Compare-and-set the upload's status; False when it was not in ``expected``."""
    result = s.execute(
        update(Upload).where(Upload.id == upload_id, Upload.status.in_(expected))
        .values(status=new, **values).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def add_part(s: Session, upload_id: str, part_id: str, blob_key: str, size: int) -> UploadPart:
    row = UploadPart(id=part_id, upload_id=upload_id, blob_key=blob_key, size=size, created_at=utcnow())
    s.add(row)
    s.flush()
    return row


def parts_size(s: Session, upload_id: str) -> int:
    return int(s.scalar(select(func.coalesce(func.sum(UploadPart.size), 0))
                        .where(UploadPart.upload_id == upload_id)) or 0)


def list_parts(s: Session, upload_id: str) -> dict[str, UploadPart]:
    return {p.id: p for p in s.scalars(select(UploadPart).where(UploadPart.upload_id == upload_id))}


def drop_parts(s: Session, upload_id: str) -> list[str]:
    """Forget the upload's parts; returns their blob keys for the caller to delete."""
    keys = list(s.scalars(select(UploadPart.blob_key).where(UploadPart.upload_id == upload_id)))
    s.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
    return keys


def expired_pending(s: Session, user_id: str) -> list[str]:
    """Ids of the user's uploads that expired while pending (their parts are garbage now)."""
    return list(s.scalars(select(Upload.id).where(
        Upload.user_id == user_id, Upload.status == PENDING, Upload.expires_at <= utcnow())))
