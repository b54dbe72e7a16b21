"""Wire models of OpenAI's dialect: request bodies as the ``openai`` SDK sends them, and the one
converter per row to the object the SDK reads (``upload``, ``upload.part``, ``fine_tuning.job`` …)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunery.api.openai import hyperparameters as hp
from tunery.api.schemas.files import FileResponse
from tunery.api.schemas.timefmt import unix
from tunery.jobs.results import openai_metrics
from tunery.jobspec import DPO, GRPO
from tunery.store.fine_tuned_names import checkpoint_model_name, fine_tuned_model_name
from tunery.store.models import Checkpoint, File, Job, JobEvent, JobMetric, Upload, UploadPart
from tunery.store.status import JobStatus
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
    purpose: str = Field(description='"fine-tune" (the purposes this dialect serves: file_intake.OPENAI_PURPOSES).')
    expires_after: ExpiresAfter | None = None


class UploadCompleteRequest(OpenAIRequest):
    part_ids: list[str] = Field(min_length=1, description="The parts in the order they make up the file.")
    md5: str | None = Field(None, description="The MD5 of the whole file as hex; checked when given.")


Auto = Literal["auto"]
# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class Hyperparameters(OpenAIRequest):
    """Each a number or "auto" (see ``hyperparameters.py`` for how "auto" resolves)."""

    batch_size: Annotated[int, Field(ge=1)] | Auto = "auto"
    learning_rate_multiplier: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Auto = "auto"
    n_epochs: Annotated[int, Field(ge=1)] | Auto = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Auto = "auto"


class ReinforcementHyperparameters(Hyperparameters):
    """See ``hyperparameters.py``: ``compute_multiplier`` scales the completions sampled per prompt."""

    compute_multiplier: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Auto = "auto"
    eval_interval: Annotated[int, Field(ge=1)] | Auto = "auto"
    eval_samples: Annotated[int, Field(ge=1)] | Auto = "auto"
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"


class SupervisedMethod(OpenAIRequest):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(OpenAIRequest):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementMethod(OpenAIRequest):
    grader: dict[str, Any] = Field(description="OpenAI's grader object (checked by tunery.graders).")
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(OpenAIRequest):
    """``{"type": "supervised"|"dpo"|"reinforcement", "<type>": {"hyperparameters": {...}}}``. Another
    method is one more literal here, its settings class beside it, and a branch in ``job_requests.py``."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class WandbIntegration(OpenAIRequest):
    project: str = Field(min_length=1)
    entity: str | None = None
    name: str | None = None
    tags: list[str] | None = None


class Integration(OpenAIRequest):
    type: Literal["wandb"]
    wandb: WandbIntegration


class JobCreateRequest(OpenAIRequest):
    """The body of ``POST /v1/fine_tuning/jobs``."""

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = None
    hyperparameters: Hyperparameters | None = Field(None, description="Deprecated: use method.")
    method: Method | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"must have at most {MAX_METADATA_PAIRS} keys; got {len(value)}")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY or len(item) > MAX_METADATA_VALUE:
                raise ValueError(f"keys must be at most {MAX_METADATA_KEY} characters and values at most "
                                 f"{MAX_METADATA_VALUE}; {key[:70]!r} is not")
        return value


def upload_object(row: Upload, file: File | None = None) -> dict[str, Any]:
    """OpenAI's ``upload`` object; ``file`` is the File it became once completed."""
    return {
        "id": row.id, "object": "upload", "bytes": row.bytes, "created_at": unix(row.created_at),
        "expires_at": unix(row.expires_at), "filename": row.filename, "purpose": row.purpose,
        "status": visible_status(row), "file": FileResponse.from_row(file).wire() if file is not None else None,
    }


def part_object(row: UploadPart) -> dict[str, Any]:
    return {"id": row.id, "object": "upload.part", "created_at": unix(row.created_at), "upload_id": row.upload_id}


# ---- fine-tuning jobs --------------------------------------------------------------------------

# OpenAI's job status for each of tunery's. A job asked to stop (cancel, pause) shows where it is
# going: OpenAI answers a cancel with the job already "cancelled".
JOB_STATUS = {
    JobStatus.PENDING: "validating_files", JobStatus.QUEUED: "queued", JobStatus.RUNNING: "running",
    JobStatus.COMPRESSING: "running", JobStatus.UPLOADING: "running", JobStatus.CANCEL_REQUESTED: "cancelled",
    JobStatus.CANCELLED: "cancelled", JobStatus.COMPLETED: "succeeded", JobStatus.ERROR: "failed",
    JobStatus.USER_ERROR: "failed", JobStatus.PAUSE_REQUESTED: "paused", JobStatus.PAUSED: "paused",
}
EVENT_LEVEL = {"info": "info", "warning": "warn", "error": "error"}


def _number(value: float) -> float:
    """A derived float without the binary noise (0.1 rather than 0.10000000000000002)."""
    return float(f"{value:.6g}")


def job_method(job: Job) -> tuple[hp.Method, dict[str, Any]]:
    """OpenAI's method type and its hyperparameters, as this job resolved them."""
    spec = job.spec
    method = spec.training_method
    kind: hp.Method = "dpo" if isinstance(method, DPO) else "reinforcement" if isinstance(method, GRPO) \
        else "supervised"
    batch = job.batch_size or spec.batch_size
    params: dict[str, Any] = {
        "n_epochs": spec.n_epochs, "batch_size": "auto" if batch == "max" else batch,
        "learning_rate_multiplier": _number(spec.learning_rate / hp.BASE_LEARNING_RATE[kind]),
    }
    if isinstance(method, DPO):
        params["beta"] = method.dpo_beta
    if isinstance(method, GRPO):
        params.update(compute_multiplier=_number(hp.compute_multiplier(method.group_size)),
                      eval_interval=method.eval_interval or "auto", eval_samples=method.eval_samples,
                      reasoning_effort=method.reasoning_effort or "default")
    return kind, params


def _method_object(job: Job, kind: hp.Method, params: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``method``: the type, and under it the hyperparameters (and a reinforcement job's grader)."""
    method = job.spec.training_method
    grader = {"grader": method.grader} if isinstance(method, GRPO) else {}
    return {"type": kind, kind: {**grader, "hyperparameters": params}}


def job_object(job: Job, org: str, result_files: list[str]) -> dict[str, Any]:
    """OpenAI's ``fine_tuning.job`` for any job, whichever API created it."""
    spec = job.spec
    status = JOB_STATUS.get(JobStatus(job.status), job.status)
    kind, params = job_method(job)
    running = status == "running" and job.seconds_remaining is not None
    error = None
    if status == "failed":
        user_error = job.status == JobStatus.USER_ERROR
        # user_error: the data or settings were at fault (the message says what to change).
        error = {"code": "user_error" if user_error else "server_error", "message": job.error or "the job failed",
                 "param": None}
    wandb = spec.wandb
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": unix(job.created_at),
        "finished_at": unix(job.finished_at) if job.finished_at and status != "paused" else None,
        "model": spec.model_alias or spec.model, "organization_id": org, "status": status,
        "fine_tuned_model": fine_tuned_model_name(job, org) if status == "succeeded" else None,
        "training_file": spec.training_file, "validation_file": spec.validation_file,
        "hyperparameters": params, "method": _method_object(job, kind, params),
        "seed": spec.random_seed, "suffix": spec.suffix, "metadata": spec.metadata,
        "trained_tokens": job.token_count if status == "succeeded" else None,
        "estimated_finish": int(time.time() + job.seconds_remaining) if running and job.seconds_remaining else None,
        "result_files": result_files, "error": error,
        "integrations": [{"type": "wandb", "wandb": {"project": wandb.project_name, "entity": wandb.entity,
                                                     "name": wandb.name, "tags": list(wandb.tags)}}]
        if wandb.project_name else [],
        "user_provided_suffix": spec.suffix,
    }


def event_object(e: JobEvent) -> dict[str, Any]:
    return {"id": f"ftevent-e{e.id}", "object": "fine_tuning.job.event", "created_at": unix(e.created_at),
            "level": EVENT_LEVEL.get(e.level, "info"), "message": e.message, "type": "message",
            "data": {"type": e.type, **(e.fields or {})}}


SHOWN_METRICS = (("train_loss", "training loss"), ("valid_loss", "validation loss"),
                 ("train_mean_reward", "train mean reward"), ("full_valid_mean_reward", "full validation mean reward"))


def metrics_object(m: JobMetric, total_steps: int) -> dict[str, Any]:
    """One training step's metrics as OpenAI's ``metrics`` event ("Step 3/40: training loss=…"); a
    reinforcement job's rewards also as OpenAI's ``scores`` (overall and per grader)."""
    data: dict[str, Any] = dict(openai_metrics(m.step, m.values))
    shown = ", ".join(f"{label}={data[key]:.4f}" for key, label in SHOWN_METRICS if key in data)
    scores = _scores(m.values)
    if scores:
        data["scores"] = scores
    return {"id": f"ftevent-m{m.id}", "object": "fine_tuning.job.event", "created_at": unix(m.logged_at),
            "level": "info", "type": "metrics", "message": f"Step {m.step}/{total_steps}: {shown}",
            "data": {**data, "total_steps": total_steps}}


def _scores(values: dict[str, float]) -> dict[str, Any] | None:
    """``{"train_reward_mean"|"valid_reward_mean": …, "graders": [{"name", …_reward_mean}]}`` from GRPO's
    ``train/reward``, ``eval/reward`` and ``{train,eval}/grader/<name>``; None for other metrics."""
    split = "train" if "train/reward" in values else "valid" if "eval/reward" in values else None
    if split is None:
        return None
    prefix = "train/grader/" if split == "train" else "eval/grader/"
    graders = [{"name": key.removeprefix(prefix), f"{split}_reward_mean": value}
               for key, value in values.items() if key.startswith(prefix)]
    overall = values["train/reward" if split == "train" else "eval/reward"]
    return {f"{split}_reward_mean": overall, "graders": graders}


def checkpoint_object(job: Job, org: str, c: Checkpoint, metrics: dict[str, float]) -> dict[str, Any]:
    return {"id": f"ftckpt-{c.id}", "object": "fine_tuning.job.checkpoint", "created_at": unix(c.created_at),
            "fine_tuned_model_checkpoint": checkpoint_model_name(job, org, c.step), "fine_tuning_job_id": job.id,
            "step_number": c.step, "metrics": metrics}


def cursor_page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list envelope; the SDK pages on with ``after`` = the last item's id while ``has_more``."""
    return {"object": "list", "data": items, "has_more": has_more,
            "first_id": items[0]["id"] if items else None, "last_id": items[-1]["id"] if items else None}
