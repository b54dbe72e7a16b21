"""A GRPO job through the official together SDK: upload reinforcement prompts, create the job with a
grader (``training_method: {"method": "grpo", ...}``, sent with the SDK's client because its
``fine_tuning.create`` knows only sft and dpo), watch its events and metrics, chat with the result.

A killed worker's job restarting from its last checkpoint is the same worker path for every method
(tests/e2e/test_jobs_robust.py, tests/fleet); what is GRPO's own, resuming the RL run from a
checkpoint exactly, is tests/training/test_training_grpo.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, sdk_client, start_server
from tests.e2e.test_jobs_sdk import MODEL, wait_for

pytestmark = pytest.mark.slow
DONE = {"completed", "error", "user_error", "cancelled"}
GRADER = {"type": "multi", "name": "reward", "calculate_output": "0.8 * exact + 0.2 * short",
          "graders": {"exact": {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
                                "reference": "{{ item.answer }}", "operation": "eq"},
                      "short": {"type": "python", "name": "short",
                                "source": "def grade(sample, item):\n"
                                          "    return float(len(sample['output_text']) <= 2)\n"}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("grpo"), TUNERY_WORKERS="1")
    yield s
    s.stop()


def prompts(path: Path, n: int) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b)}
            for a in range(5) for b in range(5)][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def create(client: Any, **body: Any) -> dict[str, Any]:
    return client.post("/v1/fine-tunes", body=body, cast_to=object)  # type: ignore[no-any-return]


def test_a_grpo_job_trains_reports_rl_metrics_and_serves_the_model(server: LiveServer, tmp_path: Path) -> None:
    client = sdk_client(server)
    train = client.files.upload(prompts(tmp_path / "prompts.jsonl", 8)).id
    val = client.files.upload(prompts(tmp_path / "val.jsonl", 4)).id
    method = {"method": "grpo", "grader": GRADER, "group_size": 2, "kl_coef": 0.05, "clip_range": 0.2,
              "max_new_tokens": 4, "temperature": 1.0, "eval_interval": 1}
    job = create(client, model=MODEL, training_file=train, validation_file=val, training_method=method,
                 training_type={"type": "Lora", "lora_r": 8, "lora_alpha": 16}, batch_size=4, n_epochs=1,
                 learning_rate=1e-3, max_seq_length=256)
    assert job["training_method"]["method"] == "grpo" and job["training_method"]["grader"]["type"] == "multi"
    done = wait_for(client, job["id"], DONE, timeout=400)
    events = client.fine_tuning.list_events(job["id"]).data
    assert done.status == "completed", [e.message for e in events]
    assert [e.type for e in events].count("eval_complete") == 3  # before the first step, after each of 2
    rows = client.fine_tuning.list_metrics(job["id"]).metrics
    steps = [r for r in rows if "train/loss" in r]
    assert len(steps) == 2
    for key in ("train/reward", "train/grader/exact", "train/grader/short", "train/kl", "train/clip_fraction",
                "train/completion_length", "train/sampling_tokens_per_second", "train/tokens_per_second"):
        assert all(key in r for r in steps), key
    assert sum("eval/reward" in r for r in rows) == 3
    reply = client.chat.completions.create(model=done.model_output_name, max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "2+2="}])
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0


def test_bad_grpo_requests_get_every_problem_in_one_400(server: LiveServer, tmp_path: Path) -> None:
    import together

    client = sdk_client(server)
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "1+1="},
                                            {"role": "assistant", "content": "2"}]}) + "\n")
    train = client.files.upload(sft).id
    bad = {"method": "grpo", "grader": {**GRADER["graders"]["exact"], "operation": "is"}, "group_size": 1,
           "temperature": 0, "dpo_beta": 0.1}
    with pytest.raises(together.BadRequestError) as caught:
        create(client, model=MODEL, training_file=train, training_method=bad)
    message = str(caught.value)
    for part in ("operation", "group_size must be >= 2", "temperature must be in (0, 2]",
                 "dpo_beta is only supported for DPO", "GRPO trains on reinforcement prompts"):
        assert part in message, part
    prompts_file = client.files.upload(prompts(tmp_path / "p.jsonl", 2)).id
    with pytest.raises(together.BadRequestError, match="use training_method grpo"):
        client.fine_tuning.create(training_file=prompts_file, model=MODEL)
