"""``/v1/models``: one list of every model the caller can use — the base models this server serves
and fine-tunes, the operator's aliases (``alias_for`` says which model each stands for), and the
caller's completed fine-tuned models under both of their names (Together's ``model_output_name`` and
OpenAI's ``ft:…``) — in OpenAI's model shape (``id``, ``object``, ``created``, ``owned_by``) with
Together's ``type`` and a few facts of our own. An entry's ``id`` is a name the chat routes accept;
``tunery.store.served_models.resolve_model_name`` resolves it.

    GET    /v1/models         the list
    GET    /v1/models/{id}    one entry, by any of its names
    DELETE /v1/models/{id}    a fine-tuned model of the caller's: its job and stored weights are deleted
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from tunery.api.deps import AppContext, Ctx, CurrentUser, ReadSession
from tunery.api.schemas.timefmt import unix
from tunery.errors import Forbidden, NotFound
from tunery.jobs import lifecycle
from tunery.store import jobs as job_store
from tunery.store.base_models import model_aliases, registered_models
from tunery.store.fine_tuned_names import fine_tuned_model_name
from tunery.store.models import Job, User

router = APIRouter(tags=["models"])


def base_model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "type": "base", "owned_by": "tunery", "created": 0}


def alias_entry(alias: str, target: str) -> dict[str, Any]:
    return {**base_model_entry(alias), "type": "alias", "alias_for": target}


def fine_tuned_entries(job: Job, owner: User) -> list[dict[str, Any]]:
    """The job's model under each of its names."""
    entry = {"object": "model", "type": "fine-tuned", "owned_by": owner.name, "created": unix(job.created_at),
             "root": job.model, "parent": job.model, "job_id": job.id}
    return [{"id": job.model_output_name, **entry}, {"id": fine_tuned_model_name(job, owner.name), **entry}]


def model_entries(ctx: AppContext, s: Session, user: User) -> list[dict[str, Any]]:
    base = [base_model_entry(name) for name in ctx.catalog.supported(registered_models(s))]
    aliases = [alias_entry(alias, target) for alias, target in model_aliases(s).items()]
    tuned = [e for j in job_store.list_jobs(s, user.id, status="completed") for e in fine_tuned_entries(j, user)]
    return base + aliases + tuned


def _find(ctx: AppContext, s: Session, user: User, model_id: str) -> dict[str, Any]:
    found = next((m for m in model_entries(ctx, s, user) if m["id"] == model_id), None)
    if found is None:
        raise NotFound(f"The model '{model_id}' does not exist", param="model")
    return found


@router.get("/v1/models")
def list_models(ctx: Ctx, s: ReadSession, user: CurrentUser) -> dict[str, Any]:
    return {"object": "list", "data": model_entries(ctx, s, user)}


@router.get("/v1/models/{model_id:path}", responses={404: {}})
def retrieve_model(model_id: str, ctx: Ctx, s: ReadSession, user: CurrentUser) -> dict[str, Any]:
    return _find(ctx, s, user, model_id)


@router.delete("/v1/models/{model_id:path}", responses={403: {}, 404: {}})
def delete_model(model_id: str, ctx: Ctx, user: CurrentUser) -> dict[str, Any]:
    """Delete a fine-tuned model of the caller's, named either way: its job goes with it (from both
    APIs and the dashboard), as do its checkpoints and stored weights. Base models and aliases are the
    operator's (``tunery models``)."""
    with ctx.db.session() as s:
        found = _find(ctx, s, user, model_id)
    if found["type"] != "fine-tuned":
        raise Forbidden(f"{model_id} is a {found['type']} model of this server; only your fine-tuned models can be "
                        "deleted", param="model")
    lifecycle.delete(ctx.db, ctx.blobs, user.id, found["job_id"])
    return {"id": model_id, "object": "model", "deleted": True}
