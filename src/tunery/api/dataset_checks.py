"""What a job's model makes of its dataset files, found before the job is queued.

A file is valid on its own at upload; whether a *model* can train on it depends on that model's
chat template (Gemma 2 refuses system messages, Mistral wants 9-character tool call ids, some
templates render no reasoning). ``scan`` renders a file with the model's tokenizer and the job's
masking, exactly as training will, and caches the verdict on the file row: files are immutable,
and the SDK asks for a price estimate with the same settings just before it creates the job.

Where and within what bounds: the rendering runs in a bounded child process (``api/bounded.py``),
never in the API process nor inside a database transaction. A file up to ``EXACT_MAX_BYTES`` is
rendered whole; of a bigger one only its first ``SAMPLE_BYTES`` of samples are, and its token
count is scaled from them to the file's size (chat data renders at roughly 100 KB/s on one core,
so a whole 40 MB file would keep a request busy for minutes). A problem further into a big file is
found by the job itself, which fails as the user's error naming the line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunery.api.bounded import OverLimit, TaskRefused
from tunery.api.deps import AppContext
from tunery.errors import InvalidRequest, NotFound
from tunery.jobspec import GRPO, SFT, JobSpec
from tunery.store.files import record_scan
from tunery.store.models import File
from tunery.training.data.dataset import FileScan
from tunery.training.data.images import VisionRenderer, with_images
from tunery.training.data.render import Renderer, TrainOnInputs

EXACT_MAX_BYTES = 1024 * 1024
SAMPLE_BYTES = 512 * 1024
# A rough guess for text in a model's tokenizer, where no tokenizer is at hand.
BYTES_PER_TOKEN = 4


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


# ---- in the bounded children ----------------------------------------------------------------------


@contextmanager
def _first_lines(path: Path, max_bytes: int) -> Iterator[tuple[Path, int]]:
    """The file itself when it fits in ``max_bytes``, else a temporary copy of its first whole
    lines within ``max_bytes`` (at least one line); yields the path and the bytes it holds."""
    size = path.stat().st_size
    if size <= max_bytes:
        yield path, size
        return
    with open(path, "rb") as source, tempfile.NamedTemporaryFile(suffix=".jsonl") as part:
        kept = 0
        while line := source.readline():
            if kept and kept + len(line) > max_bytes:
                break
            part.write(line)
            kept += len(line)
        part.flush()
        yield Path(part.name), kept


def scan_task(path: str, file_type: str, model_dir: str, train_on_inputs: TrainOnInputs, method: str, what: str,
              max_bytes: int) -> dict[str, Any]:
    """The child's side of ``scan``: ``{"tokens", "problem", "scanned", "size"}``, where ``tokens``
    counts the first ``scanned`` bytes' samples (the whole file's when ``scanned == size``)."""
    from tunery.training.data.dataset import scan_file

    renderer = renderer_for(model_dir, False if method == "dpo" else train_on_inputs)
    size = os.stat(path).st_size
    if file_type == "parquet":  # pre-tokenized: the file's metadata counts its tokens
        problem = scan_file(path, file_type, renderer, method, what=what).problem if size <= max_bytes else None
        return {"tokens": _parquet_tokens(path), "problem": problem, "scanned": size, "size": size}
    with _first_lines(Path(path), max_bytes) as (part, scanned):
        verdict = scan_file(part, file_type, renderer, method, what=what)
    return {"tokens": verdict.tokens, "problem": verdict.problem, "scanned": scanned, "size": size}


def _parquet_tokens(path: str) -> int:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return sum(chunk.num_values for i in range(meta.num_row_groups)
               for chunk in (meta.row_group(i).column(j) for j in range(meta.num_columns))
               if chunk.path_in_schema.split(".")[0] == "input_ids")


# ---- in the API ------------------------------------------------------------------------------------


def scan(ctx: AppContext, f: File, model_dir: str, train_on_inputs: TrainOnInputs = "auto", method: str = "sft",
         what: str = "training file") -> FileScan:
    """What the model in ``model_dir`` makes of file ``f``: from the file row's cache, else rendered
    in a bounded child (no transaction is open meanwhile) and cached."""
    key = f"{model_dir}|{method}|{train_on_inputs}|{what}"
    cached = (f.scans or {}).get(key)
    if cached is not None:
        return FileScan(int(cached["tokens"]), cached["problem"])
    budget = f.bytes if f.bytes <= EXACT_MAX_BYTES else SAMPLE_BYTES
    with ctx.blobs.local_copy(f.blob_key) as path:
        try:
            out = ctx.tasks.run("scan", {"path": str(path), "file_type": f.file_type, "model_dir": model_dir,
                                         "train_on_inputs": train_on_inputs, "method": method, "what": what,
                                         "max_bytes": budget}, ctx.settings.task_timeout_s)
        except OverLimit as limit:
            return FileScan(0, f"rendering the {what} with the model's chat template {limit}")
    tokens = int(out["tokens"])
    if out["scanned"] < out["size"] and out["scanned"]:
        tokens = round(tokens * out["size"] / out["scanned"])
    verdict = FileScan(tokens, out["problem"])
    cached = {"tokens": verdict.tokens, "problem": verdict.problem}
    with ctx.db.session() as s:
        record_scan(s, f.id, key, cached)
    f.scans = {**(f.scans or {}), key: cached}  # this request's copy of the row too
    return verdict


def model_dir_of(ctx: AppContext, registered: Mapping[str, str], model: str) -> str | None:
    """The local directory of a base model, or None where it is not here (a hub model not yet
    downloaded: its job will download it and check the data itself)."""
    try:
        return str(ctx.catalog.resolve(model, registered, weights=False).path)
    except NotFound:
        return None


def check_job_files(ctx: AppContext, registered: Mapping[str, str], spec: JobSpec,
                    files: list[tuple[File, str]]) -> int:
    """Raise ``InvalidRequest`` (param ``training_file`` or ``validation_file``) when the job's
    model cannot train on one of ``files`` (``(file, param)`` pairs); return the tokens the job will
    train on, as the price estimate counts them (the training file's each epoch, the validation
    file's at each evaluation). A model that is not on this node (a hub model its job will
    download, or bring-your-own weights) is not checked here, and its tokens are guessed from the
    files' sizes. Call it outside any transaction: it may render the files."""
    model, method = spec.model, spec.training_method
    model_dir = None if spec.from_hf_model else model_dir_of(ctx, registered, model)
    train_on_inputs = method.train_on_inputs if isinstance(method, SFT) else "auto"
    tokens: dict[str, int] = {}
    for f, param in files:
        if model_dir is None:
            tokens[param] = f.bytes // BYTES_PER_TOKEN
            continue
        what = param.replace("_", " ")
        if isinstance(method, GRPO):  # its tokens are the completions it samples: the file's size must do
            _check_prompts(ctx, f, model_dir, spec.max_seq_length - method.max_new_tokens, param, method)
            tokens[param] = f.bytes // BYTES_PER_TOKEN
            continue
        verdict = scan(ctx, f, model_dir, train_on_inputs, method.method, what)
        if verdict.problem:
            raise InvalidRequest(f'{param} "{f.id}" cannot be trained on with model {model}: {verdict.problem}',
                                 param=param)
        tokens[param] = verdict.tokens
    return tokens.get("training_file", 0) * max(1, spec.n_epochs) + tokens.get("validation_file", 0) * spec.n_evals


def prompts_task(path: str, file_type: str, model_dir: str, room: int, what: str,
                 reasoning_effort: str | None = None) -> None:
    """In a bounded child: GRPO's prompts render with the model's template (and the job's reasoning
    effort, as training renders them) and leave ``room`` tokens for the completions
    (``DatasetInvalid``, naming the line, otherwise)."""
    from tunery.training.data.prompts import load_prompts

    load_prompts(path, file_type, tokenizer_for(model_dir), room, what,
                 {"reasoning_effort": reasoning_effort} if reasoning_effort else None)


def _check_prompts(ctx: AppContext, f: File, model_dir: str, room: int, param: str, method: GRPO) -> None:
    if room < 1:
        raise InvalidRequest(f"max_seq_length must exceed training_method.max_new_tokens; room for prompts: {room}",
                             param="max_seq_length")
    with ctx.blobs.local_copy(f.blob_key) as path:
        try:
            ctx.tasks.run("check_prompts", {"path": str(path), "file_type": f.file_type, "model_dir": model_dir,
                                            "room": room, "what": param.replace("_", " "),
                                            "reasoning_effort": method.reasoning_effort},
                          ctx.settings.task_timeout_s)
        except TaskRefused as refused:
            raise InvalidRequest(f'{param} "{f.id}": {refused.message}', param=param) from None
        except OverLimit as limit:
            raise InvalidRequest(f'{param} "{f.id}": reading its prompts {limit}', param=param) from None
