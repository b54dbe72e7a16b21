"""Signed, expiring upload (and download) URLs.

The `together` SDK sends file bytes with a bare ``PUT <url>``: no Authorization header, no
Content-Type. So the URL must carry its own credential, like an S3 presigned URL. We put a token
in the query string::

    token = "<expires unix seconds>.<base64url(HMAC-SHA256(key, kind \\n subject \\n expires))>"

``kind`` says what the URL uploads ("file" for a whole file, "part" for one multipart part) and
``subject`` names exactly which ("file-…", or "up-…/3"), so a token for one thing is useless for
any other. The key is ``settings.signing_key()``. Single use is not the signer's job: the file
row's upload state is changed with a compare-and-set when the bytes arrive.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

from tunery.errors import Forbidden

Clock = Callable[[], float]

FILE = "file"
PART = "part"
TOKENIZED_DATASET = "tokenized-dataset"  # a GET of a job's tokenized training set


class UploadSigner:
    """Signs and verifies upload tokens; ``clock`` is injectable so tests can expire them."""

    def __init__(self, key: bytes, ttl_s: int, clock: Clock = time.time):
        if not key:
            raise ValueError("the signing key must not be empty")
        self._key = key
        self.ttl_s = ttl_s
        self._clock = clock

    def _mac(self, kind: str, subject: str, expires: int) -> str:
        msg = f"{kind}\n{subject}\n{expires}".encode()
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, kind: str, subject: str) -> str:
        """A token for uploading ``subject`` that expires ``ttl_s`` seconds from now."""
        expires = int(self._clock()) + self.ttl_s
        return f"{expires}.{self._mac(kind, subject, expires)}"

    def expires_at(self, token: str) -> int:
        return int(token.partition(".")[0])

    def verify(self, kind: str, subject: str, token: str | None, *, what: str = "upload URL",
               renew: str = "POST /v1/files") -> None:
        """Raise ``Forbidden`` unless ``token`` was signed by us for ``kind``/``subject`` and is
        unexpired; the message names the URL as ``what`` and says to get a new one from ``renew``."""
        if not token:
            raise Forbidden(f"this {what} has no token; request a new one with {renew}")
        expires_s, _, mac = token.partition(".")
        if not (expires_s.isascii() and expires_s.isdigit()) or not mac:
            raise Forbidden(f"this {what}'s token is malformed; request a new one with {renew}")
        expires = int(expires_s)
        if not hmac.compare_digest(mac.encode(), self._mac(kind, subject, expires).encode()):
            raise Forbidden(f"this {what}'s signature is invalid; request a new one with {renew}")
        if self._clock() > expires:
            raise Forbidden(f"this {what} has expired; request a new one with {renew}")
