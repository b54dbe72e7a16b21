"""A job's results file: its per-step metrics as a CSV with OpenAI's columns, stored when the job
completes (in the transaction that completes it) as a file of its owner's — purpose
``fine-tune-results``, id ``file-<job id>-results`` — so OpenAI's ``result_files`` and
``files.content`` give it, and Together's files API lists it too.

    step,train_loss,train_accuracy,train_mean_token_accuracy,valid_loss,valid_mean_token_accuracy,
    full_valid_loss,full_valid_mean_token_accuracy

A reinforcement (GRPO) job's file adds its rewards, the mean grade of each step's samples and of each
validation pass's:

    train_reward_mean,valid_reward_mean,full_valid_mean_reward

One row per training step; a validation pass at a step fills that row's valid_* columns. Evaluations
here always cover the whole validation file, so the full_valid_* columns repeat them. A value the
job did not measure is left empty.

A DPO job leaves the accuracy columns empty: OpenAI documents them as token accuracy (the share of
trained tokens the model predicts right), and DPO's reward accuracy (the share of pairs whose
preferred reply scores higher) is a different quantity — a script comparing runs would read it wrong.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from tunery.storage import BlobStore
from tunery.store import files as file_store
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.models import File, JobMetric

PURPOSE = "fine-tune-results"
COLUMNS = ("step", "train_loss", "train_accuracy", "train_mean_token_accuracy", "valid_loss",
           "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy")
REWARD_COLUMNS = ("train_reward_mean", "valid_reward_mean", "full_valid_mean_reward")
# tunery's metric names → OpenAI's.
METRIC_NAMES = {
    "train/loss": ("train_loss",),
    "train/token_accuracy": ("train_accuracy", "train_mean_token_accuracy"),
    "eval/loss": ("valid_loss", "full_valid_loss"),
    "eval/token_accuracy": ("valid_mean_token_accuracy", "full_valid_mean_token_accuracy"),
    # reinforcement (GRPO): the mean grade of the step's samples, and of the validation pass's
    "train/reward": ("train_reward_mean", "train_mean_reward"),
    "eval/reward": ("valid_reward_mean", "full_valid_mean_reward"),
    "train/completion_length": ("completion_tokens_mean",),
}


def results_file_id(job_id: str) -> str:
    return f"file-{job_id}-results"


def openai_metrics(step: int, values: dict[str, float]) -> dict[str, float]:
    """One step's metrics in OpenAI's names (what checkpoints, metrics events and the CSV show)."""
    out: dict[str, float] = {"step": step}
    for ours, theirs in METRIC_NAMES.items():
        if ours in values:
            out.update(dict.fromkeys(theirs, values[ours]))
    return out


def metrics_csv(rows: list[JobMetric]) -> str:
    by_step: dict[int, dict[str, float]] = {}
    for row in rows:
        by_step.setdefault(row.step, {}).update(row.values)
    rewarded = any("train/reward" in values for values in by_step.values())
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS + REWARD_COLUMNS if rewarded else COLUMNS, restval="",
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for step in sorted(by_step):
        writer.writerow(openai_metrics(step, by_step[step]))
    return out.getvalue()


@dataclass(frozen=True)
class ResultsBlob:
    key: str
    size: int


def store_results_blob(db: Database, blobs: BlobStore, job_id: str) -> ResultsBlob:
    """Write the CSV of the job's metrics so far to the blob store (not listed as a file yet)."""
    with db.session() as s:
        text = metrics_csv(job_store.list_metrics(s, job_id)).encode()
    fd, name = tempfile.mkstemp(dir=blobs.staging_dir(), prefix="results-", suffix=".csv")
    with os.fdopen(fd, "wb") as f:
        f.write(text)
    key = f"{file_store.blob_key(results_file_id(job_id))}-{uuid.uuid4().hex[:12]}"
    blobs.put(key, Path(name))
    return ResultsBlob(key, len(text))


def list_results_file(s: Session, job_id: str, user_id: str, blob: ResultsBlob) -> bool:
    """List ``blob`` as the job's results file, in the caller's transaction (the one that completes
    the job). False, listing nothing, when the job has one already (a completion retried after a
    restart): the caller then deletes ``blob``."""
    if s.get(File, results_file_id(job_id)) is not None:
        return False
    file_store.create_stored_file(s, file_id=results_file_id(job_id), user_id=user_id,
                                  filename=f"{job_id}-results.csv", purpose=PURPOSE, file_type="csv",
                                  size=blob.size, key=blob.key)
    return True
