"""Chatting with fine-tuned models through both official SDKs against a live `tunery serve` (API +
embedded worker + supervised inference engine): a LoRA job and a full job are trained, downloaded, and
loaded with plain ``transformers``; the served greedy answers must equal ``generate`` on those downloads,
streamed or not, alone or batched with other requests. Also: every way to name a model, the model list,
another user's model, errors in the API's shape, and the engine being killed and restarted.
"""

from __future__ import annotations

import os
import signal
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import zstandard

from tests.conftest import LiveServer, sdk_client, start_server
from tests.sample_data import conversation_file, qa_pairs

pytestmark = pytest.mark.slow
MODEL = "tunery/tiny-llama"
MAX_TOKENS = 12
QUESTIONS = [q for q, _ in qa_pairs(24)][:3]


@dataclass
class Trained:
    job: Any
    model_dir: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("inference"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5",
                     TUNERY_INFERENCE_START="eager", TUNERY_INFERENCE_THREADS="1")
    yield s
    s.stop()


def wait_done(client: Any, job_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.retrieve(job_id)
        if job.status in ("completed", "error", "user_error", "cancelled"):
            assert job.status == "completed", [e.message for e in client.fine_tuning.list_events(job_id).data]
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def download(client: Any, job_id: str, dest: Path) -> Path:
    archive = dest / "model.tar.zst"
    client.fine_tuning.content(ft_id=job_id, checkpoint="merged").write_to_file(archive)
    with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr, \
            tarfile.open(fileobj=zr, mode="r|") as tar:
        tar.extractall(dest / "unpacked", filter="data")
    (top,) = list((dest / "unpacked").iterdir())
    return top


@pytest.fixture(scope="module")
def trained(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    client = sdk_client(server)
    root = tmp_path_factory.mktemp("trained")
    f = client.files.upload(conversation_file(root / "train.jsonl", n=24), purpose="fine-tune")
    lora = client.fine_tuning.create(training_file=f.id, model=MODEL, lora=True, n_epochs=4, n_checkpoints=2,
                                     learning_rate=5e-3, batch_size=8, suffix="chat-lora", max_seq_length=128)
    full = client.fine_tuning.create(training_file=f.id, model=MODEL, lora=False, n_epochs=4, learning_rate=2e-3,
                                     batch_size=8, suffix="chat-full", max_seq_length=128)
    out = {}
    for name, job in (("lora", lora), ("full", full)):
        done = wait_done(client, job.id)
        (root / name).mkdir()
        out[name] = Trained(done, download(client, job.id, root / name))
    return out


def reference(model_dir: Path, question: str) -> str:
    """Greedy ``generate`` on a downloaded model, the way a user would run it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer.apply_chat_template(chat(question), add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]


def openai_client(server: LiveServer, key: str | None = None) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server.base_url + "/v1", api_key=key or server.api_key, max_retries=0)


def test_both_sdks_answer_like_transformers_on_the_download(server: LiveServer, trained: dict[str, Trained]) -> None:
    together, openai = sdk_client(server), openai_client(server)
    expected = {(kind, q): reference(t.model_dir, q) for kind, t in trained.items() for q in QUESTIONS}
    # Training worked: the fine-tuned answers are what the data taught, not the base model's noise.
    assert any(ans.startswith("The ") for ans in expected.values())
    for kind, t in trained.items():
        name = t.job.model_output_name
        for q in QUESTIONS:
            r = openai.chat.completions.create(model=name, messages=chat(q), max_tokens=MAX_TOKENS, temperature=0)
            assert r.choices[0].message.content == expected[(kind, q)]
            assert r.model == name and r.usage.prompt_tokens > 0 and r.choices[0].finish_reason in ("stop", "length")
        # The together SDK, streaming, naming the job by its id.
        stream = together.chat.completions.create(model=t.job.id, messages=chat(QUESTIONS[0]),
                                                  max_tokens=MAX_TOKENS, temperature=0, stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected[(kind, QUESTIONS[0])]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage.completion_tokens > 0

    # Batched: every request at once, base and both fine-tunes mixed, streamed and not.
    def ask(args: tuple[str, str, bool]) -> str:
        kind, q, stream = args
        name = trained[kind].job.model_output_name
        if stream:
            parts = openai.chat.completions.create(model=name, messages=chat(q), max_tokens=MAX_TOKENS,
                                                   temperature=0, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        return str(openai.chat.completions.create(model=name, messages=chat(q), max_tokens=MAX_TOKENS,
                                                  temperature=0).choices[0].message.content)

    jobs = [(kind, q, i % 2 == 0) for i, (kind, q) in enumerate(expected)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [expected[(kind, q)] for kind, q, _ in jobs]


def test_model_names_listing_and_isolation(server: LiveServer, trained: dict[str, Trained]) -> None:
    openai = openai_client(server)
    lora = trained["lora"].job
    listed = {m.id for m in openai.models.list()}
    assert {MODEL, lora.model_output_name, trained["full"].job.model_output_name} <= listed

    step = next(c.step for c in sdk_client(server).fine_tuning.list_checkpoints(lora.id).data
                if c.checkpoint_type == "Intermediate")
    for name in (f"{lora.model_output_name}:{step}", f"{lora.id}:{step}", MODEL):
        r = openai.chat.completions.create(model=name, messages=chat("Hi"), max_tokens=3, temperature=0)
        assert r.usage.completion_tokens >= 1

    # Another user: the same names are simply not there.
    mallory = openai_client(server, server.create_key("mallory"))
    from openai import BadRequestError, NotFoundError

    for name in (lora.model_output_name, lora.id):
        with pytest.raises(NotFoundError):
            mallory.chat.completions.create(model=name, messages=chat("Hi"), max_tokens=3)
    assert lora.model_output_name not in {m.id for m in mallory.models.list()}

    # Refusals in the API's error shape, naming the field.
    with pytest.raises(BadRequestError) as too_many:
        openai.chat.completions.create(model=MODEL, messages=chat("Hi"), max_tokens=10_000)
    assert too_many.value.body["param"] == "max_tokens"
    with pytest.raises(BadRequestError) as too_long:
        openai.completions.create(model=MODEL, prompt="word " * 1100, max_tokens=2)
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(BadRequestError) as too_hot:  # a body that fails its schema is a 400, as at OpenAI
        openai.chat.completions.create(model=MODEL, messages=chat("Hi"), temperature=5)
    assert too_hot.value.body["param"] == "temperature"
    r = httpx.post(server.base_url + "/v1/chat/completions", json={"model": MODEL, "messages": []},
                   headers={"Authorization": f"Bearer {server.api_key}"})
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def engine_pid(server: LiveServer) -> int:
    assert server.proc is not None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server.proc.pid and b"inference" in cmd:
            return int(pid)
    raise AssertionError("no engine process under the server")


def test_a_killed_engine_is_restarted_and_the_api_stays_up(server: LiveServer,
                                                          trained: dict[str, Trained]) -> None:
    openai = openai_client(server)
    name = trained["lora"].job.model_output_name
    before = openai.chat.completions.create(model=name, messages=chat(QUESTIONS[0]), max_tokens=MAX_TOKENS,
                                            temperature=0).choices[0].message.content
    pid = engine_pid(server)
    os.kill(pid, signal.SIGKILL)
    assert httpx.get(server.base_url + "/healthz").status_code == 200
    # The next request waits for the new engine (and its cold start) and gets the same answer.
    after = openai.chat.completions.create(model=name, messages=chat(QUESTIONS[0]), max_tokens=MAX_TOKENS,
                                           temperature=0).choices[0].message.content
    assert after == before
    assert engine_pid(server) != pid


def test_sampling_options_through_both_sdks(server: LiveServer) -> None:
    openai, together = openai_client(server), sdk_client(server)
    hi = [{"role": "user", "content": "Hi"}]
    # Seeded sampling: reproducible, and each of n choices its own.
    first = openai.chat.completions.create(model=MODEL, messages=hi, n=2, temperature=1.0, seed=5, max_tokens=8,
                                           extra_body={"ignore_eos": True})
    again = openai.chat.completions.create(model=MODEL, messages=hi, n=2, temperature=1.0, seed=5, max_tokens=8,
                                           extra_body={"ignore_eos": True})
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices] and texts[0] != texts[1]
    assert first.usage.completion_tokens == 16 and [c.finish_reason for c in first.choices] == ["length"] * 2
    # OpenAI's logprobs: one entry per token, each with its top alternatives.
    r = openai.chat.completions.create(model=MODEL, messages=hi, max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=2, extra_body={"ignore_eos": True})
    entries = r.choices[0].logprobs.content
    assert len(entries) == 4 and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    assert entries[0].top_logprobs[0].logprob >= entries[0].logprob - 1e-6
    # Together's integer logprobs, whole and streamed; the legacy completions shape.
    t = together.chat.completions.create(model=MODEL, messages=hi, max_tokens=3, temperature=0, logprobs=1)
    assert len(t.choices[0].logprobs.token_logprobs) == t.usage.completion_tokens
    chunks = [c for c in together.chat.completions.create(model=MODEL, messages=hi, max_tokens=3, temperature=0,
                                                          logprobs=1, stream=True) if c.choices]
    assert any(isinstance(c.choices[0].logprobs, float) for c in chunks)
    legacy = openai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0,
                                       logprobs=2)
    assert len(legacy.choices[0].logprobs.tokens) == 3 and len(legacy.choices[0].logprobs.text_offset) == 3
    # A stop string ends the answer before it.
    free = openai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    at = next(i for i in range(1, len(free) - 2) if free[i : i + 3].isascii() and free[i : i + 3].strip())
    stop = free[at : at + 3]
    cut = openai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and cut.text == free[: free.index(stop)]
    # Tools go through the model's template (this untrained model will not call one).
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    r = openai.chat.completions.create(model=MODEL, messages=hi, tools=tools, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
