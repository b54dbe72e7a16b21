"""Turning received bytes into a user's validated dataset file: store them as a new file, then
stream the stored blob through the dataset validator and record its verdict. Every way a file
arrives with its bytes (Together's forms, OpenAI's ``files.create`` and completed Uploads) ends here."""

from __future__ import annotations

import logging
from pathlib import Path

from tunery.api.deps import AppContext
from tunery.api.schemas.files import FileCreateRequest
from tunery.errors import Busy, InvalidRequest, NotFound, TuneryError
from tunery.storage.staging import StagedFile
from tunery.store import files as file_store
from tunery.store.models import File, User

log = logging.getLogger("tunery.api.files")

# The purposes OpenAI's dialect (``files.create``, ``uploads.create``) takes. Of OpenAI's own
# (assistants, batch, fine-tune, vision, user_data, evals) this server serves fine-tuning only;
# Together's other purposes (eval, calibration, batch-api) are uploaded through Together's API.
OPENAI_PURPOSES = ("fine-tune",)


def check_openai_purpose(purpose: str | None) -> None:
    """Refuse, naming the purposes OpenAI's dialect accepts, a purpose it does not serve."""
    if purpose not in OPENAI_PURPOSES:
        accepted = ", ".join(f'"{p}"' for p in OPENAI_PURPOSES)
        raise InvalidRequest(f"purpose must be {accepted} (this server's OpenAI files API keeps files for "
                             f"fine-tuning jobs); got {purpose!r}", param="purpose")


def store_staged_file(ctx: AppContext, user: User, meta: FileCreateRequest, staged: StagedFile) -> File:
    """A new file of ``user``'s holding the received bytes in ``staged`` (moved into the blob store)."""
    key = ""
    try:
        with ctx.db.session() as s:
            row = file_store.create_file(
                s, user_id=user.id, filename=meta.file_name, purpose=meta.purpose, file_type=meta.file_type,
            )
            file_store.claim_upload(s, row.id)
        key = file_store.blob_key(row.id)
        ctx.blobs.put(key, staged.path)  # between two short transactions: blob I/O takes its time
        with ctx.db.session() as s:
            file_store.finish_upload(s, row.id, size=staged.size, key=key, checksum=staged.sha256)
            return file_store.get_file(s, user.id, row.id)
    except BaseException:
        staged.discard()
        if key:
            ctx.blobs.delete(key)
        raise


def validate_file(ctx: AppContext, row: File, path: Path | None = None) -> File:
    """Stream the stored blob (or ``path``, a local copy of it) through the dataset validator, in a
    bounded child process (``ctx.validator``), and record the verdict on the row; no transaction
    is open meanwhile."""
    with ctx.db.session() as s:
        file_store.mark_validating(s, row.id)
    try:
        if path is not None:
            report = ctx.validator.validate(path, row.file_type, row.purpose)
        else:
            with ctx.blobs.local_copy(row.blob_key) as copy:
                report = ctx.validator.validate(copy, row.file_type, row.purpose)
    except Busy:
        with ctx.db.session() as s:
            file_store.mark_validating(s, row.id, file_store.PENDING)  # never started: a retry validates it
        raise
    except Exception as error:
        log.exception("validating %s failed", row.id)
        with ctx.db.session() as s:
            file_store.record_validation_failure(s, row.id, f"{type(error).__name__}: {error}")
        raise TuneryError(f"validating file {row.id} failed; the server log has the details") from error
    with ctx.db.session() as s:
        updated = file_store.record_validation(
            s, row.id, valid=report.valid, report=report.to_json(),
            dataset_format=report.dataset_format.value if report.dataset_format else None,
            num_samples=report.num_samples,
        )
    if updated is None:
        raise NotFound(f"file {row.id} was deleted during validation", param="id")
    return updated
