"""The official `together` CLI drives the whole job lifecycle against tunery, unchanged."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, cli_env, start_server
from tests.e2e.test_jobs_sdk import MODEL, extract
from tests.sample_data import conversation_file

pytestmark = pytest.mark.slow
TOGETHER = str(Path(sys.executable).parent / "together")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("cli"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5")
    yield s
    s.stop()


def tg(server: LiveServer, home: Path, *args: str, ok: bool = True) -> str:
    out = subprocess.run([TOGETHER, "--non-interactive", *args], env=cli_env(server, home), capture_output=True,
                         text=True, timeout=300, cwd=home)
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_cli_lifecycle(server: LiveServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = conversation_file(tmp_path / "train.jsonl", n=32)
    created = tg(server, home, "fine-tuning", "create", "--no-json", "-t", str(data), "-M", MODEL, "--lora",
                 "--n-epochs", "2", "--batch-size", "8", "--n-checkpoints", "2", "--max-seq-length", "256",
                 "--suffix", "cli", "-y")
    (job_id,) = set(re.findall(r"ft-[0-9a-f-]{36}", created))

    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        info = tg(server, home, "fine-tuning", "retrieve", "--no-json", "--no-plots", job_id)
        if re.search(r"completed|error|cancelled", info):
            break
        time.sleep(1)
    assert "completed" in info, info

    listing = tg(server, home, "fine-tuning", "list", "--no-json")
    assert job_id in listing
    events = tg(server, home, "fine-tuning", "list-events", "--no-json", job_id)
    assert "job_complete" in events or "Fine-tuning job completed" in events
    ckpts = tg(server, home, "fine-tuning", "list-checkpoints", "--no-json", job_id)
    assert f"{job_id}:" in ckpts and "Final" in ckpts
    metrics = tg(server, home, "fine-tuning", "list-metrics", "--no-json", job_id)
    assert "loss" in metrics.lower()

    out = tmp_path / "model.tar.zst"
    tg(server, home, "fine-tuning", "download", "--no-json", job_id, "-o", str(out))
    model_dir = extract(out, tmp_path / "m")
    assert (model_dir / "config.json").exists() and any(model_dir.glob("*.safetensors"))
    adapter = tmp_path / "adapter.tar.zst"
    tg(server, home, "fine-tuning", "download", "--no-json", job_id, "-c", "adapter", "-o", str(adapter))
    assert (extract(adapter, tmp_path / "a") / "adapter_config.json").exists()

    # A second job, cancelled from the CLI.
    second = tg(server, home, "fine-tuning", "create", "--no-json", "-t", str(data), "-M", MODEL, "--lora",
                "--n-epochs", "50", "--batch-size", "2", "-y")
    (second_id,) = set(re.findall(r"ft-[0-9a-f-]{36}", second)) - {job_id}
    tg(server, home, "fine-tuning", "cancel", "--no-json", second_id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "cancelled" not in (
            info := tg(server, home, "fine-tuning", "retrieve", "--no-json", "--no-plots", second_id)):
        time.sleep(1)
    assert "cancelled" in info
    assert "not currently cancellable" in tg(server, home, "fine-tuning", "cancel", "--no-json", second_id, ok=False)
    tg(server, home, "fine-tuning", "delete", "--no-json", "--force", second_id)
    assert second_id not in tg(server, home, "fine-tuning", "list", "--no-json")
