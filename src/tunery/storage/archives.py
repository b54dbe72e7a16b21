"""``.tar.zst`` archives of model directories, streamed (constant memory): the worker packs checkpoints
and exports, the inference engine and the CLI unpack them."""

from __future__ import annotations

import tarfile
from pathlib import Path

import zstandard

LEVEL = 3  # zstd's default: fast, and weights barely compress anyway


def pack_dir(src: Path, dest: Path, arcname: str) -> int:
    """Write ``src`` as ``dest`` (a .tar.zst with one top folder ``arcname``); returns its size."""
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=LEVEL, threads=-1).stream_writer(raw) as zw, \
                tarfile.open(fileobj=zw, mode="w|") as tar:
            tar.add(src, arcname=arcname)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of half an archive
        raise
    tmp.replace(dest)
    return dest.stat().st_size


def unpack(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest``; returns the single top folder it held."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr, \
            tarfile.open(fileobj=zr, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    tops = [p for p in dest.iterdir()]
    return tops[0] if len(tops) == 1 else dest
