"""Dashboard sign-in: an API key is exchanged once for a session, kept on the server and named
by a signed cookie::

    session = "<session id>.<expires unix seconds>.<base64url(HMAC-SHA256(key, "session" \\n id \\n expires))>"

The session row (``web_sessions``) names the API key it was made from, so revoking the key ends
every session made with it, and signing out revokes the row itself: a copied cookie is worthless
after either. Each request checks the MAC first (a forged cookie costs no database work), then the
row and the key. The HMAC key is ``settings.signing_key()``, the same secret that signs upload
URLs; the ``purpose`` line keeps an upload token from ever passing as a session and vice versa.

Cross-site request forgery: every state-changing form carries ``csrf``, an HMAC of the session
token under a different purpose, so it is bound to this session and worthless in any other; the
cookie is also ``SameSite=Lax`` and ``HttpOnly``. The sign-in form itself (no session yet) uses a
double-submit cookie, so a foreign site cannot sign a browser in to the attacker's account.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tunery.store.models import ApiKey, User, utcnow
from tunery.store.models import WebSession as SessionRow
from tunery.store.users import hash_key

Clock = Callable[[], float]

SESSION_COOKIE = "tunery_session"
LOGIN_CSRF_COOKIE = "tunery_login_csrf"
SESSION_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class WebSession:
    """A verified session: who is signed in, and the token their forms must echo."""

    user: User
    token: str
    csrf: str


class SessionSigner:
    """Makes and checks session tokens and their CSRF tokens; ``clock`` is injectable for tests."""

    def __init__(self, key: bytes, ttl_s: int = SESSION_TTL_S, clock: Clock = time.time):
        if not key:
            raise ValueError("the signing key must not be empty")
        self._key = key
        self.ttl_s = ttl_s
        self._clock = clock

    def _mac(self, purpose: str, *parts: str) -> str:
        msg = "\n".join((purpose, *parts)).encode()
        return base64.urlsafe_b64encode(hmac.new(self._key, msg, hashlib.sha256).digest()).rstrip(b"=").decode()

    def sign(self, session_id: str) -> str:
        """A token for session ``session_id``, valid for ``ttl_s`` seconds."""
        expires = int(self._clock()) + self.ttl_s
        return f"{session_id}.{expires}.{self._mac('session', session_id, str(expires))}"

    def expiry(self) -> datetime:
        """When a session signed now expires."""
        return datetime.fromtimestamp(int(self._clock()) + self.ttl_s, UTC)

    def verify(self, token: str | None) -> str | None:
        """The session id a valid, unexpired token was signed for; else None."""
        if not token or token.count(".") != 2:
            return None
        key_id, expires, mac = token.split(".")
        if not (expires.isascii() and expires.isdigit()):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac("session", key_id, expires).encode()):
            return None
        return key_id if self._clock() <= int(expires) else None

    def csrf_for(self, token: str) -> str:
        """The CSRF token of session ``token``."""
        return self._mac("csrf", token)

    def check_csrf(self, token: str, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(self.csrf_for(token).encode(), (submitted or "").encode())


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def check_login_csrf(cookie: str | None, submitted: str | None) -> bool:
    """Double-submit check for the sign-in form: the hidden field must equal the cookie."""
    return bool(cookie) and bool(submitted) and hmac.compare_digest((cookie or "").encode(), (submitted or "").encode())


def key_id_for_secret(s: Session, secret: str) -> str | None:
    """The id of the unrevoked API key ``secret``, or None (the dashboard's sign-in check)."""
    return s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(secret.strip()),
                                            ApiKey.revoked_at.is_(None)))


def user_for_key_id(s: Session, key_id: str) -> User | None:
    """The owner of key ``key_id`` while the key is unrevoked, else None."""
    row = s.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    return s.get(User, row.user_id)


def start_session(s: Session, signer: SessionSigner, key_id: str) -> str:
    """Record a new session for API key ``key_id``; returns its cookie value."""
    session_id = secrets.token_urlsafe(24)
    s.add(SessionRow(id=session_id, key_id=key_id, expires_at=signer.expiry()))
    return signer.sign(session_id)


def end_session(s: Session, signer: SessionSigner, token: str | None) -> None:
    """Revoke the session behind cookie value ``token`` (signing out)."""
    session_id = signer.verify(token)
    if session_id is not None:
        s.execute(update(SessionRow).where(SessionRow.id == session_id, SessionRow.revoked_at.is_(None))
                  .values(revoked_at=utcnow()))


def load_session(s: Session, signer: SessionSigner, token: str | None) -> WebSession | None:
    """The signed-in session behind cookie value ``token``, or None when absent, forged, expired,
    signed out or made with a revoked key."""
    session_id = signer.verify(token)
    if session_id is None or token is None:
        return None
    row = s.get(SessionRow, session_id)
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        return None
    user = user_for_key_id(s, row.key_id)
    if user is None:
        return None
    return WebSession(user=user, token=token, csrf=signer.csrf_for(token))
