"""Together's dialect: turn a ``POST /v1/fine-tunes`` body into a ``JobSpec`` (``tunery.jobspec``),
every default applied from the model's limits, every problem reported at once (``InvalidRequest``
listing them all), inputs checked for ownership and validity. Routes call
``resolve_job_request``; nothing here knows HTTP."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.orm import Session

from tunery.api.schemas.fine_tunes import FinetuneRequest
from tunery.api.schemas.fine_tunes import TrainingType as WireTrainingType
from tunery.errors import InvalidRequest, NotFound
from tunery.graders.schema import read_grader
from tunery.jobspec import (
    DPO,
    GRPO,
    SFT,
    EarlyStopping,
    FullTraining,
    JobSecrets,
    JobSpec,
    LoraTraining,
    LrScheduler,
    LrSchedulerArgs,
    MultimodalParams,
    Parent,
    TrainingMethod,
    TrainingType,
    Wandb,
)
from tunery.models.catalog import ModelCatalog
from tunery.store.db import Database
from tunery.store.files import get_file
from tunery.store.jobs import find_checkpoint, find_job_by_output_name, get_job
from tunery.store.models import File, Job, User
from tunery.store.status import JobStatus

DEFAULT_SEED = 42
MAX_SEED = 2**32 - 1
# Priority orders a user's own queued jobs; the range keeps it from being a way past everyone.
MIN_PRIORITY, MAX_PRIORITY = -100, 100
SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
GRPO_FIELDS = ("grader", "group_size", "kl_coef", "clip_range", "num_iterations", "max_new_tokens", "temperature",
               "eval_interval", "eval_samples")
DPO_FIELDS = ("dpo_beta", "dpo_normalize_logratios_by_length", "dpo_reference_free", "rpo_alpha", "simpo_gamma")


@dataclass
class Problems:
    """Collects every problem with a request; ``raise_if_any`` reports them together."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, param: str, message: str) -> None:
        self.items.append((param, message))

    def check(self, ok: bool, param: str, message: str) -> None:
        if not ok:
            self.add(param, message)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidRequest("; ".join(m for _, m in self.items), param=self.items[0][0])


@dataclass(frozen=True)
class ParentJob:
    """The job and step a new job continues from (``from_checkpoint``)."""

    job: Job
    step: int | None


def resolve_parent(s: Session, ref: str, user: User) -> ParentJob:
    """``JOB_ID``, ``OUTPUT_NAME``, ``JOB_ID:STEP`` or ``OUTPUT_NAME:STEP`` → a completed job of the
    user and an existing checkpoint step (None = final)."""
    name, _, step_text = ref.rpartition(":") if re.search(r":\d+$", ref) else (ref, "", "")
    job = get_job(s, name, user.id) if name.startswith("ft-") else find_job_by_output_name(s, name, user.id)
    if job is None:
        raise NotFound(f'from_checkpoint "{ref}": no fine-tuning job or output model named "{name}"',
                       param="from_checkpoint")
    step = int(step_text) if step_text else None
    if step is None and job.status != JobStatus.COMPLETED:
        raise InvalidRequest(f'from_checkpoint "{ref}": job {job.id} is {job.status}, so it has no final '
                             "model yet; pick an intermediate step with JOB_ID:STEP", param="from_checkpoint")
    if find_checkpoint(s, job.id, job.spec.checkpoint_variant, step) is None:
        raise InvalidRequest(f'from_checkpoint "{ref}": job {job.id} has no checkpoint at step {step}',
                             param="from_checkpoint")
    return ParentJob(job, step)


def base_model_of(s: Session, model_name: str, user: User) -> str:
    """Limits may be asked for a job id or an output name: answer with its base model."""
    if model_name.startswith("ft-"):
        return get_job(s, model_name.split(":")[0], user.id).model
    job = find_job_by_output_name(s, model_name.split(":")[0], user.id)
    return job.model if job is not None else model_name


def _check_file(s: Session, file_id: str, user: User, param: str, problems: Problems) -> File | None:
    try:
        f = get_file(s, user.id, file_id)
    except NotFound:
        problems.add(param, f'{param} "{file_id}" does not exist (upload it with files.upload first)')
        return None
    if f.purpose not in ("fine-tune", "eval"):
        problems.add(param, f'{param} "{file_id}" has purpose "{f.purpose}"; upload it with purpose fine-tune')
    elif f.processing_status != "COMPLETED":
        reason = (f.report or {}).get("error") or "it has not been validated yet"
        problems.add(param, f'{param} "{file_id}" is not a valid dataset ({f.processing_status}): {reason}')
    return f


def _training_type(req: WireTrainingType | None, parent: ParentJob | None, limits: dict[str, Any],
                   problems: Problems) -> TrainingType:
    if req is None and parent is not None:
        return parent.job.spec.training_type
    if req is not None and req.type.lower() == "full":
        problems.check(bool(limits.get("full_training")), "training_type",
                       f"Full training is not supported for the selected model ({limits['model_name']}).")
        return FullTraining()
    lora = limits["lora_training"]
    r = req.lora_r if req and req.lora_r is not None else lora["default_rank"]
    alpha = req.lora_alpha if req and req.lora_alpha is not None else 2 * r
    dropout = req.lora_dropout if req and req.lora_dropout is not None else 0.0
    modules = (req.lora_trainable_modules if req and req.lora_trainable_modules else "all-linear").strip()
    problems.check(1 <= r <= lora["max_rank"], "lora_r", f"lora_r must be between 1 and {lora['max_rank']}; got {r}")
    problems.check(alpha > 0, "lora_alpha", f"lora_alpha must be positive; got {alpha}")
    problems.check(0 <= dropout < 1, "lora_dropout", "LoRA dropout must be in [0, 1) range.")
    if modules != "all-linear":
        unknown = [m for m in modules.split(",") if m.strip() not in lora["target_modules"]]
        problems.check(not unknown, "lora_trainable_modules",
                       f"lora_trainable_modules has unknown modules {unknown}; use all-linear or a comma list "
                       f"of {', '.join(lora['target_modules'])}")
    return LoraTraining(lora_r=r, lora_alpha=alpha, lora_dropout=dropout, lora_trainable_modules=modules)


def _training_method(req: FinetuneRequest, problems: Problems) -> TrainingMethod:
    m = req.training_method
    method = m.method.lower()
    if method not in ("sft", "dpo", "grpo"):
        problems.add("training_method", f'training_method must be one of sft, dpo, grpo; got "{m.method}"')
        return SFT()
    for name in GRPO_FIELDS if method != "grpo" else ():
        problems.check(getattr(m, name) is None, f"training_method.{name}",
                       f"{name} is only supported for GRPO training")
    if method == "grpo":
        return _grpo(req, problems)
    if method == "sft":
        for name in DPO_FIELDS:
            problems.check(getattr(m, name) in (None, False, 0, 0.0), f"training_method.{name}",
                           f"{name} is only supported for DPO training")
        toi = m.train_on_inputs if m.train_on_inputs is not None else req.train_on_inputs
        return SFT(train_on_inputs="auto" if toi is None else toi)
    problems.check(m.train_on_inputs is None and req.train_on_inputs is None, "train_on_inputs",
                   "train_on_inputs is only supported for SFT training")
    beta = 0.1 if not m.dpo_beta else m.dpo_beta
    rpo, gamma = m.rpo_alpha or 0.0, m.simpo_gamma or 0.0
    problems.check(beta > 0, "dpo_beta", f"dpo_beta must be positive; got {beta}")
    problems.check(rpo >= 0, "rpo_alpha", f"rpo_alpha should be non-negative (got {rpo})")
    problems.check(gamma >= 0, "simpo_gamma", f"simpo_gamma should be non-negative (got {gamma})")
    simpo = gamma > 0
    return DPO(dpo_beta=beta, rpo_alpha=rpo, simpo_gamma=gamma,
               dpo_normalize_logratios_by_length=bool(m.dpo_normalize_logratios_by_length) or simpo,
               dpo_reference_free=bool(m.dpo_reference_free) or simpo)


def _grpo(req: FinetuneRequest, problems: Problems) -> GRPO:
    m = req.training_method
    for name in DPO_FIELDS:
        problems.check(getattr(m, name) in (None, False, 0, 0.0), f"training_method.{name}",
                       f"{name} is only supported for DPO training")
    problems.check(m.train_on_inputs is None and req.train_on_inputs is None, "train_on_inputs",
                   "train_on_inputs is only supported for SFT training")
    if m.grader is None:
        problems.add("training_method.grader", "GRPO needs a grader (OpenAI's grader schema, e.g. "
                                               '{"type": "string_check", ...})')
    else:
        for problem in read_grader(m.grader)[1]:
            problems.add("training_method.grader", f"grader: {problem}")
    defaults = GRPO(grader={})
    values = {name: getattr(defaults, name) if getattr(m, name) is None else getattr(m, name) for name in GRPO_FIELDS
              if name != "grader"}
    checks = [("group_size", values["group_size"] >= 2, "group_size must be >= 2"),
              ("kl_coef", values["kl_coef"] >= 0, "kl_coef must be >= 0"),
              ("clip_range", 0 < values["clip_range"] < 1, "clip_range must be in (0, 1)"),
              ("num_iterations", values["num_iterations"] >= 1, "num_iterations must be >= 1"),
              ("max_new_tokens", values["max_new_tokens"] >= 1, "max_new_tokens must be >= 1"),
              ("temperature", 0 < values["temperature"] <= 2,
               "temperature must be in (0, 2] (at 0 a group's completions are all the same: nothing to compare)"),
              ("eval_interval", values["eval_interval"] >= 0, "eval_interval must be >= 0"),
              ("eval_samples", values["eval_samples"] >= 1, "eval_samples must be >= 1")]
    for name, ok, message in checks:
        problems.check(ok, f"training_method.{name}", f"{message}; got {values[name]}")
    problems.check(values["eval_interval"] == 0 or bool(req.validation_file), "training_method.eval_interval",
                   f"eval_interval={values['eval_interval']} needs a validation_file to evaluate on")
    problems.check(not req.early_stopping_enabled, "early_stopping_enabled",
                   "early stopping watches the validation loss, which GRPO does not have; turn it off")
    return GRPO(grader=m.grader or {}, **values)


@dataclass(frozen=True)
class Schedule:
    """The optimisation settings of a request, resolved."""

    learning_rate: float
    lr_scheduler: LrScheduler
    warmup_ratio: float
    max_grad_norm: float
    weight_decay: float
    gradient_accumulation_steps: int
    max_seq_length: int
    n_epochs: int
    n_checkpoints: int
    n_evals: int


def _schedule(req: FinetuneRequest, limits: dict[str, Any], method: str, problems: Problems) -> Schedule:
    sched = req.lr_scheduler
    args = sched.lr_scheduler_args
    p = problems
    p.check(1 <= req.n_epochs <= limits["max_num_epochs"], "n_epochs",
            f"n_epochs must be between 1 and {limits['max_num_epochs']}; got {req.n_epochs}")
    p.check(1 <= req.n_checkpoints <= limits["max_num_checkpoints"], "n_checkpoints",
            f"n_checkpoints must be between 1 and {limits['max_num_checkpoints']}; got {req.n_checkpoints}")
    p.check(0 <= req.n_evals <= limits["max_num_evals"], "n_evals",
            f"n_evals must be between 0 and {limits['max_num_evals']}; got {req.n_evals}")
    p.check(limits["min_learning_rate"] <= req.learning_rate <= limits["max_learning_rate"], "learning_rate",
            f"learning_rate must be in [{limits['min_learning_rate']}, {limits['max_learning_rate']}]; "
            f"got {req.learning_rate}")
    p.check(0 <= req.warmup_ratio <= 1, "warmup_ratio",
            f"Warmup ratio should be between 0 and 1 (got {req.warmup_ratio})")
    p.check(0 <= args.min_lr_ratio <= 1, "lr_scheduler.lr_scheduler_args.min_lr_ratio",
            f"Min learning rate ratio should be between 0 and 1 (got {args.min_lr_ratio})")
    if sched.lr_scheduler_type == "cosine":
        p.check(args.num_cycles > 0, "lr_scheduler.lr_scheduler_args.num_cycles",
                f"Number of cycles should be greater than 0 (got {args.num_cycles})")
    p.check(req.max_grad_norm >= 0, "max_grad_norm",
            f"Max gradient norm should be non-negative (got {req.max_grad_norm})")
    p.check(req.weight_decay >= 0, "weight_decay", f"Weight decay should be non-negative (got {req.weight_decay})")
    gas = req.gradient_accumulation_steps or limits["default_gradient_accumulation_steps"]
    p.check(1 <= gas <= 1024, "gradient_accumulation_steps",
            f"gradient_accumulation_steps must be between 1 and 1024; got {gas}")
    max_seq_limit = limits["max_seq_length_dpo" if method == "dpo" else "max_seq_length_sft"]
    max_seq = req.max_seq_length or max_seq_limit
    p.check(max_seq >= limits["min_max_seq_length"], "max_seq_length",
            f"Maximum sequence length must be greater than {limits['min_max_seq_length']}; got {max_seq}")
    p.check(max_seq <= max_seq_limit, "max_seq_length",
            f"Maximum sequence length for {method.upper()} training must be less than {max_seq_limit}; got {max_seq}")
    cosine = sched.lr_scheduler_type == "cosine"
    lr_scheduler = LrScheduler(lr_scheduler_type=sched.lr_scheduler_type, lr_scheduler_args=LrSchedulerArgs(
        min_lr_ratio=args.min_lr_ratio, num_cycles=args.num_cycles if cosine else None))
    return Schedule(learning_rate=req.learning_rate, lr_scheduler=lr_scheduler, warmup_ratio=req.warmup_ratio,
                    max_grad_norm=req.max_grad_norm, weight_decay=req.weight_decay, gradient_accumulation_steps=gas,
                    max_seq_length=max_seq, n_epochs=req.n_epochs, n_checkpoints=req.n_checkpoints,
                    n_evals=req.n_evals)


def _batch_size(req: FinetuneRequest, limits: dict[str, Any], training_type: TrainingType, method: str,
                problems: Problems) -> int | Literal["max"]:
    if req.batch_size == "max":
        return "max"
    bounds = limits["lora_training"] if training_type.type == "Lora" else (limits.get("full_training") or {})
    hi = bounds.get("max_batch_size_dpo" if method == "dpo" else "max_batch_size", 1)
    lo = bounds.get("min_batch_size", 1)
    problems.check(req.batch_size <= hi, "batch_size",
                   f"Requested batch size of {req.batch_size} is higher than the maximum allowed value of {hi}.")
    problems.check(req.batch_size >= lo, "batch_size",
                   f"Requested batch size of {req.batch_size} is lower than the minimum allowed value of {lo}.")
    return req.batch_size


def _early_stopping(req: FinetuneRequest, has_validation: bool, problems: Problems) -> EarlyStopping:
    patience = 2 if req.early_stopping_patience is None else req.early_stopping_patience
    warmup = 1 if req.early_stopping_warmup_evals is None else req.early_stopping_warmup_evals
    delta = 0.0 if req.early_stopping_min_delta is None else req.early_stopping_min_delta
    if req.early_stopping_enabled:
        problems.check(patience >= 1, "early_stopping_patience",
                       f"early_stopping_patience must be >= 1 (got {patience})")
        problems.check(warmup >= 0, "early_stopping_warmup_evals",
                       f"early_stopping_warmup_evals must be >= 0 (got {warmup})")
        problems.check(delta >= 0, "early_stopping_min_delta", f"early_stopping_min_delta must be >= 0 (got {delta})")
        problems.check(has_validation, "validation_file",
                       "Early stopping requires a validation file (validation_file).")
        need = patience + warmup + 1
        problems.check(req.n_evals >= need, "n_evals",
                       f"Early stopping requires n_evals >= patience + warmup_evals + 1 = {need} "
                       f"(got n_evals={req.n_evals})")
    return EarlyStopping(enabled=req.early_stopping_enabled, patience=patience, warmup_evals=warmup, min_delta=delta)


def _check_formats(train: File | None, val: File | None, method: str, problems: Problems) -> None:
    for f, param in ((train, "training_file"), (val, "validation_file")):
        if f is None or f.processing_status != "COMPLETED":
            continue
        is_prompts = f.dataset_format == "reinforcement"
        if (method == "grpo") != is_prompts:
            problems.add(param, f'GRPO trains on reinforcement prompts (messages ending with the user\'s turn, plus '
                                f'the fields the grader reads); {param} "{f.id}" is {f.dataset_format}'
                         if method == "grpo" else f'{param} "{f.id}" holds reinforcement prompts (no answers to '
                                                  "learn from); use training_method grpo with a grader for it")
            continue
        is_pref = f.dataset_format == "preference"
        if method == "dpo" and not is_pref:
            problems.add(param, f'DPO needs a preference dataset (input, preferred_output, non_preferred_output); '
                                f'{param} "{f.id}" is {f.dataset_format}')
        if method == "sft" and is_pref:
            problems.add(param, f'{param} "{f.id}" is a preference dataset; use training_method dpo for it')


def _multimodal_params(req: FinetuneRequest, model: str, limits: dict[str, Any], why_no_vision: str | None,
                       train: File | None, val: File | None, problems: Problems) -> MultimodalParams | None:
    """The settings of a vision-language model's job, else None; images or ``train_vision`` for a
    text model, or for a vision-language model tunery cannot train on images (``why_no_vision``), are
    refused (they would be ignored)."""
    train_vision = bool(req.multimodal_params and req.multimodal_params.train_vision)
    if limits["supports_vision"]:
        return MultimodalParams(train_vision=train_vision)
    if train_vision:
        problems.add("multimodal_params",
                     f"Vision encoder training is not supported for the non-multimodal model `{model}`")
    for f, param in ((train, "training_file"), (val, "validation_file")):
        if f is not None and (f.report or {}).get("dataset_is_multimodal"):
            because = f": {why_no_vision}" if why_no_vision else ""
            problems.add(param, f'{param} "{f.id}" has images, but `{model}` does not take images '
                                f"(supports_vision is false{because}); fine-tune a vision-language model on it, "
                                "such as tunery/tiny-vlm")
    return None


def _numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """``(dotted path, value)`` for every number in a request's data."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}" if path else key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def _check_numbers(req: FinetuneRequest, problems: Problems) -> None:
    """Every number finite (JSON's NaN and Infinity are not numbers a job can use), and the ones
    stored as given within their range."""
    for path, number in _numbers(req.model_dump()):
        problems.check(math.isfinite(number), path, f"{path} must be a finite number; got {number}")
    problems.check(MIN_PRIORITY <= req.priority <= MAX_PRIORITY, "priority",
                   f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}; got {req.priority}")
    if req.random_seed is not None:
        problems.check(0 <= req.random_seed <= MAX_SEED, "random_seed",
                       f"random_seed must be between 0 and {MAX_SEED}; got {req.random_seed}")


@dataclass(frozen=True)
class ResolvedJob:
    spec: JobSpec
    secrets: JobSecrets
    training_file: File
    validation_file: File | None


def model_limits(catalog: ModelCatalog, model: str, registered: Mapping[str, str], problems: Problems,
                 ) -> dict[str, Any]:
    """The model's limits. Every other check needs them: when the model is unknown, raise at once
    with what is known so far, the model first."""
    try:
        return catalog.limits(model, registered)
    except NotFound as e:
        problems.items.insert(0, ("model", e.message))
        problems.raise_if_any()
        raise


def resolve_job_request(db: Database, req: FinetuneRequest, user: User, catalog: ModelCatalog,
                        registered: Mapping[str, str], problems: Problems | None = None) -> ResolvedJob:
    """Validate ``req`` completely and resolve every default; raise one ``InvalidRequest`` listing
    every problem (``problems``: those another dialect found in its own fields, reported with them).
    The parent job and the files are read in one short read transaction; the model look-ups after
    it (a hub model's config and tokenizer come over the network) hold no connection."""
    p = problems if problems is not None else Problems()
    given = len(p.items)
    if req.model and req.from_checkpoint:
        p.add("model", "You must specify either a model or a checkpoint to start a job from, not both")
    if not req.model and not req.from_checkpoint:
        p.add("model", "You must specify either a model or a checkpoint")
    if req.from_hf_model and req.from_checkpoint:
        p.add("from_hf_model", "You must specify either a Hugging Face Hub model or a previous checkpoint "
                               "from Together to start a job from, not both")
    if len(p.items) > given:  # nothing below can be checked without knowing what the job starts from
        p.raise_if_any()
    with db.read() as s:
        parent = resolve_parent(s, req.from_checkpoint, user) if req.from_checkpoint else None
        train = _check_file(s, req.training_file, user, "training_file", p)
        val = _check_file(s, req.validation_file, user, "validation_file", p) if req.validation_file else None
    model = parent.job.model if parent else str(req.model)
    limits = model_limits(catalog, model, registered, p)
    if req.from_hf_model:  # its config and tokenizer now; the job fetches the weights
        try:
            catalog.resolve(req.from_hf_model, registered, revision=req.hf_model_revision, token=req.hf_api_token,
                            weights=False)
        except NotFound as e:
            p.add("from_hf_model", e.message)
    method = _training_method(req, p)
    training_type = _training_type(req.training_type, parent, limits, p)
    if parent and training_type.type != parent.job.spec.training_type.type:
        p.add("training_type", f"from_checkpoint continues a {parent.job.spec.training_type.type} job; "
                               "the training type cannot change")
    schedule = _schedule(req, limits, method.method, p)
    batch = _batch_size(req, limits, training_type, method.method, p)
    stopping = _early_stopping(req, val is not None, p)
    _check_formats(train, val, method.method, p)
    if req.n_evals > 0 and val is None and not req.validation_file:
        p.add("n_evals", f"n_evals={req.n_evals} needs a validation_file to evaluate on")
    if req.suffix is not None:
        p.check(bool(SUFFIX_RE.match(req.suffix)), "suffix",
                "suffix must be 1-40 characters of letters, digits, '-', '_' or '.', starting with a letter or digit")
    why_no_vision = None if limits["supports_vision"] else catalog.why_no_vision(model, registered)
    multimodal = _multimodal_params(req, model, limits, why_no_vision, train, val, p)
    _check_numbers(req, p)
    p.raise_if_any()
    assert train is not None
    wandb_key = req.wandb_key or req.wandb_api_key
    spec = JobSpec(
        model=model, training_file=train.id, validation_file=val.id if val else None,
        from_checkpoint=req.from_checkpoint or None,
        parent=Parent(job_id=parent.job.id, step=parent.step) if parent else None,
        from_hf_model=req.from_hf_model, hf_model_revision=req.hf_model_revision, suffix=req.suffix,
        hf_output_repo_name=req.hf_output_repo_name,
        wandb=Wandb(project_name=req.wandb_project_name or ("together" if wandb_key else None), name=req.wandb_name,
                    entity=req.wandb_entity, base_url=req.wandb_base_url),
        training_type=training_type, training_method=method,
        multimodal_params=multimodal,
        n_epochs=schedule.n_epochs, n_checkpoints=schedule.n_checkpoints, n_evals=schedule.n_evals,
        batch_size=batch, gradient_accumulation_steps=schedule.gradient_accumulation_steps,
        learning_rate=schedule.learning_rate, lr_scheduler=schedule.lr_scheduler, warmup_ratio=schedule.warmup_ratio,
        max_grad_norm=schedule.max_grad_norm, weight_decay=schedule.weight_decay,
        max_seq_length=schedule.max_seq_length, packing=req.packing,
        random_seed=DEFAULT_SEED if req.random_seed is None else req.random_seed, early_stopping=stopping,
    )
    return ResolvedJob(spec, JobSecrets(wandb_key=wandb_key, hf_api_token=req.hf_api_token), train, val)
