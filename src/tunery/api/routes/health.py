"""``GET /healthz`` and ``GET /v3/whoami`` (the `together` CLI calls the latter before most commands)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from tunery.api.deps import Ctx, CurrentUser

router = APIRouter()


@router.get("/healthz", tags=["health"])
def healthz(ctx: Ctx) -> dict:
    with ctx.db.read() as s:
        s.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get("/v3/whoami", tags=["health"])
def whoami(user: CurrentUser) -> dict:
    return {
        "type": "user_jwt",
        "user": {"id": user.id, "name": user.name},
        "organization": {"id": "org-tunery", "name": "tunery"},
        "project": {"id": f"proj-{user.name}", "name": user.name, "slug": user.name},
    }
