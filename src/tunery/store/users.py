"""Users and their API keys. Keys are shown once and stored as sha256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from tunery.errors import NotFound
from tunery.store.models import ApiKey, User, utcnow

KEY_PREFIX = "tk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    user: str
    prefix: str
    created_at: datetime
    revoked: bool


def get_or_create_user(s: Session, name: str) -> User:
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(id=f"user-{uuid.uuid4()}", name=name)
        s.add(user)
        s.flush()
    return user


def create_key(s: Session, user_name: str) -> str:
    """Create a key for ``user_name`` (creating the user if new); returns the key in clear, once."""
    user = get_or_create_user(s, user_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    s.add(ApiKey(id=f"key-{uuid.uuid4()}", user_id=user.id, key_hash=hash_key(key), prefix=key[:10]))
    return key


# Built once with a bound parameter: every authenticated request runs one of them.
_LIVE_KEY = (ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
_USER_FOR_KEY = select(User).join(ApiKey, ApiKey.user_id == User.id).where(*_LIVE_KEY)


def user_for_key(s: Session, key: str) -> User | None:
    """The user owning an unrevoked ``key``, or None (one query)."""
    return s.scalar(_USER_FOR_KEY, {"key_hash": hash_key(key)})


_USER_ID_FOR_KEY = select(ApiKey.user_id).where(*_LIVE_KEY)


def user_id_for_key(conn: Connection, key: str) -> str | None:
    """``user_for_key``'s id alone, on a plain connection (``Database.read_rows``)."""
    return conn.scalar(_USER_ID_FOR_KEY, {"key_hash": hash_key(key)})


def list_keys(s: Session) -> list[KeyInfo]:
    rows = s.execute(select(ApiKey, User.name).join(User).order_by(ApiKey.created_at)).all()
    return [KeyInfo(k.id, name, k.prefix, k.created_at, k.revoked_at is not None) for k, name in rows]


def revoke_key(s: Session, key_id_or_prefix: str) -> KeyInfo:
    """Revoke by key id or by the key's printed prefix."""
    row = s.get(ApiKey, key_id_or_prefix) or s.scalar(
        select(ApiKey).where(ApiKey.prefix == key_id_or_prefix[:10])
    )
    if row is None:
        raise NotFound(f"no API key {key_id_or_prefix!r}")
    row.revoked_at = row.revoked_at or utcnow()
    user = s.get(User, row.user_id)
    return KeyInfo(row.id, user.name if user else "?", row.prefix, row.created_at, True)


def has_any_key(s: Session) -> bool:
    return s.scalar(select(ApiKey.id).limit(1)) is not None
