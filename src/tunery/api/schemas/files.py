"""Wire models of the Files API, named as in Together's OpenAPI / SDK (contract §3)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunery.api.schemas.timefmt import unix
from tunery.store.models import File

FilePurpose = Literal["fine-tune", "calibration", "eval", "batch-api"]
# What a stored file may say: what users upload for, and what the server writes itself (a job's
# results, tunery.jobs.results).
StoredPurpose = Literal["fine-tune", "calibration", "eval", "batch-api", "fine-tune-results"]
FileType = Literal["jsonl", "csv", "parquet"]
ProcessingStatus = Literal["PENDING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "INVALID_FORMAT"]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_PARTS = 10_000


def _basename(value: str) -> str:
    value = value.strip()
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise ValueError("must be a plain file name (a basename such as train.jsonl), not a path")
    if len(value) > 255:
        raise ValueError("must be at most 255 characters")
    return value


def _checksum(value: str | None) -> str:
    value = (value or "").strip()
    if value and not _SHA256.match(value):
        raise ValueError("must be the file's SHA-256 as 64 hex digits")
    return value.lower()


class ValidationReport(BaseModel):
    """The validator's verdict, as Together reports it (``dataset_format`` uppercase)."""

    model_config = ConfigDict(extra="allow")
    valid: bool
    dataset_format: str | None = None
    dataset_has_message_weights: bool | None = None
    dataset_has_parallel_tool_calls: bool | None = None
    dataset_has_reasoning: bool | None = None
    dataset_has_sample_weights: bool | None = None
    dataset_has_tools: bool | None = None
    dataset_is_multimodal: bool | None = None
    error: str | None = None
    error_type: Literal["INVALID_FORMAT"] | None = None
    file_id: str | None = None
    nlines: int | None = None


# OpenAI's file ``status`` for each of Together's ``processing_status`` values.
OPENAI_STATUS = {"PENDING": "uploaded", "QUEUED": "uploaded", "RUNNING": "uploaded", "COMPLETED": "processed",
                 "FAILED": "error", "INVALID_FORMAT": "error"}


class FileResponse(BaseModel):
    """One file, in both dialects at once: Together's fields (``FileType`` capitalised exactly so,
    ``processing_status``, ``validation_report``; the `together` SDK's upload path validates them
    strictly) and OpenAI's (``status`` uploaded/processed/error, ``status_details`` with the
    validation error naming the line, ``expires_at``). ``created_at`` is unix seconds in both."""

    model_config = ConfigDict(populate_by_name=True)
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    file_type: FileType = Field(alias="FileType")
    purpose: StoredPurpose
    processing_status: ProcessingStatus
    # Together's: whether the file has been parsed and checked (valid or not).
    processed: bool = Field(alias="Processed")
    validation_report: ValidationReport | None = None
    # Older Together field, kept for older clients; the number of samples once validated.
    line_count: int = 0
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    # Files here never expire (expires_after is refused on upload).
    expires_at: int | None = None

    @classmethod
    def from_row(cls, row: File) -> FileResponse:
        report = None
        if row.report is not None:
            report = ValidationReport.model_validate({**row.report, "file_id": row.id})
        return cls(
            id=row.id, bytes=row.bytes, created_at=unix(row.created_at), filename=row.filename,
            FileType=row.file_type,  # type: ignore[arg-type]
            purpose=row.purpose,  # type: ignore[arg-type]
            processing_status=row.processing_status,  # type: ignore[arg-type]
            Processed=row.processing_status in ("COMPLETED", "INVALID_FORMAT"),
            validation_report=report, line_count=row.num_samples,
            status=OPENAI_STATUS[row.processing_status],  # type: ignore[arg-type]
            status_details=(row.report or {}).get("error") if row.processing_status in ("FAILED", "INVALID_FORMAT")
            else None,
        )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


class FileList(BaseModel):
    """Together reads ``data``; OpenAI's SDK pages with ``has_more`` and the last item's id."""

    object: Literal["list"] = "list"
    data: list[FileResponse]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleteResponse(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FileCreateRequest(BaseModel):
    """``POST /v1/files``: metadata only, as a form; the bytes follow with ``PUT <Location>``."""

    purpose: FilePurpose
    file_name: str = Field(description="The file's basename, e.g. train.jsonl.")
    file_type: FileType = "jsonl"
    checksum: str = Field("", description="SHA-256 of the file as 64 hex digits; checked on upload.")

    _name = field_validator("file_name")(_basename)
    _sum = field_validator("checksum")(_checksum)

    @classmethod
    def for_bytes(cls, purpose: str | None, file_name: str, file_type: str | None = None) -> FileCreateRequest:
        """The metadata of bytes sent with the request: the type follows the name's extension when
        not given (jsonl when the extension is none of ours). Raises pydantic's ValidationError."""
        suffix = PurePosixPath(file_name).suffix.lstrip(".").lower()
        return cls.model_validate({
            "purpose": purpose, "file_name": file_name, "checksum": "",
            "file_type": file_type or (suffix if suffix in ("jsonl", "csv", "parquet") else "jsonl"),
        })


class FileUploadUrl(BaseModel):
    """The body of the ``302`` answer to ``POST /v1/files`` (the SDK uses only the headers)."""

    id: str
    upload_url: str
    expires_at: int


class MultipartInitiateRequest(BaseModel):
    file_name: str
    file_size: int = Field(ge=0)
    num_parts: int = Field(ge=1, le=MAX_PARTS)
    purpose: FilePurpose
    file_type: FileType = "jsonl"
    checksum: str = ""

    _name = field_validator("file_name")(_basename)
    _sum = field_validator("checksum")(_checksum)


class MultipartPart(BaseModel):
    PartNumber: int
    URL: str
    Headers: dict[str, str] = Field(default_factory=dict)


class MultipartInitiateResponse(BaseModel):
    upload_id: str
    file_id: str
    parts: list[MultipartPart]


class CompletedPart(BaseModel):
    part_number: int = Field(ge=1, le=MAX_PARTS)
    etag: str


class MultipartCompleteRequest(BaseModel):
    upload_id: str
    file_id: str
    parts: list[CompletedPart] = Field(min_length=1, max_length=MAX_PARTS)


class MultipartCompleteResponse(BaseModel):
    file: FileResponse


class MultipartAbortRequest(BaseModel):
    upload_id: str
    file_id: str


class MultipartAbortResponse(BaseModel):
    upload_id: str
    file_id: str
    aborted: bool = True
