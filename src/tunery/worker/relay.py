"""Relays what the training child reports (a JSON-lines file it appends to, see
``tunery.training.reporter``) into the store: events, metrics and job progress as they come, and
each intermediate checkpoint handed to ``packaging.upload_checkpoint``. It never changes the job's
status; it remembers what the worker needs afterwards (the final model's path, the child's error).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from tunery.storage import BlobStore
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.worker.packaging import (
    Pause,
    checkpoint_path,
    no_pause,
    primary,
    upload_checkpoint,
    upload_tokenized_dataset,
)

log = logging.getLogger("tunery.worker")

# How long the relay keeps retrying the last reports of a finished child before giving up.
DRAIN_TIMEOUT_S = 120.0
# Events the relay turns into job columns rather than copying verbatim.
INTERNAL_EVENTS = {"error"}


@dataclass
class HeldEvent:
    message: str
    level: str
    fields: dict[str, Any]


@dataclass
class Relay:
    db: Database
    blobs: BlobStore
    job_id: str
    worker_id: str
    report_path: Path
    pause: Pause = no_pause
    offset: int = 0
    total_steps: int = 0
    last_step: int = 0
    final_path: Path | None = None
    final_step: int = 0
    error_message: str | None = None
    # Whether that error was the user's (bad data or config); under torchrun the exit code cannot say.
    error_is_users: bool = False
    # Steps of the intermediate checkpoints this run listed.
    listed_steps: list[int] = field(default_factory=list)
    # What the job has learned so far (total_steps, token_count, param_count, wandb_url): each later
    # event carries it, as Together's events do.
    known: dict[str, Any] = field(default_factory=dict)
    # The final model's checkpoint_save event, for the worker to write once the model is stored.
    final_event: HeldEvent | None = None
    _held: HeldEvent | None = field(default=None, repr=False)
    _first_step: tuple[int, float] | None = None
    _pending: str = field(default="", repr=False)
    # Complete records read but not yet applied, oldest first.
    _unapplied: deque[str] = field(default_factory=deque, repr=False)
    _error: DBAPIError | None = field(default=None, repr=False)

    def pump(self) -> bool:
        """Apply every complete record written since the last call, in order. A database error
        (locked, restarting, unreachable) stops the pump with the record unapplied, to be retried
        at the next call, so a blip never loses a report or fails the job. Returns whether every
        record read so far is applied."""
        if self.report_path.exists():
            with open(self.report_path, encoding="utf-8") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
            lines = (self._pending + chunk).split("\n")
            self._pending = lines.pop()  # an incomplete last line waits for the next pump
            self._unapplied.extend(line for line in lines if line.strip())
        while self._unapplied:
            try:
                self.apply(json.loads(self._unapplied[0]))
            except DBAPIError as error:
                log.warning("job %s: could not record a report (%s); retrying", self.job_id, type(error.orig).__name__)
                self._error = error
                return False
            self._unapplied.popleft()
        return True

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Pump until every record is applied, backing off on database errors; raises the last
        error after ``timeout_s``."""
        deadline, wait = time.monotonic() + timeout_s, 0.1
        while not self.pump():
            if time.monotonic() > deadline and self._error is not None:
                raise self._error
            time.sleep(wait)
            wait = min(5.0, wait * 2)

    def apply(self, record: dict[str, Any]) -> None:
        kind = record.pop("kind")
        if kind != "checkpoint":
            self.flush()  # a held checkpoint_save whose checkpoint record never came
        if kind == "event":
            self._event(record)
        elif kind == "metrics":
            self._metrics(int(record["step"]), record["values"])
        elif kind == "checkpoint":
            self._checkpoint(int(record["step"]), Path(record["path"]), bool(record["final"]))

    def flush(self) -> None:
        """Write a held ``checkpoint_save`` event as it is (its checkpoint was never stored)."""
        if self._held is not None:
            self._store("checkpoint_save", self._held, {})
            self._held = None  # only once stored: a database error retries the record, event included

    def _event(self, r: dict[str, Any]) -> None:
        type_, message, level = r.pop("type"), r.pop("message"), r.pop("level", "info")
        if type_ in INTERNAL_EVENTS:
            self.error_message, self.error_is_users = message, bool(r.get("user_error"))
            return
        if type_ == "tokenized_dataset":
            upload_tokenized_dataset(self.db, self.blobs, self.job_id, self.worker_id, Path(r.pop("path")),
                                     {"step": self.last_step, **self.known, **r})
            return
        progress: dict[str, Any] = {}
        if type_ == "training_start":
            self.total_steps = int(r.get("total_steps", 0))
            progress = {k: int(r[k]) for k in ("total_steps", "token_count", "param_count") if k in r}
            self.known.update(progress)
            if "batch_size" in r:
                progress["batch_size"] = int(r["batch_size"])
        elif type_ == "epoch_complete" and "epoch" in r:
            progress = {"epochs_completed": int(r["epoch"])}
        elif type_ == "early_stopped":
            # Together's event fields are early_stopping_best_step / early_stopping_best_metric_value.
            r["early_stopping_best_step"] = r.pop("best_step", None)
            r["early_stopping_best_metric_value"] = r.pop("best_metric", None)
            progress = {"early_stopped": True, "early_stopping_best_step": r["early_stopping_best_step"],
                        "early_stopping_best_metric": r["early_stopping_best_metric_value"]}
        elif type_ == "wandb_init" and r.get("wandb_url"):
            progress = {"wandb_url": r["wandb_url"]}
            self.known["wandb_url"] = r["wandb_url"]
        held = HeldEvent(message, level, {"step": self.last_step, **self.known, **r})
        if type_ == "checkpoint_save":
            # Held until its checkpoint is stored: then it can say where, instead of the child's
            # local path (never shown), and give the stored archive's hash.
            held.fields.pop("checkpoint_path", None)
            self._held = held
            return
        self._store(type_, held, progress)

    def _store(self, type_: str, event: HeldEvent, progress: dict[str, Any]) -> None:
        with self.db.session() as s:
            job_store.add_event(s, self.job_id, type_, event.message, event.level, event.fields)
            if type_ == "eval_complete":
                job = job_store.get_job(s, self.job_id)
                progress["evals_completed"] = job.evals_completed + 1
            if progress:
                job_store.update_progress(s, self.job_id, **progress)

    def _metrics(self, step: int, values: dict[str, float]) -> None:
        now = time.monotonic()
        if self._first_step is None:
            self._first_step = (step, now)
        first_step, t0 = self._first_step
        eta = None
        if step > first_step and self.total_steps:
            eta = (now - t0) / (step - first_step) * max(0, self.total_steps - step)
        self.last_step = max(self.last_step, step)
        with self.db.session() as s:
            job_store.add_metrics(s, self.job_id, step, values)
            job_store.update_progress(s, self.job_id, steps_completed=self.last_step, seconds_remaining=eta)

    def _checkpoint(self, step: int, path: Path, final: bool) -> None:
        held = self._held  # let go of only once handled: a database error retries the record
        if final:
            # Packaged after the child exits, in the compressing/uploading stages; the worker writes
            # its checkpoint_save event once it is stored.
            self.final_path, self.final_step, self.final_event, self._held = path, step, held, None
            return
        # The test seam pauses in a checkpoint upload only once an earlier one is listed, so the
        # kill tests can check that the job resumes from the earlier one.
        pause = self.pause if self.listed_steps else no_pause
        stored = upload_checkpoint(self.db, self.blobs, self.job_id, self.worker_id, step, path, pause)
        self.listed_steps.append(step)
        main = primary(stored)
        if held is not None and main is not None:
            held.fields.update(checkpoint_path=checkpoint_path(self.job_id, step, False, main.part),
                               hash=main.sha256)
        if held is not None:
            self._store("checkpoint_save", held, {})
        self._held = None
