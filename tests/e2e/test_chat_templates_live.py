"""Each official chat template (tests/fixtures/chat_templates) on a live server, as a user meets it:
a registered model whose dataset is previewed through the official SDK (the trained text of every
row compared with the hand-written expectations of tests/training/test_chat_templates.py), then a
real LoRA job on the tiny weights that must train exactly the previewed tokens. A conversation the
template refuses is a 400 before any job exists.

A job costs about 10 s of a quiet 2-core box, most of it process start, saving and packaging, so
by default jobs run for the templates the issue found broken (Qwen3, Phi-3, Mistral v0.3) and
Gemma 3; ``TUNERY_TEST_ALL_TEMPLATES=1`` runs a job for every template (all passed when written).
Previews run for every template either way."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TUNERY, LiveServer, sdk_client, start_server
from tests.sample_data import write_jsonl
from tests.training.chat_fixtures import NAMES, fixture_tokenizer
from tests.training.test_chat_templates import CASES, EXPECTED, Refused
from tunery.models.builtin import ensure_builtin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("templates"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer):  # type: ignore[no-untyped-def]
    return sdk_client(server)


JOB_TEMPLATES = NAMES if os.environ.get("TUNERY_TEST_ALL_TEMPLATES") == "1" else [
    "gemma-3-1b-it", "mistral-7b-instruct-v0.3", "phi-3-mini-4k-instruct", "qwen3-0.6b"]


@pytest.fixture(scope="module")
def models(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each fixture template on the tiny weights (embeddings grown for its special tokens),
    registered under ``fixtures/<name>``: the first with `tunery models add`, as an operator
    would, the others straight in the server's database (each CLI start imports torch)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.store.base_models import register_model
    from tunery.store.db import Database

    root = tmp_path_factory.mktemp("models")
    tiny = ensure_builtin("tunery/tiny-llama", root / "builtin")
    base = AutoTokenizer.from_pretrained(tiny)
    tokenizers = {name: fixture_tokenizer(base, name) for name in NAMES}
    # One set of weights, its embeddings grown for the largest vocabulary (rows past a tokenizer's
    # vocabulary are never looked up), saved beside each template's tokenizer.
    model = AutoModelForCausalLM.from_pretrained(tiny)
    model.resize_token_embeddings(max(len(tokenizer) for tokenizer in tokenizers.values()))
    names = {}
    for name, tokenizer in tokenizers.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        names[name] = f"fixtures/{name}"
    first, *others = NAMES
    subprocess.run([TUNERY, "models", "add", names[first], str(root / first), "--data-dir", str(server.data_dir)],
                   env=server.env, check=True, capture_output=True)
    with Database(server.database_url).session() as s:
        for name in others:
            register_model(s, names[name], str(root / name))
    return names


def accepted_cases(name: str) -> list[str]:
    return [case for case in sorted(CASES) if not isinstance(EXPECTED[name][case], Refused)]


def wait_for(client, job_id: str, timeout: float = 300):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.retrieve(job_id)
        if job.status in ("completed", "error", "user_error", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} stuck in {job.status}")


@pytest.mark.parametrize("name", NAMES)
def test_preview_and_a_lora_job_train_exactly_the_assistant_turns(  # type: ignore[no-untyped-def]
        client, models: dict[str, str], name: str, tmp_path: Path) -> None:
    """The preview marks the expected text; a job (see JOB_TEMPLATES) trains exactly those tokens."""
    cases = accepted_cases(name)
    rows = []
    for case in cases:
        messages, tools = CASES[case]
        rows.append({"messages": messages, **({"tools": tools} if tools else {})})
    f = client.files.upload(write_jsonl(tmp_path / f"{name}.jsonl", rows), purpose="fine-tune")
    preview = client.fine_tuning.preview(model=models[name], training_file=f.id, top_k=len(rows))
    assert preview.dataset_format == "conversation" and len(preview.rows) == len(cases)
    trained_tokens = 0
    for case, row in zip(cases, preview.rows, strict=True):
        segments: list[dict[str, Any]] = row.segments  # type: ignore[attr-defined]
        assert [s["text"] for s in segments if s["trained"]] == EXPECTED[name][case], case
        assert "".join(s["text"] for s in segments) == row.text  # type: ignore[attr-defined]
        trained_tokens += sum(1 for label in row.labels[1:] if label != -100)
    if name not in JOB_TEMPLATES:
        return

    job = client.fine_tuning.create(training_file=f.id, model=models[name], lora=True, n_epochs=1,
                                    batch_size=8, learning_rate=1e-3, max_seq_length=512)
    done = wait_for(client, job.id)
    events = client.fine_tuning.list_events(job.id).data
    assert done.status == "completed", [e.message for e in events][-3:]
    start = next(e for e in events if e.type == "training_start")
    # The job trained exactly the tokens the preview marked.
    assert start.model_extra["trained_tokens_per_epoch"] == trained_tokens  # type: ignore[union-attr]


def test_a_conversation_the_template_refuses_is_a_400_naming_the_line(  # type: ignore[no-untyped-def]
        client, server: LiveServer, models: dict[str, str], tmp_path: Path) -> None:
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    rows = [ok, ok, {"messages": CASES["system"][0]}]  # Gemma 2 refuses system messages
    f = client.files.upload(write_jsonl(tmp_path / "gemma.jsonl", rows), purpose="fine-tune")
    http = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60)
    model = models["gemma-2-2b-it"]
    jobs_before = len(client.fine_tuning.list().data)

    preview = http.post("/v1/fine-tunes/preview", json={"model": model, "training_file": f.id, "top_k": 5})
    assert preview.status_code == 400
    assert preview.json()["error"]["param"] == "training_file"
    assert "line 3" in preview.json()["error"]["message"]
    assert "System role not supported" in preview.json()["error"]["message"]

    estimate = http.post("/v1/fine-tunes/estimate-price", json={"model": model, "training_file": f.id}).json()
    assert estimate["estimation_available"] is False and estimate["unavailable_reason"] == "train_file_invalid"
    assert "line 3" in estimate["message"] and "System role not supported" in estimate["message"]

    create = http.post("/v1/fine-tunes", json={"model": model, "training_file": f.id})
    assert create.status_code == 400, create.text
    error = create.json()["error"]
    assert (error["param"], error["type"]) == ("training_file", "invalid_request_error")
    assert "line 3 of the training file" in error["message"] and "System role not supported" in error["message"]
    assert len(client.fine_tuning.list().data) == jobs_before  # nothing was queued
