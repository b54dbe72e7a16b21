"""What a job's model makes of its dataset files, found before the job is queued.

A file is valid on its own at upload; whether a *model* can train on it depends on that model's
chat template (Gemma 2 refuses system messages, Mistral wants 9-character tool call ids, some
templates render no reasoning). ``scan`` renders a whole file with the model's tokenizer and the
job's masking, exactly as training will, and caches the verdict: files are immutable, and the SDK
asks for a price estimate with the same settings just before it creates the job.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from tunery.api.deps import AppContext
from tunery.errors import DatasetInvalid, InvalidRequest, NotFound
from tunery.jobspec import GRPO, SFT, JobSpec
from tunery.store.base_models import registered_models
from tunery.store.models import File
from tunery.training.data.dataset import FileScan
from tunery.training.data.images import VisionRenderer, with_images
from tunery.training.data.render import Renderer, TrainOnInputs


@lru_cache(maxsize=32)
def tokenizer_for(model_dir: str) -> Any:
    """The tokenizer training uses for the model in ``model_dir`` (chat template included)."""
    from tunery.training.model import load_tokenizer

    return load_tokenizer(model_dir)


@lru_cache(maxsize=8)
def processor_for(model_dir: str) -> Any | None:
    """A vision-language model's processor, as training loads it (None for a text model)."""
    from tunery.models.processor import load_processor

    return load_processor(model_dir)


def renderer_for(model_dir: str, train_on_inputs: TrainOnInputs) -> Renderer | VisionRenderer:
    """The renderer training uses for the model in ``model_dir``: with images placed by its processor
    for a vision-language model (so image tokens are counted and shown)."""
    processor = processor_for(model_dir)
    tokenizer = processor.tokenizer if processor is not None else tokenizer_for(model_dir)
    return with_images(Renderer(tokenizer, train_on_inputs), processor)


_SCANS: dict[tuple[Any, ...], FileScan] = {}  # a file's bytes never change: its verdicts stay true
_SCANS_KEPT = 256


def scan(ctx: AppContext, f: File, model_dir: str, train_on_inputs: TrainOnInputs = "auto", method: str = "sft",
         what: str = "training file") -> FileScan:
    """``scan_file`` of ``f`` with the model's renderer, remembered by file id (not by the local
    path, which an object store gives anew for every copy)."""
    from tunery.training.data.dataset import scan_file

    key = (f.id, f.bytes, model_dir, train_on_inputs, method, what)
    if key not in _SCANS:
        renderer = renderer_for(model_dir, False if method == "dpo" else train_on_inputs)
        with ctx.blobs.local_copy(f.blob_key) as path:
            verdict = scan_file(path, f.file_type, renderer, method, what=what)
        if len(_SCANS) >= _SCANS_KEPT:
            _SCANS.pop(next(iter(_SCANS)))
        _SCANS[key] = verdict
    return _SCANS[key]


def model_dir_of(ctx: AppContext, s: Session, model: str) -> str | None:
    """The local directory of a base model, or None where it is not here (a hub model not yet
    downloaded: its job will download it and check the data itself)."""
    try:
        return str(ctx.catalog.resolve(model, registered_models(s), weights=False).path)
    except NotFound:
        return None


def check_job_files(ctx: AppContext, s: Session, spec: JobSpec, files: list[tuple[File, str]]) -> None:
    """Raise ``InvalidRequest`` (param ``training_file`` or ``validation_file``) when the job's
    model cannot train on one of ``files`` (``(file, param)`` pairs)."""
    model, method = spec.model, spec.training_method
    model_dir = model_dir_of(ctx, s, model)
    if model_dir is None:
        return
    train_on_inputs = method.train_on_inputs if isinstance(method, SFT) else "auto"
    for f, param in files:
        what = param.replace("_", " ")
        if isinstance(method, GRPO):
            _check_prompts(ctx, f, model_dir, spec.max_seq_length - method.max_new_tokens, param)
            continue
        verdict = scan(ctx, f, model_dir, train_on_inputs, method.method, what)
        if verdict.problem:
            raise InvalidRequest(f'{param} "{f.id}" cannot be trained on with model {model}: {verdict.problem}',
                                 param=param)


def _check_prompts(ctx: AppContext, f: File, model_dir: str, room: int, param: str) -> None:
    """GRPO's prompts render with the model's template and leave room for the completions."""
    from tunery.training.data.prompts import load_prompts

    if room < 1:
        raise InvalidRequest(f"max_seq_length must exceed training_method.max_new_tokens; room for prompts: {room}",
                             param="max_seq_length")
    try:
        with ctx.blobs.local_copy(f.blob_key) as path:
            load_prompts(str(path), f.file_type, tokenizer_for(model_dir), room, param.replace("_", " "))
    except DatasetInvalid as exc:
        raise InvalidRequest(f'{param} "{f.id}": {exc.message}', param=param) from None
