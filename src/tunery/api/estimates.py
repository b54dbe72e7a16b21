"""``POST /v1/fine-tunes/estimate-price``: real token counts from the model's tokenizer, times
epochs, plus evals; price from the configured per-token rate; ``allowed_to_proceed`` from the
optional per-user token quota.

The files are looked up in one short read transaction; the counting (``dataset_checks.scan``)
runs after it, in a bounded child process, and is cached per file. A big file is estimated from
its first samples scaled to its size, so an estimate on 40 MB costs what one on 1 MB does.
"""

from __future__ import annotations

from typing import Any

from tunery.api.dataset_checks import scan
from tunery.api.deps import AppContext
from tunery.api.job_requests import base_model_of, resolve_parent
from tunery.api.schemas.fine_tunes import PriceEstimateRequest
from tunery.errors import NotFound
from tunery.jobs.admission import tokens_used
from tunery.store.base_models import registered_models
from tunery.store.files import get_file
from tunery.store.models import File, User
from tunery.training.data.render import TrainOnInputs


def _unavailable(reason: str, message: str | None = None) -> dict[str, Any]:
    """Together's shape, plus ``message`` saying what is wrong where there is more to say."""
    return {"estimation_available": False, "unavailable_reason": reason, **({"message": message} if message else {})}


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
        used = tokens_used(s, user.id)
    # No transaction from here on: resolving the model and rendering the files take seconds.
    model_dir = str(ctx.catalog.resolve(base, registered, weights=False).path)
    for f, _ in files:
        images = bool((f.report or {}).get("dataset_is_multimodal"))
        if images and not ctx.catalog.limits(base, registered)["supports_vision"]:  # and create refuses it
            return _unavailable("multimodal_dataset", f"file {f.id} has images, but {model} does not take images")
    method = body.training_method.method.lower() if body.training_method else "sft"
    train_on_inputs: TrainOnInputs = "auto"
    if body.training_method and body.training_method.train_on_inputs is not None:
        train_on_inputs = body.training_method.train_on_inputs
    counts = {}
    for f, kind in files:
        verdict = scan(ctx, f, model_dir, train_on_inputs, method,
                       "training file" if kind == "train" else "validation file")
        if verdict.problem:
            return _unavailable(f"{kind}_file_invalid", verdict.problem)
        counts[kind] = verdict.tokens
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
