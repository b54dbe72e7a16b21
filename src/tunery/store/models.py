"""The tables. Wire shapes live in ``tunery.api.schemas``; these are storage only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates

from tunery.jobspec import JobSpec
from tunery.store.status import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def result_processor(self, dialect: Any, coltype: object) -> Callable[[Any], datetime | None] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def from_sqlite_text(value: str | None) -> datetime | None:
            # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff': fromisoformat parses that in C, where
            # SQLAlchemy's SQLite type runs a regex per value (a retrieve reads dozens).
            return None if value is None else self.process_result_value(datetime.fromisoformat(value), dialect)

        return from_sqlite_text


class JobSpecJSON(TypeDecorator[JobSpec]):
    """A ``JobSpec`` stored as JSON: dumped on write, validated on read. Stored specs are always the
    current ``SPEC_VERSION`` (a version change comes with a migration that rewrites them)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: JobSpec | None, dialect: Any) -> dict[str, Any] | None:
        return None if value is None else value.model_dump(mode="json")

    def process_result_value(self, value: dict[str, Any] | None, dialect: Any) -> JobSpec | None:
        return None if value is None else JobSpec.model_validate(value)


class Base(DeclarativeBase):
    # none_as_null: a Python None is SQL NULL, not the JSON text "null".
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(none_as_null=True), int: BigInteger()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    # sha256 of the key: keys are 256-bit random, so a fast hash is enough to make a leaked
    # table useless.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class WebSession(Base):
    """A dashboard sign-in: the cookie names this row, so signing out (or revoking the API key it
    was made with) ends it on the server, not only in the browser."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    file_type: Mapped[str] = mapped_column(String(16))
    # sha256 hex the client announced (empty if none); checked when the bytes arrive.
    checksum: Mapped[str] = mapped_column(String(64), default="")
    bytes: Mapped[int] = mapped_column(default=0)
    # awaiting_upload → uploaded → (validated via processing_status)
    upload_state: Mapped[str] = mapped_column(String(32), default="awaiting_upload")
    # Together's processing_status: PENDING | RUNNING | COMPLETED | INVALID_FORMAT | FAILED
    processing_status: Mapped[str] = mapped_column(String(32), default="PENDING")
    blob_key: Mapped[str] = mapped_column(String(512), default="")
    report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    dataset_format: Mapped[str | None] = mapped_column(String(32), default=None)
    num_samples: Mapped[int] = mapped_column(default=0)
    # What models' chat templates made of the file ({tokens, problem} per model, method and
    # masking; api/dataset_checks.py): rendered once, since a file never changes.
    scans: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MultipartUpload(Base):
    __tablename__ = "multipart_uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), index=True)
    num_parts: Mapped[int] = mapped_column(Integer)
    # The size the client announced at initiate: the parts together may not exceed it.
    file_size: Mapped[int] = mapped_column(default=0)
    # open | completed | aborted
    state: Mapped[str] = mapped_column(String(16), default="open")
    # Backend-specific handle (the S3 UploadId); empty for the local store.
    backend_id: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Upload(Base):
    """An OpenAI-style Upload: a file sent in parts (``/v1/uploads``) that becomes a ``File`` when completed."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    # The size the client announced; the parts listed at completion must add up to it.
    bytes: Mapped[int] = mapped_column()
    # pending → completing → completed, or pending → cancelled (expiry is read from expires_at)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    file_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class UploadPart(Base):
    __tablename__ = "upload_parts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    blob_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.PENDING.value)
    # What the job was asked to do (see tunery.jobspec). The next three are copies of spec fields,
    # set whenever the spec is (see _copy_queried_fields), for the queries that select by them
    # (claiming by model, finding the jobs that use a file).
    spec: Mapped[JobSpec] = mapped_column(JobSpecJSON())
    model: Mapped[str] = mapped_column(String(512))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str] = mapped_column(String(64), default="")
    model_output_name: Mapped[str] = mapped_column(String(512))
    # wandb_key / hf_api_token (tunery.jobspec.JobSecrets); cleared when the job ends.
    secrets: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # What the server learned about the inputs at create.
    trainingfile_numlines: Mapped[int] = mapped_column(default=0)
    trainingfile_size: Mapped[int] = mapped_column(default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # Progress and outcomes, written by the worker.
    batch_size: Mapped[int | None] = mapped_column(default=None)  # the one used (resolved when "max")
    total_price_nanodollars: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int] = mapped_column(default=0)
    steps_completed: Mapped[int] = mapped_column(default=0)
    epochs_completed: Mapped[int] = mapped_column(default=0)
    evals_completed: Mapped[int] = mapped_column(default=0)
    # The job's estimated tokens, held against its user's token quota until it reports token_count.
    reserved_tokens: Mapped[int] = mapped_column(default=0)
    token_count: Mapped[int] = mapped_column(default=0)
    param_count: Mapped[int] = mapped_column(default=0)
    seconds_remaining: Mapped[float | None] = mapped_column(Float, default=None)
    early_stopped: Mapped[bool] = mapped_column(default=False)
    early_stopping_best_step: Mapped[int | None] = mapped_column(default=None)
    early_stopping_best_metric: Mapped[float | None] = mapped_column(Float, default=None)
    wandb_url: Mapped[str | None] = mapped_column(String(1024), default=None)
    # The Parquet of the tokenized training set (download-tokenized-dataset), once stored.
    tokenized_dataset_key: Mapped[str | None] = mapped_column(String(512), default=None)
    tokenized_dataset_size: Mapped[int] = mapped_column(default=0)
    tokenized_dataset_uploaded_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    @validates("spec")
    def _copy_queried_fields(self, _key: str, spec: JobSpec) -> JobSpec:
        # The columns queries select by always say what the spec says.
        self.model, self.training_file = spec.model, spec.training_file
        self.validation_file = spec.validation_file or ""
        return spec


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
    # Optional typed fields of Together's FinetuneEvent (step, checkpoint_path, …).
    fields: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class JobMetric(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_step", "job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column()
    logged_at: Mapped[datetime] = mapped_column(default=utcnow)
    values: Mapped[dict[str, Any]] = mapped_column()


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_job_step", "job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column()
    final: Mapped[bool] = mapped_column(default=False)
    # "model" (full weights, merged for LoRA), "adapter" (LoRA only) or "state" (resume state)
    variant: Mapped[str] = mapped_column(String(16))
    blob_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BaseModelEntry(Base):
    """A base model an operator registered by name (`tunery models add NAME PATH`)."""

    __tablename__ = "base_models"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    """An operator's alias for a base model (`tunery models alias gpt-4o-mini-2024-07-18 NAME`), so
    scripts that name an OpenAI model train the open model it stands for."""

    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(256), primary_key=True)
    target: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
