"""The proof that vision fine-tuning trains on the images, through the official `together` SDK on a
live server: tunery/tiny-vlm learns the colour of a drawn shape, which only the image shows (the
question never changes), and answers it on held-out images, downloaded and loaded with transformers,
and served through /v1/chat/completions with image_url parts; the same training on the same answers
with every image blanked stays at chance (1 in 4). A text model refuses images by name."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.conftest import LiveServer, sdk_client, start_server
from tests.e2e.test_jobs_sdk import extract, wait_for
from tests.sample_data import write_jsonl
from tests.sample_images import COLOURS, answer_accuracy, colour_samples, load_vlm
from tunery.models.builtin import ensure_builtin

pytestmark = pytest.mark.slow
MODEL = "tunery/tiny-vlm"
TRAIN, HELD_OUT = 64, 40
CHANCE = 1 / len(COLOURS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("vision"), TUNERY_WORKERS="2", TUNERY_HEARTBEAT_INTERVAL_S="0.5")
    yield s
    s.stop()


def served_accuracy(client: Any, model: str, samples: list[dict[str, Any]]) -> float:
    right = 0
    for sample in samples:
        answer = client.chat.completions.create(model=model, messages=sample["messages"][:-1], max_tokens=4,
                                                temperature=0)
        right += answer.choices[0].message.content.strip() == sample["messages"][-1]["content"]
    return right / len(samples)


def test_tiny_vlm_learns_what_only_the_image_shows(server: LiveServer, tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the evaluation's tiny forward passes; more threads only contend on a busy box
    started = time.monotonic()
    client = sdk_client(server)
    assert client.fine_tuning.model_limits(model_name=MODEL).supports_vision
    jobs = {}
    for name, blank in (("images", False), ("blanked", True)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", colour_samples(TRAIN, seed=0, blank=blank))
        uploaded = client.files.upload(path, purpose="fine-tune")
        job = client.fine_tuning.create(training_file=uploaded.id, model=MODEL, lora=True, train_vision=True,
                                        n_epochs=5, learning_rate=3e-3, batch_size=4, max_seq_length=128,
                                        suffix=name)
        assert job.multimodal_params is not None and job.multimodal_params.train_vision is True
        jobs[name] = job.id
    held_out = colour_samples(HELD_OUT, seed=123)
    accuracy = {}
    for name, job_id in jobs.items():
        done = wait_for(client, job_id, {"completed", "error", "user_error", "cancelled"}, timeout=600)
        assert done.status == "completed", [e.message for e in client.fine_tuning.list_events(job_id).data]
        assert done.multimodal_params is not None and done.multimodal_params.train_vision is True
        archive = tmp_path / f"{name}.tar.zst"
        client.fine_tuning.content(ft_id=job_id, checkpoint="merged").write_to_file(archive)
        accuracy[name] = answer_accuracy(*load_vlm(extract(archive, tmp_path / name)), held_out)
        print(f"{name}: {done.total_steps} steps, trained and evaluated at {time.monotonic() - started:.0f} s")
    print(f"held-out accuracy over {HELD_OUT} images: {accuracy} (chance {CHANCE})")
    assert accuracy["images"] >= 0.9
    assert accuracy["blanked"] <= CHANCE + 0.2

    # Served: the same questions through /v1/chat/completions, the images as image_url parts (the LoRA
    # fine-tune as an adapter over tiny-vlm in the inference engine).
    served = served_accuracy(client, client.fine_tuning.retrieve(jobs["images"]).model_output_name, held_out)
    print(f"served held-out accuracy: {served}")
    assert served >= 0.9
    refused = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=120,
                         headers={"Authorization": f"Bearer {server.api_key}"},
                         json={"model": "tunery/tiny-llama", "messages": held_out[0]["messages"][:1]})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "messages" and "takes no images" in error["message"]

    # The adapter archive carries the processor; on the base model it answers as the merged model does.
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    archive = tmp_path / "adapter.tar.zst"
    client.fine_tuning.content(ft_id=jobs["images"], checkpoint="adapter").write_to_file(archive)
    adapter_dir = extract(archive, tmp_path / "adapter")
    base = AutoModelForImageTextToText.from_pretrained(ensure_builtin(MODEL, server.data_dir / "models"))
    adapted = PeftModel.from_pretrained(base, adapter_dir)
    assert answer_accuracy(adapted, AutoProcessor.from_pretrained(adapter_dir), held_out) == accuracy["images"]
