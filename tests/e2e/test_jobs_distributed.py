"""A job trained by two processes (TUNERY_PROCESSES_PER_JOB=2: the worker launches the recipe under
torchrun, gloo on CPU), driven through the official SDK from upload to a loadable merged model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import sdk_client, start_server
from tests.e2e.test_jobs_sdk import MODEL, extract, wait_for
from tests.sample_data import conversation_file

pytestmark = pytest.mark.slow


def test_a_two_process_job_completes_through_the_sdk(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    server = start_server(tmp_path / "srv", TUNERY_WORKERS="1", TUNERY_PROCESSES_PER_JOB="2")
    try:
        client = sdk_client(server)
        f = client.files.upload(conversation_file(tmp_path / "train.jsonl", n=32))
        job = client.fine_tuning.create(training_file=f.id, model=MODEL, lora=True, n_epochs=2, batch_size=4,
                                        learning_rate=3e-3, max_seq_length=128, n_checkpoints=2)
        done = wait_for(client, job.id, {"completed", "error", "user_error", "cancelled"}, timeout=400)
        events = client.fine_tuning.list_events(job.id).data
        assert done.status == "completed", [e.message for e in events]
        [start] = [e for e in events if e.type == "training_start"]
        assert "in 2 processes" in start.message
        losses = [r["train/loss"] for r in client.fine_tuning.list_metrics(job.id).metrics if "train/loss" in r]
        assert len(losses) == done.total_steps and losses[-1] < losses[0]
        assert "Intermediate" in {c.checkpoint_type for c in client.fine_tuning.list_checkpoints(job.id).data}
        archive = tmp_path / "merged.tar.zst"
        client.fine_tuning.content(ft_id=job.id, checkpoint="merged").write_to_file(archive)
        assert AutoModelForCausalLM.from_pretrained(extract(archive, tmp_path / "m")).num_parameters() > 0
    finally:
        server.stop()
