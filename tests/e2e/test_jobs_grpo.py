"""Reinforcement fine-tuning through both official SDKs against one live server: a GRPO job through the
`together` SDK (``training_method: {"method": "grpo", ...}``, sent with the SDK's client because its
``fine_tuning.create`` knows only sft and dpo) and a reinforcement job through the `openai` SDK
(``method: {"type": "reinforcement", ...}``); each is created with a grader, watched through its events
and metrics, and chatted with once it is done. The two jobs are created together so that the server's
two workers train them side by side.

A killed worker's job restarting from its last checkpoint is the same worker path for every method
(tests/e2e/test_jobs_robust.py, tests/fleet); what is GRPO's own, resuming the RL run from a
checkpoint exactly, is tests/training/test_training_grpo.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import together

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
    s = start_server(tmp_path_factory.mktemp("grpo"), TUNERY_WORKERS="2", TUNERY_INFERENCE_THREADS="1")
    yield s
    s.stop()


def together_client(server: LiveServer) -> Any:
    """The together SDK, waiting as long as the openai SDK does: creating a job checks its prompts in a
    fresh bounded child process, which on a loaded machine can take longer than the SDK's 60 s."""
    return sdk_client(server).with_options(timeout=600)


def openai_client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


def prompts(path: Path, n: int) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b)}
            for a in range(5) for b in range(5)][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def create(client: Any, **body: Any) -> dict[str, Any]:
    return client.post("/v1/fine-tunes", body=body, cast_to=object)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def jobs(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A GRPO job through Together's API and a reinforcement job through OpenAI's, as created."""
    d = tmp_path_factory.mktemp("prompts")
    tg, oa = together_client(server), openai_client(server)
    train, val = tg.files.upload(prompts(d / "prompts.jsonl", 8)).id, tg.files.upload(prompts(d / "val.jsonl", 4)).id
    method = {"method": "grpo", "grader": GRADER, "group_size": 2, "kl_coef": 0.05, "clip_range": 0.2,
              "max_new_tokens": 4, "temperature": 1.0, "eval_interval": 1}
    grpo = create(tg, model=MODEL, training_file=train, validation_file=val, training_method=method,
                  training_type={"type": "Lora", "lora_r": 8, "lora_alpha": 16}, batch_size=4, n_epochs=1,
                  learning_rate=1e-3, max_seq_length=256)
    train = oa.files.create(file=prompts(d / "oa-prompts.jsonl", 8), purpose="fine-tune").id
    val = oa.files.create(file=prompts(d / "oa-val.jsonl", 4), purpose="fine-tune").id
    reinforcement = oa.fine_tuning.jobs.create(
        model=MODEL, training_file=train, validation_file=val, seed=3, suffix="rft",
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {  # type: ignore[typeddict-item]
            "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 5, "compute_multiplier": 0.5,
            "eval_interval": 1, "eval_samples": 2, "reasoning_effort": "low"}}})
    return {"grpo": grpo, "reinforcement": reinforcement}


def test_a_grpo_job_trains_reports_rl_metrics_and_serves_the_model(server: LiveServer, jobs: dict[str, Any]) -> None:
    client, job = together_client(server), jobs["grpo"]
    assert job["training_method"]["method"] == "grpo" and job["training_method"]["grader"]["type"] == "multi"
    done = wait_for(client, job["id"], DONE, timeout=400)
    events = client.fine_tuning.list_events(job["id"]).data
    assert done.status == "completed", [e.message for e in events]
    evals = [e.message for e in events if e.message.startswith("Evaluation at step")]
    assert len(evals) == 3, evals  # before the first step, after each of 2
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


def test_an_openai_reinforcement_job_trains_reports_rewards_and_serves_the_model(
        server: LiveServer, jobs: dict[str, Any]) -> None:
    client, job = openai_client(server), jobs["reinforcement"]
    assert job.method is not None and job.method.type == "reinforcement" and job.method.reinforcement is not None
    assert job.method.reinforcement.grader.type == "multi"
    params = job.method.reinforcement.hyperparameters
    assert params is not None
    assert (params.n_epochs, params.batch_size, params.learning_rate_multiplier, params.compute_multiplier,
            params.eval_interval, params.eval_samples, params.reasoning_effort) == (1, 4, 5, 0.5, 1, 2, "low")
    deadline = time.monotonic() + 400
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job.id} stuck in {job.status}"
        time.sleep(0.5)
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert job.status == "succeeded" and job.fine_tuned_model, [e.message for e in events]
    metrics = [e.data for e in events if e.type == "metrics" and isinstance(e.data, dict)]
    train = sorted((m for m in metrics if "train_reward_mean" in m), key=lambda m: m["step"])
    valid = sorted((m for m in metrics if "valid_reward_mean" in m), key=lambda m: m["step"])
    assert [m["step"] for m in train] == [1, 2] and [m["step"] for m in valid] == [0, 1, 2]
    for m in train:  # OpenAI's shape: overall and per-grader scores; a group of 4·0.5 = 2 completions per prompt
        assert m["scores"]["train_reward_mean"] == m["train_mean_reward"]
        assert {g["name"] for g in m["scores"]["graders"]} == {"exact", "short"}
        assert 0 <= m["train_reward_mean"] <= 1 and 0 < m["completion_tokens_mean"] <= 128  # max_new_tokens
    assert all(0 <= m["scores"]["valid_reward_mean"] <= 1 for m in valid)
    assert any("train mean reward=" in e.message for e in events if e.type == "metrics")
    # tiny-llama's template has no reasoning effort: the job says so rather than ignoring it silently
    assert any("reasoning_effort 'low' has no effect" in e.message and e.level == "warn" for e in events)
    results = client.files.content(job.result_files[0]).text.splitlines()
    header = results[0].split(",")
    assert {"train_reward_mean", "valid_reward_mean", "full_valid_mean_reward"} <= set(header)
    assert [row.split(",")[0] for row in results[1:]] == ["0", "1", "2"]
    assert all(row.split(",")[header.index("train_reward_mean")] for row in results[2:])
    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "2+2="}])
    assert reply.choices[0].message.content is not None and reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_bad_grpo_requests_get_every_problem_in_one_400(server: LiveServer, tmp_path: Path) -> None:
    client = together_client(server)
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "1+1="},
                                            {"role": "assistant", "content": "2"}]}) + "\n")
    train = client.files.upload(sft).id
    bad = {"method": "grpo", "grader": {**GRADER["graders"]["exact"], "operation": "is"}, "group_size": 1,
           "temperature": 0, "dpo_beta": 0.1, "eval_interval": 2}
    with pytest.raises(together.BadRequestError) as caught:
        create(client, model=MODEL, training_file=train, training_method=bad)
    message = str(caught.value)
    for part in ("operation", "group_size must be >= 2", "temperature must be in (0, 2]",
                 "eval_interval=2 needs a validation_file",
                 "dpo_beta is only supported for DPO", "GRPO trains on reinforcement prompts"):
        assert part in message, part
    prompts_file = client.files.upload(prompts(tmp_path / "p.jsonl", 2)).id
    with pytest.raises(together.BadRequestError, match="use training_method grpo"):
        client.fine_tuning.create(training_file=prompts_file, model=MODEL)

    oa = openai_client(server)
    bad_grader = {**GRADER["graders"]["exact"], "operation": "is"}
    with pytest.raises(openai.BadRequestError) as refused:
        oa.fine_tuning.jobs.create(model=MODEL, training_file=train, method={  # type: ignore[typeddict-item]
            "type": "reinforcement", "reinforcement": {"grader": bad_grader, "hyperparameters": {
                "compute_multiplier": 100, "eval_interval": 3}}})
    message = str(refused.value)
    for part in ("operation", "compute_multiplier must be at most 16", "eval_interval=3 needs a validation_file",
                 "GRPO trains on reinforcement prompts"):
        assert part in message, part
