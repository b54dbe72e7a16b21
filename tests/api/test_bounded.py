"""The bounded child processes that run heavy request work: a memory limit, a deadline, a cap on
waiting requests, and a pool that carries on after a child is killed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunery.api.bounded import BoundedPool, OverLimit
from tunery.errors import Busy

GIB = 1024**3


def validate(pool: BoundedPool, path: Path, file_type: str = "jsonl", timeout_s: float = 120) -> dict:
    args = {"path": str(path), "start": 0, "end": path.stat().st_size, "file_type": file_type,
            "purpose": "fine-tune", "max_line_memory": GIB}
    return pool.run("validate", args, timeout_s)  # type: ignore[no-any-return]


def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "hello"}\n' * 10)
    return path


def child_baseline() -> int:
    """What a child holds once it has imported what validation needs (VmData, as RLIMIT_DATA counts)."""
    out = subprocess.run([sys.executable, "-c", "import tunery.api.validation, pyarrow.parquet\n"
                          "print([l for l in open('/proc/self/status') if l.startswith('VmData')][0].split()[1])"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout) * 1024


def test_a_task_over_its_memory_limit_is_refused_and_the_pool_carries_on(tmp_path: Path) -> None:
    # Eight rows of a million tokens each: within every per-row limit, but decoding them needs
    # far more than the 48 MiB above its imports this child may use.
    path = tmp_path / "wide.parquet"
    rows = pa.ListArray.from_arrays(pa.array([i * 1_000_000 for i in range(9)], pa.int32()),
                                    pa.array([0] * 8_000_000, pa.int64()))
    pq.write_table(pa.table({"input_ids": rows}), path)
    pool = BoundedPool(1, child_baseline() + 48 * 1024 * 1024)
    try:
        with pytest.raises(OverLimit) as caught:
            validate(pool, path, "parquet")
        assert caught.value.what == "memory" and "TUNERY_TASK_MEMORY_BYTES" in str(caught.value)
        assert validate(pool, small_file(tmp_path))["nlines"] == 10
    finally:
        pool.close()


def test_a_task_past_its_deadline_is_killed_and_the_pool_carries_on(tmp_path: Path) -> None:
    pool = BoundedPool(1, 2 * GIB)
    try:
        with pytest.raises(OverLimit) as caught:  # a fresh child alone takes longer to start
            validate(pool, small_file(tmp_path), timeout_s=0.01)
        assert caught.value.what == "time"
        assert validate(pool, small_file(tmp_path))["valid"]
    finally:
        pool.close()


def test_requests_beyond_the_waiting_cap_get_busy(tmp_path: Path) -> None:
    pool = BoundedPool(1, 2 * GIB, max_waiting=0)
    big = tmp_path / "big.jsonl"
    big.write_text('{"text": "hello there"}\n' * 300_000)
    first = threading.Thread(target=validate, args=(pool, big))
    try:
        first.start()
        deadline = time.monotonic() + 30
        while pool._slots._value and time.monotonic() < deadline:  # noqa: SLF001 - until the first holds the slot
            time.sleep(0.01)
        with pytest.raises(Busy):
            validate(pool, small_file(tmp_path))
    finally:
        first.join()
        pool.close()
