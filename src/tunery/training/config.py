"""The training job's configuration: written as JSON by the worker, read once by a recipe.

The worker builds it from the job's spec (``tunery.jobspec.JobSpec.train_config``) plus the local
paths it fetched the inputs to (files, base model, parent checkpoint); a recipe run by hand on a
GPU box reads the same JSON. Validation reports every problem at once, in messages that say what
to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, model_validator

SECRET_FIELDS = frozenset({"wandb_api_key", "hf_api_token"})


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = 8
    alpha: float | None = None  # None: 2 * r, as Together's SDK does
    dropout: float = 0.0
    target_modules: Literal["all-linear"] | list[str] = "all-linear"

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.r


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    method: Literal["sft", "dpo", "grpo"] = "sft"
    base_model_dir: str
    base_model_name: str | None = None  # the job's ``model``: with from_hf_model, the template base
    # Bring-your-own-model jobs: base_model_dir holds the from_hf_model weights (at hf_model_revision),
    # which must have the template's architecture; template_model_dir is where the template lives.
    from_hf_model: str | None = None
    hf_model_revision: str | None = None
    template_model_dir: str | None = None
    init_from: str | None = None  # checkpoint export to continue from: an adapter dir (LoRA) or a model dir
    # A checkpoint dir of this same job (holds state/): resume exactly. init_from stays set on a
    # resume, because a LoRA job started from a full model still merges onto that model.
    resume_from: str | None = None
    train_file: str
    validation_file: str | None = None
    file_type: Literal["jsonl", "parquet"] = "jsonl"
    output_dir: str
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 mixed precision where the device multiplies bf16 natively, else fp32 (model.py)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # How several processes (torchrun) share the model: "ddp" replicates it on every rank; "fsdp"
    # shards weights, gradients and optimizer state over the ranks (FSDP2), for full fine-tunes too
    # big for one device; "auto" shards full fine-tunes and replicates LoRA (distributed.py).
    sharding: Literal["auto", "ddp", "fsdp"] = "auto"

    lora: LoraSettings | None = LoraSettings()  # None: full fine-tuning
    train_vision: bool = False  # a vision-language model's vision tower and projector train too
    n_epochs: int = 1
    learning_rate: float = 1e-5
    lr_scheduler_type: Literal["linear", "cosine"] = "cosine"
    min_lr_ratio: float = 0.0
    num_cycles: float = 0.5
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    weight_decay: float = 0.0
    batch_size: int | Literal["max"] = "max"
    gradient_accumulation_steps: int = 1
    max_seq_length: int | None = None  # None: the model's context length
    packing: bool = True
    train_on_inputs: bool | Literal["auto"] = "auto"
    n_checkpoints: int = 1  # including the final one
    n_evals: int = 0
    seed: int = 42

    early_stopping_enabled: bool = False
    early_stopping_patience: int = 2
    early_stopping_min_delta: float = 0.0
    early_stopping_warmup_evals: int = 1

    dpo_beta: float = 0.1
    rpo_alpha: float = 0.0
    simpo_gamma: float = 0.0
    dpo_normalize_logratios_by_length: bool = False
    dpo_reference_free: bool = False

    # GRPO (recipes/grpo.py): the grader in OpenAI's schema (graders/schema.py), completions sampled per
    # prompt, the KL coefficient to the reference, the ratio clip range, policy updates per sampled batch,
    # sampling length and temperature; evals every eval_interval steps (0: n_evals spread evenly), each
    # prompt sampled eval_samples times (1: greedily).
    grader: dict[str, Any] | None = None
    grpo_group_size: int = 4
    grpo_beta: float = 0.04
    grpo_epsilon: float = 0.2
    grpo_iterations: int = 1
    grpo_max_new_tokens: int = 128
    grpo_temperature: float = 1.0
    grpo_reasoning_effort: Literal["low", "medium", "high"] | None = None  # a chat template variable (gpt-oss)
    eval_interval: int = 0
    eval_samples: int = 1
    grader_wall_seconds: float = 10.0
    grader_cpu_seconds: int = 5
    grader_memory_mb: int = 1024
    judge_model_dirs: dict[str, str] = {}  # score_model graders' models -> where the worker put them

    wandb_api_key: SecretStr | None = None
    wandb_base_url: str | None = None
    wandb_project_name: str | None = None
    wandb_name: str | None = None
    wandb_entity: str | None = None
    wandb_tags: list[str] = Field(default_factory=list)
    hf_api_token: SecretStr | None = None
    hf_output_repo_name: str | None = None

    @field_serializer("wandb_api_key", "hf_api_token", when_used="json")
    def _reveal_secret(self, value: SecretStr | None) -> str | None:
        # The worker writes this JSON (mode 0600) for the training child, which needs the real
        # values; everything meant to be seen goes through public_dict(), which drops them.
        return value.get_secret_value() if value is not None else None

    @model_validator(mode="after")
    def _check_ranges(self) -> TrainConfig:
        problems = [p for p in _range_problems(self) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.model_validate_json(Path(path).read_text())

    def public_dict(self, **resolved: Any) -> dict[str, Any]:
        """The config as JSON-ready data without secrets, with ``resolved`` values filled in."""
        data = self.model_dump(mode="json", exclude=set(SECRET_FIELDS))
        data.update(resolved)
        return data


def _range_problems(c: TrainConfig) -> list[str | None]:
    lora = c.lora
    early = c.early_stopping_enabled
    return [
        _positive_int("n_epochs", c.n_epochs),
        None if 0 < c.learning_rate <= 1 else f"learning_rate must be in (0, 1]; got {c.learning_rate}",
        None if 0 <= c.min_lr_ratio <= 1 else f"min_lr_ratio must be in [0, 1]; got {c.min_lr_ratio}",
        None if c.num_cycles > 0 else f"num_cycles must be > 0; got {c.num_cycles}",
        None if 0 <= c.warmup_ratio <= 1 else f"warmup_ratio must be in [0, 1]; got {c.warmup_ratio}",
        None if c.max_grad_norm >= 0 else f"max_grad_norm must be >= 0 (0 disables); got {c.max_grad_norm}",
        None if c.weight_decay >= 0 else f"weight_decay must be >= 0; got {c.weight_decay}",
        None if c.batch_size == "max" else _positive_int("batch_size", c.batch_size),
        _positive_int("gradient_accumulation_steps", c.gradient_accumulation_steps),
        None if c.max_seq_length is None else _positive_int("max_seq_length", c.max_seq_length, minimum=2),
        _positive_int("n_checkpoints", c.n_checkpoints),
        None if c.n_evals >= 0 else f"n_evals must be >= 0; got {c.n_evals}",
        None if c.n_evals == 0 or c.validation_file else "n_evals > 0 needs a validation_file; set n_evals to 0",
        None if lora is None else _positive_int("lora.r", lora.r),
        None if lora is None or 0 <= lora.dropout < 1 else f"lora.dropout must be in [0, 1); got {lora.dropout}",
        None if lora is None or lora.lora_alpha > 0 else f"lora.alpha must be > 0; got {lora.alpha}",
        None if lora is None or c.sharding != "fsdp" else
        "sharding 'fsdp' shards full fine-tunes; LoRA trains replicated (set sharding to 'auto' or 'ddp')",
        None if not early or c.validation_file else "early stopping needs a validation_file",
        None if not early else _positive_int("early_stopping_patience", c.early_stopping_patience),
        None if not early or c.early_stopping_min_delta >= 0 else "early_stopping_min_delta must be >= 0",
        None if not early or c.early_stopping_warmup_evals >= 0 else "early_stopping_warmup_evals must be >= 0",
        _early_evals(c),
        None if c.dpo_beta > 0 else f"dpo_beta must be > 0; got {c.dpo_beta}",
        None if c.rpo_alpha >= 0 else f"rpo_alpha must be >= 0; got {c.rpo_alpha}",
        None if c.simpo_gamma >= 0 else f"simpo_gamma must be >= 0; got {c.simpo_gamma}",
        *(_grpo_problems(c) if c.method == "grpo" else []),
    ]


def _grpo_problems(c: TrainConfig) -> list[str | None]:
    from tunery.graders.schema import read_grader

    grader_problems: list[str | None] = ["grpo needs a grader"]
    if c.grader is not None:
        grader_problems = [f"grader: {p}" for p in read_grader(c.grader, judge_models=set(c.judge_model_dirs))[1]]
    return [
        *grader_problems,
        _positive_int("grpo_group_size", c.grpo_group_size, minimum=2),
        None if c.grpo_beta >= 0 else f"grpo_beta must be >= 0; got {c.grpo_beta}",
        None if 0 < c.grpo_epsilon < 1 else f"grpo_epsilon must be in (0, 1); got {c.grpo_epsilon}",
        _positive_int("grpo_iterations", c.grpo_iterations),
        _positive_int("grpo_max_new_tokens", c.grpo_max_new_tokens),
        None if 0 < c.grpo_temperature <= 2 else f"grpo_temperature must be in (0, 2] (at 0 a group's completions "
                                                  f"are all the same: nothing to compare); got {c.grpo_temperature}",
        None if c.eval_interval >= 0 else f"eval_interval must be >= 0; got {c.eval_interval}",
        None if c.eval_interval == 0 or c.validation_file else "eval_interval needs a validation_file",
        _positive_int("eval_samples", c.eval_samples),
        None if c.grader_wall_seconds > 0 else f"grader_wall_seconds must be > 0; got {c.grader_wall_seconds}",
        _positive_int("grader_cpu_seconds", c.grader_cpu_seconds),
        _positive_int("grader_memory_mb", c.grader_memory_mb, minimum=128),
    ]


def _positive_int(name: str, value: int, minimum: int = 1) -> str | None:
    return None if value >= minimum else f"{name} must be >= {minimum}; got {value}"


def _early_evals(c: TrainConfig) -> str | None:
    if not c.early_stopping_enabled:
        return None
    need = c.early_stopping_patience + c.early_stopping_warmup_evals + 1
    if c.n_evals >= need:
        return None
    return f"early stopping needs n_evals >= patience + warmup_evals + 1 = {need}; got n_evals={c.n_evals}"
