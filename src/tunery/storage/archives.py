"""``.tar.zst`` archives of model directories, streamed (constant memory): the worker packs checkpoints
and exports, the inference engine and the CLI unpack them."""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

LEVEL = 3  # zstd's default: fast, and weights barely compress anyway


@dataclass(frozen=True)
class Archive:
    size: int
    sha256: str  # hex, of the archive's bytes


class _HashingWriter:
    """Writes through to ``raw`` and hashes what it writes, so an archive is hashed as it is made."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.digest = raw, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def pack_dir(src: Path, dest: Path, arcname: str) -> Archive:
    """Write ``src`` as ``dest`` (a .tar.zst with one top folder ``arcname``)."""
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with open(tmp, "wb") as raw:
            hashing = _HashingWriter(raw)
            compressor = zstandard.ZstdCompressor(level=LEVEL, threads=-1)
            with compressor.stream_writer(cast(BinaryIO, hashing), closefd=False) as zw, \
                    tarfile.open(fileobj=zw, mode="w|") as tar:
                tar.add(src, arcname=arcname)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of half an archive
        raise
    tmp.replace(dest)
    return Archive(dest.stat().st_size, hashing.digest.hexdigest())


def unpack(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest``; returns the single top folder it held."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr, \
            tarfile.open(fileobj=zr, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    tops = [p for p in dest.iterdir()]
    return tops[0] if len(tops) == 1 else dest
