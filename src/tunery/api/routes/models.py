"""``GET /v1/models``: one list of every model the caller can use — the base models this server serves
and fine-tunes, and the caller's completed fine-tuned models — in OpenAI's model shape (``id``,
``object``, ``created``, ``owned_by``) with Together's ``type`` and a few facts of our own. An entry's
``id`` is a name the chat routes accept; ``tunery.store.served_models.resolve_model_name`` resolves it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from tunery.api.deps import AppContext, Ctx, CurrentUser, ReadSession
from tunery.api.schemas.timefmt import unix
from tunery.store import jobs as job_store
from tunery.store.base_models import registered_models
from tunery.store.models import Job, User
from tunery.store.status import JobStatus

router = APIRouter(tags=["models"])


def base_model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "type": "base", "owned_by": "tunery", "created": 0}


def fine_tuned_entry(job: Job, owner: User) -> dict[str, Any]:
    return {"id": job.model_output_name, "object": "model", "type": "fine-tuned", "owned_by": owner.name,
            "created": unix(job.created_at), "root": job.model, "parent": job.model, "job_id": job.id}


def model_entries(ctx: AppContext, s: Session, user: User) -> list[dict[str, Any]]:
    base = [base_model_entry(name) for name in ctx.catalog.supported(registered_models(s))]
    return base + [fine_tuned_entry(j, user) for j in job_store.list_jobs(s, user.id, status=JobStatus.COMPLETED)]


@router.get("/v1/models")
def list_models(ctx: Ctx, s: ReadSession, user: CurrentUser) -> dict[str, Any]:
    return {"object": "list", "data": model_entries(ctx, s, user)}
