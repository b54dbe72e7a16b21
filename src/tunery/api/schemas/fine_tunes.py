"""Wire models of the fine-tuning API, named as in Together's OpenAPI / SDK."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunery.api.schemas.timefmt import iso
from tunery.jobspec import SFT
from tunery.store.jobs import Event
from tunery.store.models import Job
from tunery.store.status import JobStatus


class LrSchedulerArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    min_lr_ratio: float = 0.0
    num_cycles: float = 0.5


class LrScheduler(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lr_scheduler_type: Literal["linear", "cosine"] = "cosine"
    lr_scheduler_args: LrSchedulerArgs = Field(default_factory=LrSchedulerArgs)


class TrainingType(BaseModel):
    """``{"type": "Full"}`` or
    ``{"type": "Lora", "lora_r", "lora_alpha", "lora_dropout", "lora_trainable_modules"}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["Full", "Lora", "full", "lora"]
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_trainable_modules: str | None = None


class TrainingMethod(BaseModel):
    """SFT (``train_on_inputs``), DPO (``dpo_beta`` …) or GRPO (``grader`` …) as one lenient object;
    validated later."""

    model_config = ConfigDict(extra="ignore")
    method: str = "sft"
    train_on_inputs: bool | Literal["auto"] | None = None
    dpo_beta: float | None = None
    dpo_normalize_logratios_by_length: bool | None = None
    dpo_reference_free: bool | None = None
    rpo_alpha: float | None = None
    simpo_gamma: float | None = None
    grader: dict[str, Any] | None = None
    group_size: int | None = None
    kl_coef: float | None = None
    clip_range: float | None = None
    num_iterations: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    eval_interval: int | None = None
    eval_samples: int | None = None


class MultimodalParams(BaseModel):
    train_vision: bool = False


class FinetuneRequest(BaseModel):
    """The body of ``POST /v1/fine-tunes`` (every field the SDK, CLI or OpenAPI may send)."""

    model_config = ConfigDict(extra="ignore")
    training_file: str
    validation_file: str | None = None
    model: str | None = None
    from_checkpoint: str | None = None
    from_hf_model: str | None = None
    hf_model_revision: str | None = None
    hf_api_token: str | None = None
    hf_output_repo_name: str | None = None
    packing: bool = True
    n_epochs: int = 1
    n_checkpoints: int = 1
    n_evals: int = 0
    max_seq_length: int | None = None
    batch_size: int | Literal["max"] = "max"
    gradient_accumulation_steps: int | None = None
    learning_rate: float = 1e-5
    lr_scheduler: LrScheduler = Field(default_factory=LrScheduler)
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    training_type: TrainingType | None = None
    training_method: TrainingMethod = Field(default_factory=TrainingMethod)
    # Deprecated top-level field (moved into training_method).
    train_on_inputs: bool | Literal["auto"] | None = None
    suffix: str | None = None
    wandb_key: str | None = None
    wandb_api_key: str | None = None
    wandb_base_url: str | None = None
    wandb_project_name: str | None = None
    wandb_name: str | None = None
    wandb_entity: str | None = None
    random_seed: int | None = None
    early_stopping_enabled: bool = False
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float | None = None
    early_stopping_warmup_evals: int | None = None
    multimodal_params: MultimodalParams | None = None
    priority: int = 0


class PriceEstimateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    training_file: str
    validation_file: str | None = None
    model: str | None = None
    from_checkpoint: str | None = None
    n_epochs: int = 1
    n_evals: int = 0
    training_method: TrainingMethod | None = None
    training_type: TrainingType | None = None


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    training_file: str
    top_k: int | None = None
    train_on_inputs: bool | Literal["auto"] | None = None
    training_method: str | None = "sft"


# Together's event types are the `together` SDK's FinetuneEventType. The few records tunery keeps
# beyond them are shown as the nearest one; their message says what happened.
WIRE_EVENT_TYPES = {"eval_complete": "epoch_complete", "model_uploading_to_hf": "model_uploading",
                    "model_upload_to_hf_complete": "model_upload_complete",
                    # Pausing (OpenAI's dialect): asked to stop at the next step, stopped, and back.
                    "pause_requested": "cancel_requested", "job_paused": "job_stopped",
                    "job_resumed": "job_restarted"}
# Fields every FineTuneEvent carries in Together's spec; an event shows its own values where it has
# them (written by the worker as it learns them), these where it has none.
EVENT_FIELDS: dict[str, Any] = {"step": 0, "total_steps": 0, "token_count": 0, "param_count": 0,
                                "checkpoint_path": "", "model_path": "", "hash": "", "training_offset": 0,
                                "wandb_url": ""}
# Statuses beyond the SDK's FinetuneJobStatus, as the nearest one: a user error is an error (its
# message says what to change); a job pausing still runs, a paused one waits to be resumed.
WIRE_STATUSES = {JobStatus.USER_ERROR: JobStatus.ERROR, JobStatus.PAUSE_REQUESTED: JobStatus.RUNNING,
                 JobStatus.PAUSED: JobStatus.PENDING}


def wire_event(e: Event) -> dict[str, Any]:
    """The one converter from an event row to Together's ``FineTuneEvent`` JSON."""
    own = {k: v for k, v in (e.fields or {}).items() if v is not None}
    return {"object": "fine-tune-event", "created_at": iso(e.created_at), "level": e.level, "message": e.message,
            "type": WIRE_EVENT_TYPES.get(e.type, e.type), **EVENT_FIELDS, **own}


def wire_job(job: Job, *, events: list[dict[str, Any]], queue_depth: int, truncated: bool = False) -> dict[str, Any]:
    """The one converter from a job row to Together's ``FinetuneResponse`` JSON, or with
    ``truncated`` its ``FinetuneResponseTruncated`` (create, list, cancel). Fields without a value
    are left out, as Together's spec has no nulls; ``batch_size`` is the one used once training
    has chosen it (before that, the truncated form has none: its spec allows only an integer)."""
    spec = job.spec
    seconds = job.seconds_remaining
    completed = job.status == JobStatus.COMPLETED
    running = job.status == JobStatus.RUNNING
    method = spec.training_method
    batch_size = job.batch_size or spec.batch_size
    body: dict[str, Any] = {
        "id": job.id,
        "object": "fine-tune",
        "job_id": job.id,
        "status": WIRE_STATUSES.get(JobStatus(job.status), job.status),
        "user_id": job.user_id,
        "owner_address": job.user_id,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "model": spec.model,
        "model_output_name": job.model_output_name,
        "model_output_path": f"jobs/{job.id}/final" if completed else None,
        "adapter_output_name": f"{job.model_output_name}-adapter" if spec.is_lora and completed else None,
        "suffix": spec.suffix,
        "training_file": spec.training_file,
        "validation_file": spec.validation_file,
        "from_checkpoint": spec.from_checkpoint,
        "from_hf_model": spec.from_hf_model,
        "hf_model_revision": spec.hf_model_revision,
        "hf_output_repo_name": spec.hf_output_repo_name,
        "n_epochs": spec.n_epochs,
        "n_checkpoints": spec.n_checkpoints,
        "n_evals": spec.n_evals,
        "batch_size": batch_size if isinstance(batch_size, int) or not truncated else None,
        "requested_batch_size": spec.batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        "learning_rate": spec.learning_rate,
        "lr_scheduler": spec.lr_scheduler.model_dump(exclude_none=True),
        "warmup_ratio": spec.warmup_ratio,
        "max_grad_norm": spec.max_grad_norm,
        "weight_decay": spec.weight_decay,
        "max_seq_length": spec.max_seq_length,
        "packing": spec.packing,
        "random_seed": spec.random_seed,
        "training_type": spec.training_type.model_dump(),
        "training_method": method.model_dump(),
        "train_on_inputs": method.train_on_inputs if isinstance(method, SFT) else None,
        "multimodal_params": spec.multimodal_params.model_dump() if spec.multimodal_params else None,
        "early_stopping_enabled": spec.early_stopping.enabled,
        "early_stopping_patience": spec.early_stopping.patience,
        "early_stopping_min_delta": spec.early_stopping.min_delta,
        "early_stopping_warmup_evals": spec.early_stopping.warmup_evals,
        "early_stopped": job.early_stopped,
        "early_stopping_best_step": job.early_stopping_best_step,
        "early_stopping_best_metric": job.early_stopping_best_metric,
        "wandb_project_name": spec.wandb.project_name,
        "wandb_name": spec.wandb.name,
        "wandb_entity": spec.wandb.entity,
        "wandb_base_url": spec.wandb.base_url,
        "wandb_url": job.wandb_url,
        "tokenized_dataset_path": job.tokenized_dataset_key,
        "tokenized_dataset_uploaded_at": iso(job.tokenized_dataset_uploaded_at),
        "total_steps": job.total_steps,
        "steps_completed": job.steps_completed,
        "epochs_completed": job.epochs_completed,
        "evals_completed": job.evals_completed,
        "token_count": job.token_count,
        "param_count": job.param_count,
        "total_price": job.total_price_nanodollars,
        "trainingfile_numlines": job.trainingfile_numlines,
        "trainingfile_size": job.trainingfile_size,
        "TrainingFileNumLines": job.trainingfile_numlines,
        "TrainingFileSize": job.trainingfile_size,
        "queue_depth": queue_depth,
        "progress": {
            "estimate_available": seconds is not None and running,
            "seconds_remaining": int(seconds) if seconds is not None and running else 0,
        },
        "priority": job.priority,
        "restarts": job.restarts,
        "error": job.error,
        "events": events,
    }
    return {k: v for k, v in body.items() if v is not None}
