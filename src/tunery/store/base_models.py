"""Base models the operator manages by name: directories registered as models (`tunery models add
NAME PATH`) and aliases that stand for a model (`tunery models alias ALIAS MODEL`), so that scripts
naming an OpenAI model (``gpt-4o-mini-2024-07-18``) train the open model it stands for."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.errors import NotFound
from tunery.store.models import BaseModelEntry, ModelAlias


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


def model_aliases(s: Session) -> dict[str, str]:
    """Every alias and the model it stands for."""
    return {a.alias: a.target for a in s.scalars(select(ModelAlias).order_by(ModelAlias.alias))}


def set_alias(s: Session, alias: str, target: str) -> None:
    entry = s.get(ModelAlias, alias)
    if entry is None:
        s.add(ModelAlias(alias=alias, target=target))
    else:
        entry.target = target


def remove_alias(s: Session, alias: str) -> None:
    entry = s.get(ModelAlias, alias)
    if entry is None:
        raise NotFound(f'no model alias "{alias}"', param="alias")
    s.delete(entry)
