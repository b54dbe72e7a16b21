"""A whole fine-tuning lifecycle through the official `together` SDK against a live server with an
embedded worker: upload → create → poll → events, checkpoints, metrics → download → load → generate."""

from __future__ import annotations

import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from tests.conftest import LiveServer, sdk_client, start_server
from tests.sample_data import conversation_file
from tunery.models.builtin import ensure_builtin

pytestmark = pytest.mark.slow
MODEL = "tunery/tiny-llama"
LIFECYCLE = ["job_pending", "job_start", "model_downloading", "model_download_complete",
             "training_data_downloading", "training_data_download_complete", "training_start",
             "checkpoint_save", "training_complete", "model_compressing", "model_compression_complete",
             "model_uploading", "model_upload_complete", "job_complete"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("jobs"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer):  # type: ignore[no-untyped-def]
    return sdk_client(server)


def wait_for(client, job_id: str, statuses: set[str], timeout: float = 240):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} stuck in {job.status}")


def extract(archive: Path, dest: Path) -> Path:
    with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr, \
            tarfile.open(fileobj=zr, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    (top,) = list(dest.iterdir())
    return top


def test_lora_sft_lifecycle_and_download(client, server: LiveServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = client.files.upload(conversation_file(tmp_path / "train.jsonl", n=48), purpose="fine-tune")
    job = client.fine_tuning.create(training_file=f.id, model=MODEL, lora=True, n_epochs=3, n_checkpoints=2,
                                    learning_rate=3e-3, batch_size=8, suffix="life", max_seq_length=256)
    assert job.id.startswith("ft-") and job.status in ("queued", "pending", "running")
    done = wait_for(client, job.id, {"completed", "error", "user_error", "cancelled"})
    assert done.status == "completed", [e.message for e in client.fine_tuning.list_events(job.id).data]
    assert done.model_output_name.startswith("default/tiny-llama-life-")
    assert done.token_count > 0 and done.total_price == 0

    types = [e.type for e in client.fine_tuning.list_events(job.id).data]
    positions = [types.index(t) for t in LIFECYCLE]
    assert positions == sorted(positions), types

    ckpts = client.fine_tuning.list_checkpoints(job.id).data
    kinds = {c.checkpoint_type for c in ckpts}
    assert {"Intermediate", "Final Merged", "Final Adapter"} <= kinds, kinds

    rows = client.fine_tuning.list_metrics(job.id).metrics
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert all("train/global_step" in r for r in rows)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = tmp_path / "merged.tar.zst"
    client.fine_tuning.content(ft_id=job.id, checkpoint="merged").write_to_file(merged)
    model_dir = extract(merged, tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = model.generate(**tok("What color is the sky0?", return_tensors="pt"), max_new_tokens=5)
    assert out.shape[1] > 0

    adapter = tmp_path / "adapter.tar.zst"
    client.fine_tuning.content(ft_id=job.id, checkpoint="adapter").write_to_file(adapter)
    adapter_dir = extract(adapter, tmp_path / "a")
    base = AutoModelForCausalLM.from_pretrained(ensure_builtin(MODEL, server.data_dir / "models"))
    peft_model = PeftModel.from_pretrained(base, adapter_dir)
    assert peft_model.generate(**tok("hi", return_tensors="pt"), max_new_tokens=3).shape[1] > 0

    # Range download as the `together` CLI does it.
    r = httpx.get(f"{server.base_url}/v1/finetune/download", params={"ft_id": job.id, "checkpoint": "merged"},
                  headers={"Authorization": f"Bearer {server.api_key}", "Range": "bytes=0-1"})
    assert r.status_code == 206 and r.headers["content-range"] == f"bytes 0-1/{merged.stat().st_size}"


def test_data_the_model_cannot_train_on_ends_in_user_error(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.sample_data import write_jsonl

    long_prompt = "word " * 400  # far past max_seq_length: truncation leaves no assistant token to learn
    path = write_jsonl(tmp_path / "long.jsonl", [
        {"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]}
    ] * 4)
    f = client.files.upload(path)
    job = client.fine_tuning.create(training_file=f.id, model=MODEL, lora=True, max_seq_length=128)
    done = wait_for(client, job.id, {"completed", "error", "user_error", "cancelled"})
    assert done.status == "error"  # Together's statuses have no user_error; the message says what to change
    events = client.fine_tuning.list_events(job.id).data
    assert events[-1].type == "job_error" and "max_seq_length" in events[-1].message, events[-1].message
