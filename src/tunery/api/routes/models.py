"""``/v1/models``: what a model name may be, for both APIs — the base models this server can fine-tune,
the operator's aliases (``alias_for`` says which model each stands for) and the caller's fine-tuned
models, each under both of its names (Together's ``model_output_name`` and OpenAI's ``ft:…`` name).

    GET    /v1/models         the list
    GET    /v1/models/{id}    one of them, by any of those names
    DELETE /v1/models/{id}    a fine-tuned model of the caller's: its job and stored weights are deleted
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from tunery.api.deps import Ctx, CurrentUser, DbSession
from tunery.api.schemas.timefmt import unix
from tunery.errors import Forbidden, NotFound
from tunery.jobs import lifecycle
from tunery.models.catalog import ModelCatalog
from tunery.store import jobs as job_store
from tunery.store.base_models import model_aliases, registered_models
from tunery.store.fine_tuned_names import fine_tuned_model_name
from tunery.store.models import User
from tunery.store.status import JobStatus

router = APIRouter(tags=["models"])


def _models(s: Session, catalog: ModelCatalog, user: User) -> list[dict[str, Any]]:
    base = [{"id": name, "object": "model", "type": "base", "owned_by": "tunery", "created": 0}
            for name in catalog.supported(registered_models(s))]
    aliases = [{"id": alias, "object": "model", "type": "alias", "owned_by": "tunery", "created": 0,
                "alias_for": target} for alias, target in model_aliases(s).items()]
    tuned = []
    for j in job_store.list_jobs(s, user.id, status=JobStatus.COMPLETED.value):
        entry = {"object": "model", "type": "fine-tuned", "owned_by": user.name, "created": unix(j.created_at),
                 "root": j.spec.model, "job_id": j.id}
        tuned += [{"id": j.model_output_name, **entry}, {"id": fine_tuned_model_name(j, user.name), **entry}]
    return base + aliases + tuned


def _find(s: Session, catalog: ModelCatalog, user: User, model_id: str) -> dict[str, Any]:
    found = next((m for m in _models(s, catalog, user) if m["id"] == model_id), None)
    if found is None:
        raise NotFound(f"The model '{model_id}' does not exist", param="model")
    return found


@router.get("/v1/models")
def list_models(ctx: Ctx, s: DbSession, user: CurrentUser) -> dict[str, Any]:
    return {"object": "list", "data": _models(s, ctx.catalog, user)}


@router.get("/v1/models/{model_id:path}", responses={404: {}})
def retrieve_model(model_id: str, ctx: Ctx, s: DbSession, user: CurrentUser) -> dict[str, Any]:
    return _find(s, ctx.catalog, user, model_id)


@router.delete("/v1/models/{model_id:path}", responses={403: {}, 404: {}})
def delete_model(model_id: str, ctx: Ctx, user: CurrentUser) -> dict[str, Any]:
    """Delete a fine-tuned model of the caller's, named either way: its job goes with it (from both
    APIs and the dashboard), as do its checkpoints and stored weights. Base models and aliases are the
    operator's (``tunery models``)."""
    with ctx.db.session() as s:
        found = _find(s, ctx.catalog, user, model_id)
    if found["type"] != "fine-tuned":
        raise Forbidden(f"{model_id} is a {found['type']} model of this server; only your fine-tuned models can be "
                        "deleted", param="model")
    lifecycle.delete(ctx.db, ctx.blobs, user.id, found["job_id"])
    return {"id": model_id, "object": "model", "deleted": True}
