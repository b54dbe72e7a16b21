"""Request dependencies: the app context, the session, and the authenticated user."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from tunery.api.bounded import BoundedPool
from tunery.api.validation import FileValidator
from tunery.errors import Unauthorized
from tunery.inference.client import EngineClient
from tunery.models.catalog import ModelCatalog
from tunery.settings import Settings
from tunery.storage import BlobStore
from tunery.store.db import Database
from tunery.store.models import User
from tunery.store.secrets import SecretBox
from tunery.store.users import user_for_key, user_id_for_key


@dataclass
class AppContext:
    settings: Settings
    db: Database
    blobs: BlobStore
    catalog: ModelCatalog
    # Heavy per-request work (validation, token counts, previews) in bounded child processes.
    tasks: BoundedPool
    validator: FileValidator
    # Seals jobs' secrets before they are stored.
    secrets: SecretBox
    engine: EngineClient


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def _ctx(request: Request) -> AppContext:
    # async: FastAPI runs a sync dependency in the thread pool, a hop per request for nothing.
    return get_ctx(request)


def get_session(ctx: Annotated[AppContext, Depends(_ctx)]) -> Iterator[Session]:
    with ctx.db.session() as s:
        yield s


def get_read_session(ctx: Annotated[AppContext, Depends(_ctx)]) -> Iterator[Session]:
    with ctx.db.read() as s:
        yield s


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def authenticate(s: Session, key: str | None) -> User:
    """The owner of the unrevoked API key ``key``; ``Unauthorized`` otherwise."""
    user = user_for_key(s, _presented(key))
    if user is None:
        raise _invalid_key()
    return user


def authenticated_user_id(conn: Connection, key: str | None) -> str:
    """``authenticate`` on a plain connection (``Database.read_rows``): the owner's id."""
    user_id = user_id_for_key(conn, _presented(key))
    if user_id is None:
        raise _invalid_key()
    return user_id


def _presented(key: str | None) -> str:
    if key is None:
        raise Unauthorized("missing API key: send the header `Authorization: Bearer <key>`")
    return key


def _invalid_key() -> Unauthorized:
    return Unauthorized("invalid or revoked API key")


def current_user(request: Request, ctx: Annotated[AppContext, Depends(_ctx)]) -> User:
    with ctx.db.read() as s:
        return authenticate(s, bearer_key(request))


Ctx = Annotated[AppContext, Depends(_ctx)]
# scope="function": the transaction commits before the response is sent. FastAPI's default ends
# a yield dependency after the response, so a client could read a 200 and then not find what it
# just created (seen on PostgreSQL under load).
DbSession = Annotated[Session, Depends(get_session, scope="function")]
# For routes that only read: a snapshot that never takes (or waits for) SQLite's write lock.
ReadSession = Annotated[Session, Depends(get_read_session, scope="function")]
CurrentUser = Annotated[User, Depends(current_user)]


def public_base_url(request: Request, settings: Settings) -> str:
    """The absolute base URL clients should use to reach this server (no trailing slash)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")
