"""The one settings class. Built at entry points (CLI, tests) and passed down; never a global.

Every field can be set with a ``TUNERY_<NAME>`` environment variable, e.g. ``TUNERY_DATA_DIR``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

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
    # Where blobs live: empty means <data_dir>/blobs; s3://bucket/prefix selects S3 (see s3_*).
    blob_url: str = ""
    # S3-compatible object storage. Empty endpoint means AWS; empty keys mean boto3's own chain
    # (environment, ~/.aws, instance role). Presigned URLs given to clients use
    # s3_public_endpoint_url when the servers reach the store under a different name.
    s3_endpoint_url: str = ""
    s3_public_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    # "path" (MinIO, moto, most self-hosted stores), "virtual" or "auto" (boto3 decides).
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # The externally reachable base URL used in signed upload/download links; empty means the
    # URL the request came in on.
    public_url: str = ""
    # Signing key for upload URLs; empty means a key generated once into <data_dir>/secret_key.
    secret_key: str = ""
    upload_url_ttl_s: int = 3600
    max_upload_bytes: int = 50 * 1024**3
    # A request body that sends nothing for this long is cut off (408), freeing its upload URL.
    body_idle_timeout_s: float = 60.0
    # Uploads never finished (no bytes, or multipart parts never completed) are removed this long
    # after they began, with their staged bytes; checked at start-up and then every hour.
    abandoned_upload_ttl_s: float = 24 * 3600.0
    # Dataset validation, price-estimate token counts and previews run in child processes of the
    # API (0 = min(4, CPU count) at once), each capped at task_memory_bytes of memory and given
    # validation_timeout_s (validation) or task_timeout_s (the others); a file that needs more is
    # refused, and the API process never holds its data.
    task_processes: int = 0
    task_memory_bytes: int = 2 * 1024**3
    validation_timeout_s: float = 1800.0
    task_timeout_s: float = 120.0
    # Embedded workers started by `tunery serve`.
    workers: int = 1
    # Training child processes per job (>1 launches torchrun).
    processes_per_job: int = 1
    # What a worker serves: base models (comma-separated; empty = any), accelerator devices
    # (comma-separated CUDA indices handed out processes_per_job at a time; empty = no pinning)
    # and jobs at once (0 = one per group of processes_per_job devices, or 1 without devices).
    worker_models: str = ""
    worker_devices: str = ""
    worker_jobs: int = 0
    # One run of a job may train this long (0 = no limit); then it is stopped like a cancel and
    # ends user_error. A training process that ignores SIGTERM (cancel, shutdown, this limit)
    # for stop_grace_s is killed.
    job_timeout_s: float = 0.0
    stop_grace_s: float = 600.0
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 30.0
    max_restarts: int = 3
    # Inference (docs/deploy.md). Empty inference_urls: `tunery serve` runs and supervises its own engine
    # process on 127.0.0.1:inference_port (0: a free port), started with the server ("eager") or by the
    # first inference request ("lazy"). Otherwise the API forwards to these engine nodes (comma-separated
    # http://host:port, each run with `tunery inference`), choosing one per base model.
    inference_urls: str = ""
    inference_start: Literal["eager", "lazy"] = "eager"
    inference_host: str = "127.0.0.1"
    inference_port: int = 0
    # "transformers" (CPU or one GPU) or "vllm" (pip install 'tunery[vllm]'; GPU hosts).
    inference_engine: Literal["transformers", "vllm"] = "transformers"
    inference_device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": as the model is stored (what transformers loads by default).
    inference_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Torch threads in the engine (0: half the cores, at least 1; small models run fastest on one).
    inference_threads: int = 0
    # Weights the engine keeps loaded (models and adapters), in MB; 0 means half the machine's memory.
    inference_memory_mb: int = 0
    inference_max_batch_size: int = 32
    inference_max_batch_tokens: int = 65536
    inference_max_tokens: int = 4096
    inference_max_concurrent_per_user: int = 16
    inference_max_pending: int = 512
    # How long an API request waits for an engine that is starting or restarting.
    inference_start_timeout_s: float = 120.0
    # The URLs a request may make this server call (a job's wandb_base_url): comma-separated
    # scheme://host[:port], a host may start with "*." (see tunery/outbound.py).
    outbound_url_allow: str = "https://api.wandb.ai"
    # Allow downloading base models from the Hugging Face hub when they are not cached.
    allow_hub_downloads: bool = False
    # The Weights & Biases API key that jobs created through OpenAI's API log with when they ask for
    # a wandb integration: OpenAI's requests carry no key (it keeps one per organisation).
    wandb_api_key: str = ""
    # Price in USD per million trained tokens (0 = free); per-user quota in tokens (0 = none).
    price_per_million_tokens: float = 0.0
    token_quota: int = 0
    # Unfinished jobs a user may have at once (0 = any number); see tunery/jobs/admission.py.
    max_active_jobs_per_user: int = 0
    # "text" or "json" (one JSON object per log line, plus one per HTTP request).
    log_format: Literal["text", "json"] = "text"
    # Python module run as the training child instead of tunery.training.recipes.<method>; for
    # benchmarks that measure the queue rather than training (bench/fleet.py). Empty in production.
    recipe_module: str = ""
    # Test seam (tests/fleet): the first worker to reach this phase (staging, training,
    # checkpoint, compressing, uploading) writes <test_pause_dir>/<phase> with its pid and sleeps
    # there until it is killed. Empty in production.
    test_pause_at: Literal["", "staging", "training", "checkpoint", "compressing", "uploading"] = ""
    test_pause_dir: Path | None = None

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "tunery.db"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def worker_model_list(self) -> list[str]:
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]

    @property
    def worker_device_list(self) -> list[str]:
        return [d.strip() for d in self.worker_devices.split(",") if d.strip()]

    @property
    def worker_job_slots(self) -> int:
        """How many jobs one worker runs at once."""
        if self.worker_jobs > 0:
            return self.worker_jobs
        devices = self.worker_device_list
        return max(1, len(devices) // max(1, self.processes_per_job)) if devices else 1

    @property
    def task_process_count(self) -> int:
        return self.task_processes if self.task_processes > 0 else min(4, os.cpu_count() or 1)

    @property
    def inference_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.inference_urls.split(",") if u.strip()]

    @property
    def inference_cache_dir(self) -> Path:
        return self.data_dir / "inference-cache"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def api_key_path(self) -> Path:
        return self.data_dir / "api_key"

    def make_private_data_dir(self) -> None:
        """Create the data dir readable by this user alone (0700), with an existing SQLite database
        0600, and make every file this process creates from now on private (umask 077): blobs,
        archives, scratch and keys are 0600, their folders 0700. For the server-side commands."""
        os.umask(0o077)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        for name in ("tunery.db", "tunery.db-wal", "tunery.db-shm"):
            if (self.data_dir / name).exists():
                (self.data_dir / name).chmod(0o600)

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
