"""Base models registered by name by the operator (`tunery models add NAME PATH`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.errors import NotFound
from tunery.store.models import BaseModelEntry


def registered_models(s: Session) -> dict[str, str]:
    return {e.name: e.path for e in s.scalars(select(BaseModelEntry).order_by(BaseModelEntry.name))}


def register_model(s: Session, name: str, path: str) -> None:
    entry = s.get(BaseModelEntry, name)
    if entry is None:
        s.add(BaseModelEntry(name=name, path=path))
    else:
        entry.path = path


def unregister_model(s: Session, name: str) -> None:
    entry = s.get(BaseModelEntry, name)
    if entry is None:
        raise NotFound(f'no registered model "{name}"', param="name")
    s.delete(entry)
