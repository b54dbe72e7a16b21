"""Which stored artifact a download request names: Together's ``ft_id`` (``JOB_ID`` or
``JOB_ID:STEP``), ``checkpoint`` (merged, adapter, model_output_path, default) and
``checkpoint_step``, for the API's ``/v1/finetune/download`` and the dashboard's links alike; and a
job's tokenized training set."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tunery.errors import InvalidRequest, NotFound
from tunery.store import jobs as job_store
from tunery.store.models import Checkpoint

COMPOUND_ID = re.compile(r"^(ft-[0-9a-f-]+):(\d+)$")
VARIANTS = {"merged": "model", "adapter": "adapter", "model_output_path": "model", "default": "model"}


@dataclass(frozen=True)
class Download:
    checkpoint: Checkpoint
    filename: str


def find_download(s: Session, user_id: str, ft_id: str, checkpoint: str | None,
                  checkpoint_step: int | None) -> Download:
    """The user's stored artifact that a download request names, and its download file name.
    Raises ``NotFound`` / ``InvalidRequest`` naming the parameter at fault."""
    m = COMPOUND_ID.match(ft_id)
    if m:
        ft_id, checkpoint_step = m.group(1), int(m.group(2))
    job = job_store.get_job(s, ft_id, user_id)
    lora = job.spec.is_lora
    choice = checkpoint or "default"
    if choice not in VARIANTS:
        raise InvalidRequest(f'checkpoint must be one of merged, adapter, model_output_path, default; got "{choice}"',
                             param="checkpoint")
    variant = VARIANTS[choice]
    if variant == "adapter" and not lora:
        raise InvalidRequest(f"job {job.id} is a full fine-tune; it has no adapter (use checkpoint=model_output_path)",
                             param="checkpoint")
    step = checkpoint_step or None
    ckpt = job_store.find_checkpoint(s, job.id, variant, step)
    if ckpt is None:
        if step is None:
            raise NotFound(f"job {job.id} is {job.status}; its model is downloadable once it is completed",
                           param="ft_id")
        raise NotFound(f"job {job.id} has no checkpoint at step {step}", param="checkpoint_step")
    name = job.model_output_name.replace("/", "--")
    suffix = f"-step-{ckpt.step}" if not ckpt.final else ""
    kind = "-adapter" if variant == "adapter" else ""
    return Download(ckpt, f"{name}{suffix}{kind}.tar.zst")


@dataclass(frozen=True)
class TokenizedDataset:
    key: str
    size: int
    filename: str


TOKENIZED_MEDIA_TYPE = "application/vnd.apache.parquet"


def find_tokenized_dataset(s: Session, job_id: str, user_id: str | None) -> TokenizedDataset:
    """The Parquet of the tokenized training set the job (of ``user_id``, when given) trained on;
    ``NotFound`` until the job's training has written it."""
    job = job_store.get_job(s, job_id, user_id)
    if not job.tokenized_dataset_key:
        raise NotFound(f"job {job.id} is {job.status} and has no tokenized dataset yet: it is stored when training "
                       "starts", param="id")
    return TokenizedDataset(job.tokenized_dataset_key, job.tokenized_dataset_size,
                            f"{job.id}-tokenized-dataset.parquet")
