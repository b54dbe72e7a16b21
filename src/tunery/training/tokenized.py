"""The tokenized training set a job trains on, written as Parquet so a user can download exactly
what the model saw (Together's ``download-tokenized-dataset``): one row per training sequence after
the chat template, loss masking and truncation — ``input_ids``, ``attention_mask`` and ``labels``
(-100 where no loss is taken). A DPO job writes its chosen and rejected sequences as two rows per
pair, told apart by ``pair`` (the pair's index) and ``preference`` ("chosen" / "rejected").

Rank 0 writes it before the first step and reports it with a ``tokenized_dataset`` record; the
worker stores it and shows it on the job."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunery.training.data.render import Example
from tunery.training.reporter import Reporter

FILENAME = "tokenized-train.parquet"


def _table(examples: Sequence[Example], extra: dict[str, list[Any]] | None = None) -> Any:
    import pyarrow as pa

    columns: dict[str, Any] = {
        "input_ids": pa.array([e.input_ids for e in examples], pa.list_(pa.int32())),
        "attention_mask": pa.array([[1] * len(e.input_ids) for e in examples], pa.list_(pa.int8())),
        "labels": pa.array([e.labels for e in examples], pa.list_(pa.int32())),
    }
    return pa.table({**columns, **(extra or {})})


def write_tokenized(out_dir: str | Path, examples: Sequence[Example], reporter: Reporter,
                    pairs: bool = False) -> Path:
    """Write ``examples`` (for DPO: chosen, rejected, chosen, … in pair order) to
    ``<out_dir>/tokenized-train.parquet`` and report it."""
    import pyarrow.parquet as pq

    extra: dict[str, list[Any]] | None = None
    if pairs:
        extra = {"pair": [i // 2 for i in range(len(examples))],
                 "preference": ["chosen" if i % 2 == 0 else "rejected" for i in range(len(examples))]}
    path = Path(out_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    pq.write_table(_table(examples, extra), tmp)
    os.replace(tmp, path)  # the worker never sees half a file
    reporter.event("tokenized_dataset", f"Tokenized training set written: {len(examples)} rows", path=str(path),
                   rows=len(examples))
    return path
