"""Which weights a model name in an inference request means, for one user: the one place names are
resolved (``resolve_model_name``), so new kinds of name are one more branch here.

    ft-…            a job id: that job's final model
    ft-…:STEP       that job's checkpoint at STEP
    OUTPUT_NAME     a job's ``model_output_name`` (final model); OUTPUT_NAME:STEP a checkpoint
    ft:BASE:ORG:SUFFIX:JOB_ID[:ckpt-step-N]   OpenAI's name for a job's model (``fine_tuned_names.py``)
    an alias        the base model an operator's alias stands for (``tunery models alias``)
    anything else   a base model name (built in, registered, or a Hugging Face id the engine resolves)

Only the caller's jobs match, so another user's model is "not found", exactly like a missing one. A LoRA
job is served as its base plus its adapter; a full job, or a LoRA job trained on top of a full job's
weights, as its own weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tunery.errors import NotFound
from tunery.store import jobs as job_store
from tunery.store.base_models import model_aliases
from tunery.store.fine_tuned_names import find_named_model
from tunery.store.models import Job
from tunery.store.status import JobStatus

STEP_SUFFIX = re.compile(r"^(.+):(\d+)$")
MAX_PARENT_DEPTH = 32


@dataclass(frozen=True)
class ServedModel:
    base: str  # the base model the weights come from (for a LoRA job, what its adapter sits on)
    revision: str | None = None  # Hugging Face revision of ``base``
    job_id: str | None = None
    step: int | None = None  # None: the final model
    adapter_key: str | None = None  # blob key of the LoRA adapter archive
    weights_key: str | None = None  # blob key of the full model archive


def resolve_model_name(s: Session, user_id: str, name: str) -> ServedModel:
    """The weights ``name`` refers to for ``user_id``; raises NotFound (param ``model``)."""
    job, step = _find_job(s, user_id, name)
    if job is None:
        return ServedModel(base=model_aliases(s).get(name, name))
    if step is None and job.status != JobStatus.COMPLETED.value:
        raise NotFound(f"fine-tuning job {job.id} is {job.status}; its model can be used once it has completed "
                       f"(or name a checkpoint: {job.model_output_name}:STEP)", param="model")
    base, revision = job.spec.from_hf_model or job.spec.model, job.spec.hf_model_revision
    if job.spec.is_lora and not _on_full_weights(s, job):
        adapter = job_store.find_checkpoint(s, job.id, "adapter", step)
        if adapter is not None:
            return ServedModel(base, revision, job.id, step, adapter_key=adapter.blob_key)
    weights = job_store.find_checkpoint(s, job.id, "model", step)
    if weights is None:
        raise NotFound(f"fine-tuning job {job.id} has no checkpoint at step {step}", param="model")
    return ServedModel(base, revision, job.id, step, weights_key=weights.blob_key)


def _find_job(s: Session, user_id: str, name: str) -> tuple[Job | None, int | None]:
    named = find_named_model(s, user_id, name)
    if named is not None:
        return named.job, named.step
    for candidate, step in _readings(name):
        job = s.get(Job, candidate) if candidate.startswith("ft-") else None
        if job is not None and job.user_id != user_id:
            job = None
        job = job or job_store.find_job_by_output_name(s, candidate, user_id)
        if job is not None:
            return job, step
    return None, None


def _readings(name: str) -> list[tuple[str, int | None]]:
    """``name`` as a whole, then as NAME:STEP."""
    readings: list[tuple[str, int | None]] = [(name, None)]
    m = STEP_SUFFIX.match(name)
    if m:
        readings.append((m.group(1), int(m.group(2))))
    return readings


def _on_full_weights(s: Session, job: Job) -> bool:
    """Whether a LoRA job's adapter was trained over a full job's weights (through from_checkpoint)
    rather than over its base model: then only its merged weights are self-contained."""
    parent_id = job.spec.parent.job_id if job.spec.parent else None
    for _ in range(MAX_PARENT_DEPTH):
        parent = s.get(Job, parent_id) if parent_id else None
        if parent is None:
            return False
        if not parent.spec.is_lora:
            return True
        parent_id = parent.spec.parent.job_id if parent.spec.parent else None
    return True
