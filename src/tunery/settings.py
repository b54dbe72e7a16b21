"""The one settings class. Built at entry points (CLI, tests) and passed down; never a global.

Every field can be set with a ``TUNERY_<NAME>`` environment variable, e.g. ``TUNERY_DATA_DIR``.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".tunery"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNERY_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    # SQLAlchemy URL; empty means SQLite at <data_dir>/tunery.db.
    database_url: str = ""
    # Where blobs live: empty means <data_dir>/blobs; s3://bucket/prefix selects S3.
    blob_url: str = ""
    # The externally reachable base URL used in signed upload/download links; empty means the
    # URL the request came in on.
    public_url: str = ""
    # Signing key for upload URLs; empty means a key generated once into <data_dir>/secret_key.
    secret_key: str = ""
    upload_url_ttl_s: int = 3600
    max_upload_bytes: int = 50 * 1024**3
    # Embedded workers started by `tunery serve`.
    workers: int = 1
    # Training child processes per job (>1 launches torchrun).
    processes_per_job: int = 1
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 30.0
    max_restarts: int = 3
    # Allow downloading base models from the Hugging Face hub when they are not cached.
    allow_hub_downloads: bool = False
    # Price in USD per million trained tokens (0 = free); per-user quota in tokens (0 = none).
    price_per_million_tokens: float = 0.0
    token_quota: int = 0

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "tunery.db"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def api_key_path(self) -> Path:
        return self.data_dir / "api_key"

    def signing_key(self) -> bytes:
        """The secret that signs upload URLs; created once per data dir when not configured."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()
