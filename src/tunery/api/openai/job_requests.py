"""OpenAI's dialect: turn a ``POST /v1/fine_tuning/jobs`` body into the same ``JobSpec`` Together's
route makes, by way of Together's resolver (``tunery.api.job_requests``), so both dialects share every
default, limit and input check.

What OpenAI's request says, and what it becomes:

    model                  the model, or the open model an operator's alias stands for
                           (``tunery models alias``); the alias stays the job's name for it
    training_file,         as they are (files uploaded with purpose fine-tune)
    validation_file
    method / hyperparameters  supervised → SFT, dpo → DPO, reinforcement → GRPO (its grader, and
                           compute_multiplier → completions per prompt, eval_interval, eval_samples,
                           reasoning_effort → the chat template's ``reasoning_effort``); "auto" values
                           resolved per model and dataset size (``hyperparameters.py``)
    suffix                 up to 64 of A-Z a-z 0-9 . _ - (it becomes part of ``ft:…`` names)
    seed                   random_seed; a random one when not given, shown as the job's seed
    metadata               kept on the job, shown back and filterable in the list
    integrations (wandb)   the W&B run's project, entity, name and tags; the W&B key is the server's
                           (``TUNERY_WANDB_API_KEY``), as OpenAI keeps it per organisation

and what OpenAI leaves to the service: a LoRA adapter of the model's default rank, no packing (so a
step is ``batch_size`` examples, as OpenAI counts them), a checkpoint and — with a validation file — a
full validation pass at the end of every epoch.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from tunery.api.job_requests import Problems, ResolvedJob, model_limits, resolve_job_request
from tunery.api.openai import hyperparameters as hp
from tunery.api.openai.schemas import Hyperparameters, JobCreateRequest, ReinforcementHyperparameters
from tunery.api.schemas.fine_tunes import FinetuneRequest, TrainingMethod
from tunery.errors import NotFound
from tunery.jobspec import GRPO, JobSpec, Wandb
from tunery.models.catalog import ModelCatalog
from tunery.settings import Settings
from tunery.store.db import Database
from tunery.store.files import get_file
from tunery.store.models import User

SUFFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPENAI_TAGS = ("openai/finetune",)
MAX_EPOCHS = 50  # OpenAI's documented range for a given n_epochs is 1 to 50


@dataclass
class OpenAIProblems(Problems):
    """Problems named as OpenAI's request names them: Together's resolver reports the fields of the
    request this dialect made for it (``n_epochs``, ``training_method.grader`` …); each is renamed to
    the OpenAI param it came from, with how the value was derived where it was (``names``)."""

    names: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, param: str, message: str) -> None:
        ours, how = self.names.get(param, (param, ""))
        if ours != param and not message.startswith(ours.rpartition(".")[2]):
            message = f"{ours}: {message}"
        super().add(ours, f"{message} ({how})" if how else message)


def hyperparameters_path(req: JobCreateRequest) -> str:
    """Where the request gave its hyperparameters: under its method, or at the top level (deprecated)."""
    kind = req.method.type if req.method else "supervised"
    given = getattr(req.method, kind) if req.method else None
    if (given is None or given.hyperparameters is None) and req.hyperparameters is not None:
        return "hyperparameters"
    return f"method.{kind}.hyperparameters" if req.method else "hyperparameters"


def together_names(req: JobCreateRequest) -> dict[str, tuple[str, str]]:
    """Together's field → (the OpenAI param it was made from, how), for every field this dialect sets."""
    kind = req.method.type if req.method else "supervised"
    hyper = hyperparameters_path(req)
    base = hp.BASE_LEARNING_RATE[kind]
    rl = "method.reinforcement"
    return {
        "n_epochs": (f"{hyper}.n_epochs", ""),
        "n_checkpoints": (f"{hyper}.n_epochs", "a checkpoint per epoch"),
        "n_evals": (f"{hyper}.n_epochs", "a validation pass per epoch"),
        "batch_size": (f"{hyper}.batch_size", ""),
        "learning_rate": (f"{hyper}.learning_rate_multiplier",
                          f"the learning rate is {base:g} × learning_rate_multiplier"),
        "dpo_beta": ("method.dpo.hyperparameters.beta", ""),
        "training_method.dpo_beta": ("method.dpo.hyperparameters.beta", ""),
        "training_method.grader": (f"{rl}.grader", ""),
        "training_method.group_size": (f"{rl}.hyperparameters.compute_multiplier",
                                       f"completions per prompt are {hp.BASE_GROUP_SIZE} × compute_multiplier"),
        "training_method.eval_interval": (f"{rl}.hyperparameters.eval_interval", ""),
        "training_method.eval_samples": (f"{rl}.hyperparameters.eval_samples", ""),
        "random_seed": ("seed", ""),
    }


def _method(req: JobCreateRequest, problems: Problems) -> tuple[hp.Method, Hyperparameters]:
    """The method and its hyperparameters, from ``method`` or the deprecated top-level ``hyperparameters``."""
    method = req.method
    kind: hp.Method = method.type if method else "supervised"
    given = getattr(method, kind) if method else None
    for other in ("supervised", "dpo", "reinforcement"):
        if method is not None and other != kind and getattr(method, other) is not None:
            problems.add(f"method.{other}", f"method.{other} is set, but method.type is {kind}")
    inner = given.hyperparameters if given is not None else None
    if inner is not None and req.hyperparameters is not None:
        problems.add("hyperparameters", f"give hyperparameters under method.{kind}.hyperparameters or at the top "
                                        "level (deprecated), not both")
    if kind != "supervised" and inner is None and req.hyperparameters is not None:
        problems.add("hyperparameters", f"{kind} hyperparameters go under method.{kind}.hyperparameters")
    if kind == "reinforcement":
        if given is None:
            problems.add("method.reinforcement", 'method.type reinforcement needs method.reinforcement with a grader '
                                                 '({"grader": {"type": "string_check", ...}})')
        return kind, inner or ReinforcementHyperparameters()
    return kind, inner or req.hyperparameters or Hyperparameters()


def _reinforcement(req: JobCreateRequest, given: Hyperparameters, problems: Problems) -> TrainingMethod:
    """OpenAI's reinforcement method as Together's GRPO request; its ranges and grader are checked there."""
    assert isinstance(given, ReinforcementHyperparameters)
    group = hp.group_size(given.compute_multiplier)
    most = hp.MAX_GROUP_SIZE / hp.BASE_GROUP_SIZE
    problems.check(group <= hp.MAX_GROUP_SIZE, "method.reinforcement.hyperparameters.compute_multiplier",
                   f"compute_multiplier must be at most {most:g} ({hp.MAX_GROUP_SIZE} completions per prompt); "
                   f"got {given.compute_multiplier}")
    grader = req.method.reinforcement.grader if req.method and req.method.reinforcement else {}
    return TrainingMethod(method="grpo", grader=grader, group_size=group,
                          eval_interval=None if given.eval_interval == "auto" else given.eval_interval,
                          eval_samples=None if given.eval_samples == "auto" else given.eval_samples)


def _with_reasoning_effort(spec: JobSpec, given: Hyperparameters) -> JobSpec:
    effort = getattr(given, "reasoning_effort", "default")
    if not isinstance(spec.training_method, GRPO) or effort == "default":
        return spec
    return spec.model_copy(update={"training_method": spec.training_method.model_copy(
        update={"reasoning_effort": effort})})


def resolve_openai_job(db: Database, req: JobCreateRequest, user: User, catalog: ModelCatalog,
                       registered: Mapping[str, str], aliases: Mapping[str, str], settings: Settings) -> ResolvedJob:
    """Validate ``req`` completely and resolve it to a JobSpec; one ``InvalidRequest`` lists every problem.
    Reads are short transactions of their own: no connection is held while a model is looked up."""
    p = OpenAIProblems(names=together_names(req))
    model = aliases.get(req.model, req.model)
    kind, given = _method(req, p)
    p.check(given.n_epochs == "auto" or given.n_epochs <= MAX_EPOCHS, f"{hyperparameters_path(req)}.n_epochs",
            f"n_epochs must be between 1 and {MAX_EPOCHS}; got {given.n_epochs}")
    if req.suffix is not None and not SUFFIX_RE.match(req.suffix):
        p.add("suffix", f"suffix must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'; got {req.suffix!r}")
    wandb = [i.wandb for i in req.integrations or ()]
    if len(wandb) > 1:
        p.add("integrations", "give at most one wandb integration")
    if wandb and not settings.wandb_api_key:
        p.add("integrations", "the wandb integration needs this server's W&B API key: the operator sets "
                              "TUNERY_WANDB_API_KEY")
    limits = model_limits(catalog, model, registered, p)
    p.raise_if_any()
    try:
        with db.read() as s:
            n_examples = max(1, get_file(s, user.id, req.training_file).num_samples)
    except NotFound:
        n_examples = 1  # Together's resolver reports the missing file
    bounds = limits["lora_training"]
    dpo_beta = getattr(given, "beta", None)
    chosen = hp.resolve(kind, n_examples, bounds["max_batch_size_dpo" if kind == "dpo" else "max_batch_size"],
                        n_epochs=given.n_epochs, batch_size=given.batch_size,
                        learning_rate_multiplier=given.learning_rate_multiplier, beta=dpo_beta)
    run = wandb[0] if wandb else None
    together = FinetuneRequest(
        model=model, training_file=req.training_file, validation_file=req.validation_file,
        n_epochs=chosen.n_epochs, batch_size=chosen.batch_size, learning_rate=chosen.learning_rate(kind),
        packing=False, n_checkpoints=min(chosen.n_epochs, limits["max_num_checkpoints"]),
        n_evals=min(chosen.n_epochs, limits["max_num_evals"]) if req.validation_file else 0,
        training_method=(TrainingMethod(method="dpo", dpo_beta=chosen.beta) if kind == "dpo"
                         else _reinforcement(req, given, p) if kind == "reinforcement" else TrainingMethod()),
        random_seed=req.seed if req.seed is not None else secrets.randbelow(2**31),
        wandb_api_key=settings.wandb_api_key if run else None,
    )
    resolved = resolve_job_request(db, together, user, catalog, registered, p)
    spec = _with_reasoning_effort(resolved.spec, given).model_copy(update={
        "suffix": req.suffix, "metadata": req.metadata, "model_alias": req.model if model != req.model else None,
        "wandb": Wandb(project_name=run.project, entity=run.entity, name=run.name,
                       tags=(*OPENAI_TAGS, f"openai/{req.model}", *(run.tags or ()))) if run else Wandb(),
    })
    return ResolvedJob(spec, resolved.secrets, resolved.training_file, resolved.validation_file)
