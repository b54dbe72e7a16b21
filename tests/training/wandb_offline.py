"""Read what an offline W&B run wrote: its ``run-<id>.wandb`` file is a LevelDB-style log (32 KiB
blocks of chunks, each ``crc32 | length (2, little-endian) | type (1)``) of protobuf ``Record``s
after a 7-byte ``:W&B`` header. W&B 0.31 ships no reader for it, so the tests carry this one."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def run_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(items: Any) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def history(path: Path) -> list[dict[str, Any]]:
    """The logged rows, in order, with W&B's own ``_step``/``_runtime``/``_timestamp``."""
    return [_items(r.history.item) for r in run_records(path) if r.WhichOneof("record_type") == "history"]


def config(path: Path) -> dict[str, Any]:
    """The run config: as given to ``wandb.init`` (the ``run`` record), then as updated."""
    merged: dict[str, Any] = {}
    for r in run_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            merged.update(_items(r.run.config.update))
        elif kind == "config":
            merged.update(_items(r.config.update))
    return {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in merged.items()}
