"""Finding 7: the data dir was 0755 and tunery.db 0644, with every running job's W&B key and Hugging
Face token in plaintext in it; model archives were 0644; a killed worker's scratch folder
(checkpoints, and a config holding the keys) was never removed; a full disk during packaging left
``.part`` files behind that made the retry fail too."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.abuse.conftest import MODEL, shared_server
from tests.sample_data import text_file
from tunery.worker.run_job import _internal_error

pytestmark = pytest.mark.slow  # live servers: a minute to start on a loaded machine
REPO = Path(__file__).resolve().parents[2]
WANDB_KEY = "wandb-secret-" + "7" * 28
HF_TOKEN = "hf_secret" + "9" * 28


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_is_private_and_secrets_are_sealed_at_rest(tmp_path: Path) -> None:
    dead = tmp_path / "data" / "scratch" / "gone-worker-1" / "ft-x"  # what a killed worker left
    dead.mkdir(parents=True)
    (dead / "config.json").write_text('{"wandb_api_key": "a key"}')
    server, alice, _ = shared_server(
        tmp_path, TUNERY_WORKERS="1", TUNERY_RECIPE_MODULE="bench.stub_trainer",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    try:
        data = server.data_dir
        train = alice.sdk.files.upload(text_file(tmp_path / "t.jsonl", n=8))  # type: ignore[attr-defined]
        job = alice.http.post("/v1/fine-tunes", json={
            "training_file": train.id, "model": MODEL, "training_type": {"type": "Lora"},
            "wandb_api_key": WANDB_KEY, "hf_api_token": HF_TOKEN}).json()
        with sqlite3.connect(data / "tunery.db") as db:  # while the job is unfinished
            (stored,) = db.execute("SELECT secrets FROM jobs WHERE id = ?", (job["id"],)).fetchone()
        assert stored is not None and "fernet" in stored and WANDB_KEY not in stored and HF_TOKEN not in stored
        for name in ("tunery.db", "tunery.db-wal"):
            if (data / name).exists():
                raw = (data / name).read_bytes()
                assert WANDB_KEY.encode() not in raw and HF_TOKEN.encode() not in raw
        deadline = time.monotonic() + 180
        while alice.http.get(f"/v1/fine-tunes/{job['id']}").json()["status"] not in ("completed", "error"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        with sqlite3.connect(data / "tunery.db") as db:
            assert db.execute("SELECT secrets FROM jobs WHERE id = ?", (job["id"],)).fetchone() == (None,)
        assert mode(data) == 0o700 and mode(data / "tunery.db") == 0o600
        blobs = [p for p in (data / "blobs").rglob("*") if p.is_file()]
        assert any("jobs" in p.parts for p in blobs) and any("files" in p.parts for p in blobs)
        assert {oct(mode(p)) for p in blobs} == {oct(0o600)}
        assert not (data / "scratch" / "gone-worker-1").exists()  # removed when the worker started
    finally:
        server.stop()


PACK = """
import os, resource, signal, sys
from pathlib import Path
from tunery.storage.local import LocalBlobStore
from tunery.worker.packaging import pack_parts
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))
try:
    pack_parts(LocalBlobStore(sys.argv[1]), "ft-x", 5, Path(sys.argv[2]), ("model", "adapter"))
except OSError as e:
    print("failed:", e.errno)
"""


def test_a_failed_packing_leaves_nothing_behind(tmp_path: Path) -> None:
    final = tmp_path / "final"
    for part in ("model", "adapter"):
        (final / part).mkdir(parents=True)
        (final / part / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 if part == "adapter" else 1000))
    out = subprocess.run([sys.executable, "-c", PACK, str(tmp_path / "blobs"), str(final)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("failed:"), out.stdout + out.stderr
    assert list((tmp_path / "blobs" / ".staging").iterdir()) == []  # no archive, no .part
    message = _internal_error(OSError(errno.ENOSPC, "No space left on device"))
    assert "ran out of disk space" in message and "run again" in message
