"""Read a dataset file and turn every sample into a training example.

JSONL files go through ``tunery.datasets`` (the same reader and format detection the upload
validator uses) and the renderer; Parquet files are pre-tokenized rows used as given. Samples
longer than ``max_seq_length`` are cut (and counted, for a warning); samples left with no
trained token are dropped (and counted). A file from which nothing survives is a user error.
``load_pairs`` does the same for DPO's preference data, one ``(chosen, rejected)`` pair per sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunery.datasets import DatasetFormat, detect_format, iter_records
from tunery.errors import TrainingFailed
from tunery.training.data.chat import ConversationRefused
from tunery.training.data.render import Example, TrainOnInputs, from_pretokenized, truncate


class Renderer(Protocol):
    """What reading a dataset needs: ``render.Renderer``, or ``images.VisionRenderer`` around one."""

    @property
    def train_on_inputs(self) -> TrainOnInputs: ...

    def render(self, record: dict[str, Any], fmt: DatasetFormat) -> Example: ...

    def preference(self, record: dict[str, Any]) -> tuple[Example, Example]: ...


@dataclass
class TokenizedDataset:
    examples: list[Example]
    format: DatasetFormat
    samples: int = 0  # samples read from the file
    truncated: int = 0
    dropped: int = 0
    lengths: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(e) for e in self.examples)


def load_examples(
    path: str | Path, file_type: str, renderer: Renderer, max_seq_length: int, *, what: str = "training file"
) -> TokenizedDataset:
    """Tokenize every sample of ``path``; raise ``TrainingFailed(user_error=True)`` if none is usable."""
    data = TokenizedDataset([], DatasetFormat.PRETOKENIZED if file_type == "parquet" else DatasetFormat.GENERAL)
    for fmt, examples in _rendered(Path(path), file_type, renderer, what):
        data.format = fmt
        data.samples += 1
        for example in examples:
            example, cut = truncate(example, max_seq_length)
            data.truncated += cut
            if example.num_trained == 0:
                data.dropped += 1
                continue
            data.examples.append(example)
    data.lengths = [len(e) for e in data.examples]
    if not data.examples:
        raise TrainingFailed(_nothing_left(data, what, renderer, max_seq_length), user_error=True)
    return data


@dataclass
class PairDataset:
    """Preference pairs for DPO: ``pairs[i] = (chosen, rejected)``."""

    pairs: list[tuple[Example, Example]]
    samples: int = 0
    truncated: int = 0
    dropped: int = 0
    lengths: list[int] = field(default_factory=list)  # chosen + rejected tokens

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)


def load_pairs(
    path: str | Path, file_type: str, renderer: Renderer, max_seq_length: int, *, what: str = "training file"
) -> PairDataset:
    """Tokenize every preference sample of ``path``; each sequence is cut to ``max_seq_length``.

    A pair is dropped when either side is left with no trained token. Raises
    ``TrainingFailed(user_error=True)`` for data in another format or when no pair is usable.
    """
    if file_type != "jsonl":
        raise TrainingFailed(f"DPO trains on preference data in JSONL; the {what} is {file_type}", user_error=True)
    data = PairDataset([])
    with Path(path).open("rb") as stream:
        for line, record in iter_records(stream):
            fmt = detect_format(record, line)
            if fmt is not DatasetFormat.PREFERENCE:
                raise TrainingFailed(
                    f"line {line}: DPO trains on preference samples (input, preferred_output, "
                    f"non_preferred_output); the {what} has a {fmt.value} sample", user_error=True)
            data.samples += 1
            with _line_of(line, what):
                pair = renderer.preference(record)
            (chosen, cut_chosen), (rejected, cut_rejected) = (truncate(e, max_seq_length) for e in pair)
            data.truncated += cut_chosen or cut_rejected
            if chosen.num_trained == 0 or rejected.num_trained == 0:
                data.dropped += 1
                continue
            data.pairs.append((chosen, rejected))
    data.lengths = [len(c) + len(r) for c, r in data.pairs]
    if not data.pairs:
        cause = f"; {data.truncated} were cut to max_seq_length={max_seq_length}" if data.truncated else ""
        raise TrainingFailed(f"all {data.samples} samples of the {what} were dropped: no pair has a reply "
                             f"left to train on{cause}" if data.samples else f"the {what} has no samples",
                             user_error=True)
    return data


@dataclass(frozen=True)
class FileScan:
    """One pass over a dataset file as a job would render it."""

    tokens: int  # tokens of every sequence, uncut (a DPO pair counts both sides)
    problem: str | None  # why no job can train on the file, naming the line; None when it can


def scan_file(path: str | Path, file_type: str, renderer: Renderer, method: str = "sft",
              *, what: str = "training file") -> FileScan:
    """Render every sample of ``path`` as training will (same renderer, same masking), so what
    would fail a job - a conversation the chat template refuses, a file with nothing to train on -
    is found before one is queued."""
    try:
        loaded = (load_pairs if method == "dpo" else load_examples)(path, file_type, renderer, 2**62, what=what)
    except TrainingFailed as failed:
        if not failed.user_error:
            raise
        return FileScan(0, failed.message)
    return FileScan(loaded.num_tokens, None)


@contextmanager
def _line_of(line: int, what: str) -> Iterator[None]:
    """A conversation the chat template refuses is the user's to fix: name the line."""
    try:
        yield
    except ConversationRefused as refused:
        raise TrainingFailed(f"line {line} of the {what}: {refused.message}", user_error=True) from None


def _rendered(path: Path, file_type: str, renderer: Renderer,
              what: str) -> Iterator[tuple[DatasetFormat, list[Example]]]:
    if file_type == "parquet":
        for row in _parquet_rows(path):
            yield DatasetFormat.PRETOKENIZED, from_pretokenized(row)
        return
    first: DatasetFormat | None = None
    with path.open("rb") as stream:
        for line, record in iter_records(stream):
            fmt = detect_format(record, line)
            if first is None:
                first = fmt
            elif fmt is not first:
                raise TrainingFailed(
                    f"line {line}: sample is in the {fmt.value} format, but the file started in the "
                    f"{first.value} format; every sample of a file must have the same format",
                    user_error=True,
                )
            with _line_of(line, what):
                example = renderer.render(record, fmt)
            yield fmt, [example]


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _nothing_left(data: TokenizedDataset, what: str, renderer: Renderer, max_seq_length: int) -> str:
    if data.samples == 0:
        return f"the {what} has no samples"
    cause = "no sample has a token to train on"
    if data.format is DatasetFormat.CONVERSATION and renderer.train_on_inputs is not True:
        cause += " (only assistant turns are trained: check roles and weights)"
    if data.truncated:
        cause += f"; {data.truncated} samples were cut to max_seq_length={max_seq_length}, which may have removed them"
    return f"all {data.samples} samples of the {what} were dropped: {cause}"
