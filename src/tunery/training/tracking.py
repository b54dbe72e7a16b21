"""Weights & Biases: when the job carries a ``wandb_api_key``, every metrics record also goes to a
W&B run, started when training starts.

The run is named by the job's ``wandb_*`` fields, its config is the public training config (no
secrets) completed with the resolved values of the ``training_start`` event, and its id is derived
from the job id, so a job resumed after a restart continues the same run. A ``wandb_init`` event
carries the run's URL (``wandb_url``; none for an offline run). The key reaches W&B only through
``wandb.Settings`` in this process: it is not put in the environment, written to ``~/.netrc``
(as ``wandb.login`` would) or reported anywhere. ``WANDB_MODE=offline`` and ``WANDB_DIR`` work as
W&B documents them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from tunery.errors import TrainingFailed
from tunery.training.config import TrainConfig
from tunery.training.reporter import Reporter

DEFAULT_PROJECT = "together"  # Together's default wandb_project_name
RESOLVED_FIELDS = ("batch_size", "max_seq_length", "total_steps", "token_count", "param_count",
                   "trainable_param_count", "processes")


class WandbReporter:
    """Forwards everything to ``inner``; from the ``training_start`` event on (so a job whose data
    or config is refused never makes a run) also logs metrics and resolved settings to W&B."""

    def __init__(self, inner: Reporter, cfg: TrainConfig):
        self.inner = inner
        self.cfg = cfg
        self.run: Any = None

    def event(self, type: str, message: str, level: str = "info", **fields: Any) -> None:
        if type == "training_start" and self.run is None:
            self.run = _start_run(self.cfg)
            url = self.run.url
            self.inner.event("wandb_init", f"Weights & Biases run {self.run.name or self.run.id}"
                             + (f": {url}" if url else " (offline)"), wandb_url=url, wandb_run_id=self.run.id)
        self.inner.event(type, message, level, **fields)
        if type == "training_start":
            self.run.config.update({k: fields[k] for k in RESOLVED_FIELDS if k in fields}, allow_val_change=True)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.inner.metrics(step, values)
        if self.run is not None:
            self.run.log(values, step=step)

    def checkpoint(self, step: int, path: str, final: bool) -> None:
        self.inner.checkpoint(step, path, final)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    def finish(self, failed: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


@contextmanager
def wandb_reporting(cfg: TrainConfig, reporter: Reporter) -> Iterator[Reporter]:
    """``reporter``, also logging to a W&B run for the block when ``cfg`` has a key."""
    if cfg.wandb_api_key is None:
        yield reporter
        return
    tracked = WandbReporter(reporter, cfg)
    try:
        yield tracked
    except BaseException:
        tracked.finish(failed=True)
        raise
    tracked.finish(failed=False)


def run_id(job_id: str) -> str:
    """A W&B run id from the job id: W&B allows letters, digits, ``-`` and ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", job_id)[:128]


def _start_run(cfg: TrainConfig) -> Any:
    import wandb

    assert cfg.wandb_api_key is not None
    key = cfg.wandb_api_key.get_secret_value()
    extra: dict[str, Any] = {"base_url": cfg.wandb_base_url} if cfg.wandb_base_url else {}
    # console="off": W&B leaves stdout/stderr (the worker's training log) alone.
    settings = wandb.Settings(api_key=key, silent=True, console="off", **extra)
    try:
        return wandb.init(project=cfg.wandb_project_name or DEFAULT_PROJECT, name=cfg.wandb_name,
                          entity=cfg.wandb_entity, tags=cfg.wandb_tags or None, config=cfg.public_dict(),
                          id=run_id(cfg.job_id),
                          resume="allow", settings=settings, reinit="create_new")
    except Exception as exc:  # noqa: BLE001 - W&B raises many kinds; all mean the run did not start
        # A refused key is the user's to fix (Together cancels such jobs); an unreachable server
        # (W&B retries for init_timeout first) is reported as a failure of the job. What the server
        # answered is never shown: wandb_base_url is the user's, and its answer could be anything
        # the server's network holds.
        rejected = isinstance(exc, (wandb.errors.AuthenticationError, wandb.errors.UsageError))
        where = urlsplit(cfg.wandb_base_url).netloc if cfg.wandb_base_url else "api.wandb.ai"
        reason = ("refused the API key; re-issue the key and re-pass wandb_api_key" if rejected
                  else "could not be reached, or answered with an error")
        raise TrainingFailed(f"could not start the Weights & Biases run: the W&B server at {where} {reason} "
                             f"({type(exc).__name__})", user_error=rejected) from None
