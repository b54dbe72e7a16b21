"""Wire models of the fine-tuning API, named as in Together's OpenAPI / SDK."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunery.api.schemas.timefmt import iso


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
    """SFT (``train_on_inputs``) or DPO (``dpo_beta`` …) as one lenient object; validated later."""

    model_config = ConfigDict(extra="ignore")
    method: str = "sft"
    train_on_inputs: bool | Literal["auto"] | None = None
    dpo_beta: float | None = None
    dpo_normalize_logratios_by_length: bool | None = None
    dpo_reference_free: bool | None = None
    rpo_alpha: float | None = None
    simpo_gamma: float | None = None


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


def wire_job(job: Any, *, events: list[dict[str, Any]], queue_depth: int) -> dict[str, Any]:
    """The one converter from a job row to Together's ``FinetuneResponse`` JSON."""
    p = job.params
    seconds = job.seconds_remaining
    return {
        "id": job.id,
        "object": "fine-tune",
        "job_id": job.id,
        "status": job.status,
        "user_id": job.user_id,
        "owner_address": job.user_id,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "model": job.model,
        "model_output_name": job.model_output_name,
        "model_output_path": f"jobs/{job.id}/final" if job.status == "completed" else None,
        "adapter_output_name": (f"{job.model_output_name}-adapter"
                                if p["training_type"]["type"] == "Lora" and job.status == "completed" else None),
        "suffix": job.suffix,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "from_checkpoint": job.from_checkpoint or None,
        "from_hf_model": p.get("from_hf_model"),
        "hf_model_revision": p.get("hf_model_revision"),
        "hf_output_repo_name": p.get("hf_output_repo_name"),
        "n_epochs": p["n_epochs"],
        "n_checkpoints": p["n_checkpoints"],
        "n_evals": p["n_evals"],
        "eval_steps": p.get("eval_steps"),
        "batch_size": p.get("batch_size_resolved") or p["batch_size"],
        "requested_batch_size": p["batch_size"],
        "gradient_accumulation_steps": p["gradient_accumulation_steps"],
        "learning_rate": p["learning_rate"],
        "lr_scheduler": p["lr_scheduler"],
        "warmup_ratio": p["warmup_ratio"],
        "max_grad_norm": p["max_grad_norm"],
        "weight_decay": p["weight_decay"],
        "max_seq_length": p["max_seq_length"],
        "packing": p["packing"],
        "random_seed": p["random_seed"],
        "training_type": p["training_type"],
        "training_method": p["training_method"],
        "train_on_inputs": p["training_method"].get("train_on_inputs"),
        "multimodal_params": p.get("multimodal_params"),
        "early_stopping_enabled": p["early_stopping_enabled"],
        "early_stopping_patience": p["early_stopping_patience"],
        "early_stopping_min_delta": p["early_stopping_min_delta"],
        "early_stopping_warmup_evals": p["early_stopping_warmup_evals"],
        "early_stopped": job.early_stopped,
        "early_stopping_best_step": job.early_stopping_best_step,
        "early_stopping_best_metric": job.early_stopping_best_metric,
        "wandb_project_name": p.get("wandb_project_name"),
        "wandb_name": p.get("wandb_name"),
        "wandb_entity": p.get("wandb_entity"),
        "wandb_base_url": p.get("wandb_base_url"),
        "wandb_url": job.wandb_url,
        "total_steps": job.total_steps,
        "steps_completed": job.steps_completed,
        "epochs_completed": job.epochs_completed,
        "evals_completed": job.evals_completed,
        "token_count": job.token_count,
        "param_count": job.param_count,
        "total_price": p.get("total_price_nanodollars", 0),
        "trainingfile_numlines": p.get("trainingfile_numlines", 0),
        "trainingfile_size": p.get("trainingfile_size", 0),
        "TrainingFileNumLines": p.get("trainingfile_numlines", 0),
        "TrainingFileSize": p.get("trainingfile_size", 0),
        "queue_depth": queue_depth,
        "progress": {
            "estimate_available": seconds is not None and job.status == "running",
            "seconds_remaining": int(seconds) if seconds is not None and job.status == "running" else 0,
        },
        "priority": job.priority,
        "restarts": job.restarts,
        "error": job.error,
        "events": events,
    }
