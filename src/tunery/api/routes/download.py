"""``GET /v1/finetune/download`` (singular ``finetune``, as in Together's API): a job's model,
merged or adapter, final or at a checkpoint step, as a ``.tar.zst`` with ``Range`` support."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tunery.api.deps import Ctx, CurrentUser, ReadSession
from tunery.api.streaming import blob_response
from tunery.jobs.downloads import find_download

router = APIRouter(tags=["fine-tunes"])


@router.get("/v1/finetune/download")
def download(
    request: Request, ctx: Ctx, s: ReadSession, user: CurrentUser, ft_id: str,
    checkpoint: str | None = None, checkpoint_step: int | None = None,
) -> Response:
    found = find_download(s, user.id, ft_id, checkpoint, checkpoint_step)
    return blob_response(request, ctx.blobs, found.checkpoint.blob_key, found.checkpoint.size,
                         filename=found.filename)
