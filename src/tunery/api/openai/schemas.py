"""Wire models of OpenAI's dialect: request bodies as the ``openai`` SDK sends them, and the one
converter per row to the object the SDK reads (``upload``, ``upload.part``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunery.api.schemas.files import FilePurpose, FileResponse
from tunery.api.schemas.timefmt import unix
from tunery.store.models import File, Upload, UploadPart
from tunery.store.uploads import visible_status


class OpenAIRequest(BaseModel):
    # OpenAI refuses arguments it does not know ("Unrecognized request argument supplied"); so do
    # we, so a misspelt field is never silently dropped.
    model_config = ConfigDict(extra="forbid")


class ExpiresAfter(OpenAIRequest):
    anchor: Literal["created_at"]
    seconds: int


class UploadCreateRequest(OpenAIRequest):
    bytes: int = Field(ge=1, description="The size of the whole file; the parts must add up to it.")
    filename: str = Field(description="The file's name; its extension (.jsonl, .parquet) sets the file type.")
    mime_type: str = Field(min_length=1, description="Informational: the type follows the filename's extension.")
    purpose: FilePurpose
    expires_after: ExpiresAfter | None = None


class UploadCompleteRequest(OpenAIRequest):
    part_ids: list[str] = Field(min_length=1, description="The parts in the order they make up the file.")
    md5: str | None = Field(None, description="The MD5 of the whole file as hex; checked when given.")


def upload_object(row: Upload, file: File | None = None) -> dict[str, Any]:
    """OpenAI's ``upload`` object; ``file`` is the File it became once completed."""
    return {
        "id": row.id, "object": "upload", "bytes": row.bytes, "created_at": unix(row.created_at),
        "expires_at": unix(row.expires_at), "filename": row.filename, "purpose": row.purpose,
        "status": visible_status(row), "file": FileResponse.from_row(file).wire() if file is not None else None,
    }


def part_object(row: UploadPart) -> dict[str, Any]:
    return {"id": row.id, "object": "upload.part", "created_at": unix(row.created_at), "upload_id": row.upload_id}
