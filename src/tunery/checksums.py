"""The SHA-256 of a file, as the CLI sends it with an upload and the server checks it on arrival."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
