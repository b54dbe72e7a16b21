"""``GET /v1/models``: base models this server can fine-tune and the caller's fine-tuned models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tunery.api.deps import Ctx, CurrentUser, ReadSession
from tunery.api.schemas.timefmt import unix
from tunery.store import jobs as job_store
from tunery.store.base_models import registered_models

router = APIRouter(tags=["models"])


@router.get("/v1/models")
def list_models(ctx: Ctx, s: ReadSession, user: CurrentUser) -> dict[str, Any]:
    base = [{"id": name, "object": "model", "type": "base", "owned_by": "tunery", "created": 0}
            for name in ctx.catalog.supported(registered_models(s))]
    tuned = [{"id": j.model_output_name, "object": "model", "type": "fine-tuned", "owned_by": user.name,
              "created": unix(j.created_at), "root": j.model, "job_id": j.id}
             for j in job_store.list_jobs(s, user.id, status="completed")]
    return {"object": "list", "data": base + tuned}
