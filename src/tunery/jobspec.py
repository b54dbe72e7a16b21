"""``JobSpec``: what a fine-tuning job is asked to do, fully resolved — one typed, versioned value.

Every front door turns its own request shape into a JobSpec and nothing else: Together's
``POST /v1/fine-tunes`` does it in ``tunery.api.job_requests`` (defaults from the model's limits,
every problem reported at once); another dialect (OpenAI's fine-tuning API) parses its wire shape
and produces the same JobSpec. From there the path is one way::

    request ──dialect resolver──► JobSpec ──jobs.create──► jobs.spec (a validated JSON column)
                                    │
                                    ├──► wire formats and the dashboard read it by attribute
                                    └──► JobSpec.train_config(...) ──► training.config.TrainConfig

What the job *learns* while it runs (the batch size "max" resolved to, token counts, the price)
is not part of the spec: those are columns of the job row, written by the worker.

How to add a field (a new hyperparameter or method option):

1. Add it here with a default that means "as before" (``None``/off), so every stored spec stays
   valid without a migration. Group it with its kind: a training-method option goes on its method
   class (``SFT``, ``DPO``, …), a LoRA option on ``LoraTraining``, the rest on ``JobSpec``.
2. Set it in each dialect's resolver that can ask for it (``api/job_requests.py``, …).
3. Pass it on in ``JobSpec.train_config`` if training uses it (add it to ``TrainConfig`` too), and
   show it in the wire format(s) that have it.

A new training method is one more class in the ``TrainingMethod`` union with its own
``method`` literal. Renaming or removing a field, or changing what a stored value means, is a new
``SPEC_VERSION`` with an Alembic migration that rewrites the stored specs: readers only ever see
the current version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from tunery.training.config import LoraSettings, TrainConfig

SPEC_VERSION = 1


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- what is trained: all weights, or a LoRA adapter -------------------------------------------------

class FullTraining(_Part):
    type: Literal["Full"] = "Full"


class LoraTraining(_Part):
    """A LoRA adapter. Field names are Together's, so the wire format is this object as it is."""

    type: Literal["Lora"] = "Lora"
    lora_r: int
    lora_alpha: int
    lora_dropout: float = 0.0
    # "all-linear", or a comma-separated list of module names ("q_proj,v_proj").
    lora_trainable_modules: str = "all-linear"

    @property
    def target_modules(self) -> Literal["all-linear"] | list[str]:
        if self.lora_trainable_modules == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.lora_trainable_modules.split(",") if m.strip()]


TrainingType = Annotated[FullTraining | LoraTraining, Field(discriminator="type")]


# -- how it is trained: one class per method ----------------------------------------------------------

class SFT(_Part):
    method: Literal["sft"] = "sft"
    train_on_inputs: bool | Literal["auto"] = "auto"


class DPO(_Part):
    method: Literal["dpo"] = "dpo"
    dpo_beta: float = 0.1
    rpo_alpha: float = 0.0
    simpo_gamma: float = 0.0
    dpo_normalize_logratios_by_length: bool = False
    dpo_reference_free: bool = False


class GRPO(_Part):
    """Reinforcement fine-tuning: completions sampled per prompt and scored by ``grader`` (OpenAI's
    grader schema, checked by ``tunery.graders``); see ``training/recipes/grpo.py``."""

    method: Literal["grpo"] = "grpo"
    grader: dict[str, Any]
    group_size: int = 4
    kl_coef: float = 0.04
    clip_range: float = 0.2
    num_iterations: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    eval_interval: int = 0
    eval_samples: int = 1
    # Rendered into the prompts by chat templates that take it (gpt-oss's); None: the template's default.
    reasoning_effort: Literal["low", "medium", "high"] | None = None

    @property
    def judge_models(self) -> set[str]:
        """The models its score_model graders name (the worker makes them available)."""
        graders = self.grader.get("graders") if self.grader.get("type") == "multi" else None
        parts = list(graders.values()) if isinstance(graders, dict) else [graders or self.grader]
        return {str(g["model"]) for g in parts if isinstance(g, dict) and g.get("type") == "score_model"}


TrainingMethod = Annotated[SFT | DPO | GRPO, Field(discriminator="method")]


# -- the rest, grouped --------------------------------------------------------------------------------

class LrSchedulerArgs(_Part):
    min_lr_ratio: float = 0.0
    num_cycles: float | None = None  # cosine only


class LrScheduler(_Part):
    lr_scheduler_type: Literal["linear", "cosine"] = "cosine"
    lr_scheduler_args: LrSchedulerArgs = LrSchedulerArgs()


class EarlyStopping(_Part):
    enabled: bool = False
    patience: int = 2
    min_delta: float = 0.0
    warmup_evals: int = 1


class Wandb(_Part):
    """Where the job logs to Weights & Biases (the key itself is a secret, see ``JobSecrets``)."""

    project_name: str | None = None
    name: str | None = None
    entity: str | None = None
    base_url: str | None = None
    tags: tuple[str, ...] = ()


class MultimodalParams(_Part):
    train_vision: bool = False


class Parent(_Part):
    """The completed job (and checkpoint step; None = its final model) a job continues from."""

    job_id: str
    step: int | None = None


class JobSpec(_Part):
    """What a job is asked to do, every default resolved. See the module docstring for the path
    it takes and how to add a field."""

    version: Literal[1] = 1  # SPEC_VERSION
    # Inputs: the base model (the template architecture when from_hf_model is set), the data and
    # where to start from.
    model: str
    # The alias the request named the model by (``tunery models alias``); OpenAI's dialect shows it.
    model_alias: str | None = None
    training_file: str
    validation_file: str | None = None
    from_checkpoint: str | None = None  # as the user wrote it; ``parent`` is what it resolved to
    parent: Parent | None = None
    from_hf_model: str | None = None
    hf_model_revision: str | None = None
    # Outputs: the name's suffix and where else the model goes.
    suffix: str | None = None
    hf_output_repo_name: str | None = None
    wandb: Wandb = Wandb()
    # What and how to train.
    training_type: TrainingType
    training_method: TrainingMethod
    multimodal_params: MultimodalParams | None = None
    n_epochs: int
    n_checkpoints: int
    n_evals: int
    batch_size: int | Literal["max"]
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler: LrScheduler
    warmup_ratio: float
    max_grad_norm: float
    weight_decay: float
    max_seq_length: int
    packing: bool
    random_seed: int
    early_stopping: EarlyStopping = EarlyStopping()
    # The user's own key-value pairs (OpenAI's job metadata): shown back and filterable, never used.
    metadata: dict[str, str] | None = None

    @property
    def lora(self) -> LoraTraining | None:
        """The adapter's settings, or None for full fine-tuning."""
        return self.training_type if isinstance(self.training_type, LoraTraining) else None

    @property
    def is_lora(self) -> bool:
        return self.lora is not None

    @property
    def checkpoint_variant(self) -> Literal["adapter", "model"]:
        """The stored artifact another job continues from: the adapter of a LoRA job, else the model."""
        return "adapter" if self.is_lora else "model"

    def train_config(self, job_id: str, inputs: LocalInputs, secrets: JobSecrets) -> TrainConfig:
        """The training child's config: this spec plus where the worker put the inputs."""
        lora, method, sched = self.lora, self.training_method, self.lr_scheduler
        dpo = method if isinstance(method, DPO) else DPO()  # its defaults are TrainConfig's
        grpo = _grpo_settings(method, inputs) if isinstance(method, GRPO) else {}
        return TrainConfig(
            job_id=job_id, method=method.method, base_model_dir=str(inputs.base_model_dir),
            base_model_name=self.model, from_hf_model=self.from_hf_model, hf_model_revision=self.hf_model_revision,
            template_model_dir=_text(inputs.template_model_dir), init_from=_text(inputs.init_from),
            resume_from=_text(inputs.resume_from), train_file=str(inputs.train_file),
            validation_file=_text(inputs.validation_file), file_type=inputs.file_type,
            output_dir=str(inputs.output_dir),
            train_vision=self.multimodal_params is not None and self.multimodal_params.train_vision,
            lora=None if lora is None else LoraSettings(r=lora.lora_r, alpha=lora.lora_alpha,
                                                        dropout=lora.lora_dropout,
                                                        target_modules=lora.target_modules),
            n_epochs=self.n_epochs, learning_rate=self.learning_rate, lr_scheduler_type=sched.lr_scheduler_type,
            min_lr_ratio=sched.lr_scheduler_args.min_lr_ratio,
            num_cycles=sched.lr_scheduler_args.num_cycles if sched.lr_scheduler_args.num_cycles is not None else 0.5,
            warmup_ratio=self.warmup_ratio, max_grad_norm=self.max_grad_norm, weight_decay=self.weight_decay,
            batch_size=self.batch_size, gradient_accumulation_steps=self.gradient_accumulation_steps,
            max_seq_length=self.max_seq_length, packing=self.packing,
            train_on_inputs=method.train_on_inputs if isinstance(method, SFT) else "auto",
            n_checkpoints=self.n_checkpoints, n_evals=self.n_evals, seed=self.random_seed,
            early_stopping_enabled=self.early_stopping.enabled,
            early_stopping_patience=self.early_stopping.patience,
            early_stopping_min_delta=self.early_stopping.min_delta,
            early_stopping_warmup_evals=self.early_stopping.warmup_evals,
            dpo_beta=dpo.dpo_beta, rpo_alpha=dpo.rpo_alpha, simpo_gamma=dpo.simpo_gamma,
            dpo_normalize_logratios_by_length=dpo.dpo_normalize_logratios_by_length,
            dpo_reference_free=dpo.dpo_reference_free,
            wandb_api_key=_secret(secrets.wandb_key), wandb_base_url=self.wandb.base_url,
            wandb_project_name=self.wandb.project_name, wandb_name=self.wandb.name, wandb_entity=self.wandb.entity,
            wandb_tags=list(self.wandb.tags),
            hf_api_token=_secret(secrets.hf_api_token), hf_output_repo_name=self.hf_output_repo_name, **grpo,
        )


class JobSecrets(BaseModel):
    """A job's credentials: stored apart from the spec (never shown, cleared when the job ends)."""

    model_config = ConfigDict(extra="ignore")
    wandb_key: str | None = None
    hf_api_token: str | None = None


@dataclass(frozen=True)
class LocalInputs:
    """Where the worker put a job's inputs on its machine."""

    base_model_dir: Path
    train_file: Path
    file_type: Literal["jsonl", "parquet"]
    output_dir: Path
    validation_file: Path | None = None
    init_from: Path | None = None  # the parent checkpoint's export
    resume_from: Path | None = None  # this job's own checkpoint, after a restart
    template_model_dir: Path | None = None  # with from_hf_model: the job's model, whose architecture it must have
    judge_model_dirs: dict[str, Path] = field(default_factory=dict)  # GRPO's score_model judges


def _grpo_settings(method: GRPO, inputs: LocalInputs) -> dict[str, Any]:
    return {"grader": method.grader, "grpo_group_size": method.group_size, "grpo_beta": method.kl_coef,
            "grpo_epsilon": method.clip_range, "grpo_iterations": method.num_iterations,
            "grpo_max_new_tokens": method.max_new_tokens, "grpo_temperature": method.temperature,
            "eval_interval": method.eval_interval, "eval_samples": method.eval_samples,
            "grpo_reasoning_effort": method.reasoning_effort,
            "judge_model_dirs": {name: str(path) for name, path in inputs.judge_model_dirs.items()}}


def _secret(value: str | None) -> SecretStr | None:
    return None if value is None else SecretStr(value)


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
