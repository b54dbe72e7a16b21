"""``POST /v1/fine-tunes/estimate-price``: real token counts from the model's tokenizer, times
epochs, plus evals; price from the configured per-token rate; ``allowed_to_proceed`` from the
optional per-user token quota.

Counting runs in a bounded child process (``api/bounded.py``), outside any database transaction,
and is cached on the file row per tokenizer, so a file is tokenized once whoever asks again.
A file up to ``EXACT_MAX_BYTES`` is tokenized whole; a bigger one answers from its validation
result: the tokens of its first ``SAMPLE_BYTES`` of samples, scaled to the file's size, so an
estimate on a 40 MB file costs what one on a 1 MB file does.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.api.bounded import OverLimit, TaskFailed
from tunery.api.deps import AppContext
from tunery.api.job_requests import base_model_of, resolve_parent
from tunery.api.schemas.fine_tunes import PriceEstimateRequest
from tunery.errors import InvalidRequest, NotFound
from tunery.store.base_models import registered_models
from tunery.store.files import get_file, record_token_count
from tunery.store.models import File, Job, User

# Chat data tokenizes at roughly 100 KB/s through the chat template on one core.
EXACT_MAX_BYTES = 2 * 1024 * 1024
SAMPLE_BYTES = 512 * 1024


@lru_cache(maxsize=32)
def tokenizer_for(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


# ---- in the bounded children ----------------------------------------------------------------------


def count_tokens_task(path: str, file_type: str, dataset_format: str | None, model_dir: str,
                      max_bytes: int) -> dict[str, int | bool]:
    """Tokens of the samples in the file's first ``max_bytes`` (at least one sample), as training
    renders them; ``complete`` when that was the whole file. Returns ``{"tokens", "bytes",
    "complete"}`` where ``bytes`` is how much of the file was read."""
    from tunery.datasets import DatasetFormat, detect_format, iter_records
    from tunery.training.data.render import Renderer

    if file_type == "parquet":  # pre-tokenized: the input_ids values are the tokens, per the metadata
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        tokens = sum(chunk.num_values for i in range(meta.num_row_groups)
                     for chunk in (meta.row_group(i).column(j) for j in range(meta.num_columns))
                     if chunk.path_in_schema.split(".")[0] == "input_ids")
        return {"tokens": tokens, "bytes": Path(path).stat().st_size, "complete": True}
    renderer = Renderer(tokenizer_for(model_dir), True)
    tokens = 0
    with open(path, "rb") as stream:
        for line, record in iter_records(stream):
            if dataset_format == DatasetFormat.PREFERENCE:
                chosen, rejected = renderer.preference(record)
                tokens += len(chosen) + len(rejected)
            else:
                tokens += len(renderer.render(record, detect_format(record, line)))
            if stream.tell() >= max_bytes:
                read = stream.tell()
                return {"tokens": tokens, "bytes": read, "complete": stream.read(1) == b""}
        return {"tokens": tokens, "bytes": stream.tell(), "complete": True}


# ---- in the API ------------------------------------------------------------------------------------


def _tokens(ctx: AppContext, f: File, model_dir: str) -> int:
    """The file's tokens for this tokenizer: from the file row's cache, else counted in a child."""
    cached = (f.token_counts or {}).get(model_dir)
    if cached is not None:
        return int(cached)
    budget = f.bytes if f.bytes <= EXACT_MAX_BYTES else SAMPLE_BYTES
    with ctx.blobs.local_copy(f.blob_key) as path:
        try:
            counted = ctx.tasks.run("count_tokens", {
                "path": str(path), "file_type": f.file_type, "dataset_format": f.dataset_format,
                "model_dir": model_dir, "max_bytes": budget}, ctx.settings.task_timeout_s)
        except OverLimit as limit:
            raise InvalidRequest(f'counting the tokens of file "{f.id}" {limit}; the estimate is unavailable '
                                 "for it", param="training_file") from None
    tokens = int(counted["tokens"])
    if not counted["complete"] and counted["bytes"]:
        tokens = round(tokens * f.bytes / int(counted["bytes"]))
    with ctx.db.session() as s:
        record_token_count(s, f.id, model_dir, tokens)
    return tokens


def _unavailable(reason: str) -> dict[str, Any]:
    return {"estimation_available": False, "unavailable_reason": reason}


def tokens_used(s: Session, user: User) -> int:
    """Tokens the user's jobs have trained on or been sized for so far (the quota's measure)."""
    return int(s.scalar(select(func.coalesce(func.sum(Job.token_count), 0)).where(Job.user_id == user.id)) or 0)


def estimate_price(ctx: AppContext, user: User, body: PriceEstimateRequest) -> dict[str, Any]:
    with ctx.db.read() as s:
        registered = registered_models(s)
        model = body.model or ""
        if body.from_checkpoint:
            model = resolve_parent(s, body.from_checkpoint, user).job.model
        base = base_model_of(s, model, user)
        files: list[tuple[File, str]] = []
        for file_id, kind in ((body.training_file, "train"), (body.validation_file, "eval")):
            if not file_id:
                continue
            try:
                f = get_file(s, user.id, file_id)
            except NotFound:
                raise NotFound(f'file "{file_id}" does not exist', param=f"{kind}ing_file") from None
            if f.processing_status != "COMPLETED":
                return _unavailable(f"{kind}_file_invalid" if f.processing_status == "INVALID_FORMAT"
                                    else f"{kind}_file_not_validated")
            files.append((f, kind))
        used = tokens_used(s, user)
    # No transaction is open from here on: resolving the model and counting take seconds.
    model_dir = str(ctx.catalog.resolve(base, registered).path)
    try:
        counts = {kind: _tokens(ctx, f, model_dir) for f, kind in files}
    except TaskFailed:
        return _unavailable("train_file_invalid")
    train = counts.get("train", 0) * max(1, body.n_epochs)
    evals = counts.get("eval", 0) * max(0, body.n_evals)
    price = (train + evals) * ctx.settings.price_per_million_tokens / 1e6
    quota = ctx.settings.token_quota
    return {
        "estimation_available": True,
        "allowed_to_proceed": quota <= 0 or used + train + evals <= quota,
        "estimated_total_price": price,
        "estimated_train_token_count": train,
        "estimated_eval_token_count": evals,
        "user_limit": float(quota - used) if quota > 0 else 0.0,
    }
