"""``POST /v1/fine-tunes/preview``: how the first rows of a training file are tokenized and masked,
so users can check which tokens are trained before paying for a job. With a vision-language model
each image shows as the image tokens its processor puts in the sequence (never trained)."""

from __future__ import annotations

import itertools
from typing import Any

from tunery.api.bounded import OverLimit
from tunery.api.dataset_checks import renderer_for
from tunery.api.deps import AppContext
from tunery.api.schemas.fine_tunes import PreviewRequest
from tunery.datasets import DatasetFormat, detect_format, iter_records
from tunery.errors import InvalidRequest
from tunery.store.base_models import registered_models
from tunery.store.files import get_file
from tunery.store.models import User
from tunery.training.data.chat import ConversationRefused
from tunery.training.data.render import IGNORE, Marked

DEFAULT_ROWS = 5
MAX_ROWS = 50


def trained_spans(labels: list[int]) -> list[list[int]]:
    """Half-open ``[start, end)`` token ranges whose labels are trained."""
    spans: list[list[int]] = []
    for i, label in enumerate(labels):
        if label == IGNORE:
            continue
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return spans


def preview_row(marked: Marked, tokenizer: Any, max_seq_length: int) -> dict[str, Any]:
    """Together's preview row, plus the rendered ``text`` and its ``segments``: the text in
    pieces, each marked trained or not, as the model sees it."""
    marked, cut = marked.cut(max_seq_length)
    example = marked.example
    return {"input_ids": example.input_ids, "labels": example.labels,
            "tokens": tokenizer.convert_ids_to_tokens(example.input_ids), "num_tokens": len(example),
            "num_trained_tokens": sum(1 for t in example.labels if t != IGNORE),
            "trained_spans": trained_spans(example.labels), "truncated": cut, "text": marked.text,
            "segments": [{"text": text, "trained": trained} for text, trained in marked.segments()],
            "num_images": len(example.images), "num_image_tokens": sum(i.end - i.start for i in example.images),
            "image_spans": [[i.start, i.end] for i in example.images]}


def preview_task(path: str, file_id: str, model_dir: str, train_on_inputs: bool | str, method: str,
                 top_k: int, max_seq_length: int) -> dict[str, Any]:
    """In a bounded child (``api/bounded.py``): the file's first ``top_k`` samples, rendered."""
    renderer = renderer_for(model_dir, train_on_inputs)  # type: ignore[arg-type]  # "auto" or a bool
    tokenizer = renderer.tokenizer
    rows = []
    fmt = DatasetFormat.GENERAL
    with open(path, "rb") as stream:
        for line, record in itertools.islice(iter_records(stream), top_k):
            fmt = detect_format(record, line)
            try:
                if method == "dpo":
                    chosen, rejected = renderer.marked_preference(record)
                    rows += [{**preview_row(chosen, tokenizer, max_seq_length), "output": "preferred_output"},
                             {**preview_row(rejected, tokenizer, max_seq_length), "output": "non_preferred_output"}]
                else:
                    rows.append(preview_row(renderer.marked(record, fmt), tokenizer, max_seq_length))
            except ConversationRefused as refused:
                raise InvalidRequest(f"line {line} of training_file {file_id}: {refused.message}",
                                     param="training_file") from None
    return {"dataset_format": fmt.value, "rows": rows}


def preview(ctx: AppContext, user: User, req: PreviewRequest) -> dict[str, Any]:
    """The first rows of the file as training would tokenize and mask them. Preference data
    (``training_method`` dpo) gives two rows per sample, the preferred then the other output,
    marked by ``output``. The rendering runs in a bounded child, outside any transaction."""
    method = (req.training_method or "sft").lower()
    if method not in ("sft", "dpo"):
        raise InvalidRequest(f'training_method must be sft or dpo; got "{req.training_method}"',
                             param="training_method")
    with ctx.db.read() as s:
        f = get_file(s, user.id, req.training_file)
        registered = registered_models(s)
    if f.processing_status != "COMPLETED" or f.file_type != "jsonl":
        raise InvalidRequest(f'training_file "{f.id}" must be a validated JSONL dataset to preview',
                             param="training_file")
    if (f.dataset_format == DatasetFormat.PREFERENCE) != (method == "dpo"):
        raise InvalidRequest(f'training_file "{f.id}" is {f.dataset_format} data, which training_method {method} '
                             "cannot train on (preference data trains with dpo)", param="training_file")
    limits = ctx.catalog.limits(req.model, registered)
    model_dir = str(ctx.catalog.resolve(req.model, registered, weights=False).path)
    train_on_inputs = "auto" if req.train_on_inputs is None else req.train_on_inputs
    top_k = min(MAX_ROWS, max(1, req.top_k or DEFAULT_ROWS))
    max_len = limits[f"max_seq_length_{method}"]
    with ctx.blobs.local_copy(f.blob_key) as path:
        try:
            rendered = ctx.tasks.run("preview", {
                "path": str(path), "file_id": f.id, "model_dir": model_dir, "train_on_inputs": train_on_inputs,
                "method": method, "top_k": top_k, "max_seq_length": max_len}, ctx.settings.task_timeout_s)
        except OverLimit as limit:
            raise InvalidRequest(f'previewing training_file "{f.id}" {limit}', param="training_file") from None
    return {"dataset_format": rendered["dataset_format"], "max_seq_length": max_len, "model": req.model,
            "train_on_inputs": train_on_inputs, "rows": rendered["rows"]}
