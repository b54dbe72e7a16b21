"""``POST /v1/fine-tunes/estimate-price``: real token counts from the model's tokenizer (with a
vision-language model's image tokens, as its processor places them), times epochs, plus evals;
price from the configured per-token rate; ``allowed_to_proceed`` from the optional per-user token
quota."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.api.deps import AppContext
from tunery.api.job_requests import base_model_of, resolve_parent
from tunery.api.schemas.fine_tunes import PriceEstimateRequest
from tunery.errors import NotFound, TrainingFailed
from tunery.store.base_models import registered_models
from tunery.store.files import get_file
from tunery.store.models import File, Job, User
from tunery.training.data.render import TrainOnInputs


@lru_cache(maxsize=32)
def tokenizer_for(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@lru_cache(maxsize=8)
def processor_for(model_dir: str) -> Any | None:
    """A vision-language model's processor (None for a text model)."""
    from tunery.training.data.images import load_processor

    return load_processor(model_dir)


def renderer_for(model_dir: str, train_on_inputs: TrainOnInputs) -> Any:
    """The renderer training will use: with images placed for a vision-language model."""
    from tunery.training.data.images import with_images
    from tunery.training.data.render import Renderer

    processor = processor_for(model_dir)
    tokenizer = processor.tokenizer if processor is not None else tokenizer_for(model_dir)
    return with_images(Renderer(tokenizer, train_on_inputs), processor)


@lru_cache(maxsize=256)
def _file_tokens(path: str, file_type: str, dataset_format: str | None, model_dir: str) -> int:
    """Tokens in one pass over a dataset file (cached: files are immutable)."""
    from tunery.training.data.dataset import load_examples, load_pairs

    if dataset_format == "preference":
        return load_pairs(path, file_type, renderer_for(model_dir, False), 10**9).num_tokens
    return load_examples(path, file_type, renderer_for(model_dir, True), 10**9).num_tokens


def _tokens(ctx: AppContext, f: File, model_dir: str) -> int:
    with ctx.blobs.local_copy(f.blob_key) as path:
        return _file_tokens(str(path), f.file_type, f.dataset_format, model_dir)


def _unavailable(reason: str) -> dict[str, Any]:
    return {"estimation_available": False, "unavailable_reason": reason}


def estimate_price(ctx: AppContext, s: Session, user: User, body: PriceEstimateRequest) -> dict[str, Any]:
    registered = registered_models(s)
    model = body.model or ""
    if body.from_checkpoint:
        model = resolve_parent(s, body.from_checkpoint, user).job.model
    model_dir = str(ctx.catalog.resolve(base_model_of(s, model, user), registered).path)
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
        if (f.report or {}).get("dataset_is_multimodal") and processor_for(model_dir) is None:
            return _unavailable("multimodal_dataset")  # images for a text model: create refuses it
        files.append((f, kind))
    try:
        counts = {kind: _tokens(ctx, f, model_dir) for f, kind in files}
    except TrainingFailed:
        return _unavailable("train_file_invalid")
    train = counts.get("train", 0) * max(1, body.n_epochs)
    evals = counts.get("eval", 0) * max(0, body.n_evals)
    price = (train + evals) * ctx.settings.price_per_million_tokens / 1e6
    quota = ctx.settings.token_quota
    used = int(s.scalar(select(func.coalesce(func.sum(Job.token_count), 0)).where(Job.user_id == user.id)) or 0)
    return {
        "estimation_available": True,
        "allowed_to_proceed": quota <= 0 or used + train + evals <= quota,
        "estimated_total_price": price,
        "estimated_train_token_count": train,
        "estimated_eval_token_count": evals,
        "user_limit": float(quota - used) if quota > 0 else 0.0,
    }
