"""``GET /v1/finetune/download`` (singular ``finetune``, as in Together's API): a job's model,
merged or adapter, final or at a checkpoint step, as a ``.tar.zst`` with ``Range`` support."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from tunery.api.deps import Ctx, CurrentUser, ReadSession
from tunery.api.streaming import blob_response
from tunery.errors import InvalidRequest, NotFound
from tunery.store import jobs as store
from tunery.store.models import Checkpoint

router = APIRouter(tags=["fine-tunes"])

COMPOUND_ID = re.compile(r"^(ft-[0-9a-f-]+):(\d+)$")
VARIANTS = {"merged": "model", "adapter": "adapter", "model_output_path": "model", "default": "model"}


@router.get("/v1/finetune/download")
def download(
    request: Request, ctx: Ctx, s: ReadSession, user: CurrentUser, ft_id: str,
    checkpoint: str | None = None, checkpoint_step: int | None = None,
) -> Response:
    ckpt, filename = find_download(s, user.id, ft_id, checkpoint, checkpoint_step)
    return blob_response(request, ctx.blobs, ckpt.blob_key, ckpt.size, filename=filename)


def find_download(s: Session, user_id: str, ft_id: str, checkpoint: str | None,
                  checkpoint_step: int | None) -> tuple[Checkpoint, str]:
    """The user's stored artifact that a download request names, and its download file name.
    Shared with the dashboard's download links; raises NotFound / InvalidRequest."""
    m = COMPOUND_ID.match(ft_id)
    if m:
        ft_id, checkpoint_step = m.group(1), int(m.group(2))
    job = store.get_job(s, ft_id, user_id)
    lora = job.params["training_type"]["type"] == "Lora"
    choice = checkpoint or "default"
    if choice not in VARIANTS:
        raise InvalidRequest(f'checkpoint must be one of merged, adapter, model_output_path, default; got "{choice}"',
                             param="checkpoint")
    variant = VARIANTS[choice]
    if variant == "adapter" and not lora:
        raise InvalidRequest(f"job {job.id} is a full fine-tune; it has no adapter (use checkpoint=model_output_path)",
                             param="checkpoint")
    step = checkpoint_step or None
    ckpt = store.find_checkpoint(s, job.id, variant, step)
    if ckpt is None:
        if step is None:
            raise NotFound(f"job {job.id} is {job.status}; its model is downloadable once it is completed",
                           param="ft_id")
        raise NotFound(f"job {job.id} has no checkpoint at step {step}", param="checkpoint_step")
    name = job.model_output_name.replace("/", "--")
    suffix = f"-step-{ckpt.step}" if not ckpt.final else ""
    kind = "-adapter" if variant == "adapter" else ""
    return ckpt, f"{name}{suffix}{kind}.tar.zst"
