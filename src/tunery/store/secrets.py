"""A job's secrets (its W&B key, its Hugging Face token) at rest: encrypted with the server's secret
key (``cryptography``'s Fernet: AES-128-CBC with an HMAC-SHA256, keyed from ``TUNERY_SECRET_KEY``),
so a copy of the database alone reveals none of them. The column holds ``{"fernet": token}``;
``transition`` erases it when the job ends. Every process that reads them (the API node that
writes them, each worker that runs the job) must share the same ``TUNERY_SECRET_KEY``."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.errors import TuneryError
from tunery.jobspec import JobSecrets
from tunery.store.models import Job

SEALED = "fernet"


class SecretsUnreadable(TuneryError):
    """The job's secrets were sealed with another secret key than this process has."""


@dataclass(frozen=True)
class SealedSecrets:
    """A job's secrets as they may be stored: ``value`` is the ``jobs.secrets`` column."""

    value: dict[str, Any] | None


class SecretBox:
    """Seals and opens job secrets with a key derived from the server's secret key."""

    def __init__(self, server_key: bytes):
        digest = hashlib.sha256(b"tunery job secrets\n" + server_key).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, secrets: JobSecrets) -> SealedSecrets:
        """``secrets`` ready to store (no value at all when there are none)."""
        plain = secrets.model_dump(exclude_none=True)
        if not plain:
            return SealedSecrets(None)
        return SealedSecrets({SEALED: self._fernet.encrypt(json.dumps(plain).encode()).decode()})

    def open(self, stored: dict[str, Any] | None) -> JobSecrets:
        """The secrets in a column value; a value written before they were sealed reads as is."""
        if not stored:
            return JobSecrets()
        if SEALED not in stored:
            return JobSecrets.model_validate(stored)
        try:
            opened = JobSecrets.model_validate_json(self._fernet.decrypt(stored[SEALED].encode()))
        except InvalidToken:
            raise SecretsUnreadable("this process cannot read the job's secrets (its W&B key or Hugging Face "
                                    "token): they were sealed with another secret key; give every API node "
                                    "and worker the same TUNERY_SECRET_KEY") from None
        return opened

    def is_sealed(self, stored: dict[str, Any] | None) -> bool:
        return not stored or SEALED in stored


def seal_plaintext(s: Session, box: SecretBox) -> int:
    """Seal the secrets of jobs written before secrets were sealed; returns how many."""
    sealed = 0
    for job in s.scalars(select(Job).where(Job.secrets.is_not(None))):
        if not box.is_sealed(job.secrets):
            job.secrets = box.seal(box.open(job.secrets)).value
            sealed += 1
    return sealed
