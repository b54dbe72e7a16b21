"""GRPO runs on the tiny model: metrics, checkpoints and resume, LoRA and full with the KL term, bad
prompts as user errors, and the proof that it learns (eval reward rises; at learning rate 0 it does not)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tunery.errors import DatasetInvalid
from tunery.training.config import TrainConfig
from tunery.training.data.prompts import load_prompts
from tunery.training.recipes import grpo, sft
from tunery.training.reporter import ListReporter

EXACT = {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
         "reference": "{{ item.answer }}", "operation": "eq"}
CODE = {"type": "python", "name": "digits", "source": "def grade(sample, item):\n"
        "    text = sample['output_text']\n    return sum(c.isdigit() for c in text) / max(len(text), 1)\n"}
CLOSE = {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
         "reference": "{{ item.answer }}", "evaluation_metric": "fuzzy_match"}
# No python grader here: each python grade is a fresh sandboxed process (about 0.1 s on the busy box);
# the full fine-tuning test below and tests/e2e/test_jobs_grpo.py grade with one inside a training run.
MULTI = {"type": "multi", "name": "combo", "graders": {"exact": EXACT, "close": CLOSE},
         "calculate_output": "0.7 * exact + 0.3 * close"}


def additions(pairs: list[tuple[int, int]], with_answer: bool) -> list[dict[str, Any]]:
    rows = []
    for a, b in pairs:
        user = {"role": "user", "content": f"{a}+{b}="}
        rows.append({"messages": [user, {"role": "assistant", "content": str(a + b)}]} if with_answer
                    else {"messages": [user], "answer": str(a + b)})
    return rows


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PAIRS = [(a, b) for a in range(5) for b in range(5)]
random.Random(0).shuffle(PAIRS)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("grpo")
    return {"sft": write(root / "sft.jsonl", additions(PAIRS, True)),
            "train": write(root / "train.jsonl", additions((PAIRS * 8)[:192], False)),  # 12 rollouts of 16
            "small": write(root / "small.jsonl", additions(PAIRS[:16], False)),
            "val": write(root / "val.jsonl", additions(PAIRS, False))}


@pytest.fixture(scope="module")
def formatted(tiny_llama: Path, files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama after a short SFT (full fine-tuning) that stops half way to memorising the additions:
    it answers in the format, and rightly about a quarter of the time at temperature 1."""
    out = tmp_path_factory.mktemp("sft")
    cfg = TrainConfig(job_id="sft", base_model_dir=str(tiny_llama), output_dir=str(out), train_file=files["sft"],
                      lora=None, n_epochs=12, learning_rate=3e-3, batch_size=16, lr_scheduler_type="linear",
                      device="cpu", precision="fp32", seed=0)
    sft.run(cfg, ListReporter())
    return out / "final" / "model"


def grpo_config(base: Path, start: Path, files: dict[str, str], out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "job_id": "ft-grpo", "method": "grpo", "base_model_dir": str(base), "init_from": str(start),
        "train_file": files["train"], "validation_file": files["val"], "output_dir": str(out), "lora": {"r": 16},
        "n_epochs": 1, "learning_rate": 2e-3, "min_lr_ratio": 1.0, "batch_size": 16, "lr_scheduler_type": "linear",
        "device": "cpu", "precision": "fp32", "seed": 1, "grader": EXACT, "grpo_group_size": 8,
        "grpo_max_new_tokens": 4, "grpo_beta": 0.04, "eval_interval": 6, "eval_samples": 8, "max_seq_length": 64,
    }
    values.update(overrides)
    return TrainConfig(**values)


def train_steps(reporter: ListReporter) -> dict[int, dict[str, float]]:
    return {r["step"]: r["values"] for r in reporter.of_kind("metrics") if "train/loss" in r["values"]}


@pytest.mark.slow
def test_grpo_raises_the_eval_reward_and_learning_rate_zero_does_not(
        tiny_llama: Path, formatted: Path, files: dict[str, str], tmp_path: Path) -> None:
    """The recorded proof (bench/grpo_learns.py), shorter: 12 steps of 16 prompts x 8 completions. The eval
    reward is the exact-answer rate of 8 seeded samples for each of the 25 additions (200 answers), the
    same seeds at every eval; it started at 0.23 and rose by 0.28-0.37 over 12 steps with GRPO seeds 1-4."""
    curves = {}
    for name, lr, steps in (("learns", 2e-3, 12), ("lr0", 0.0, 2)):
        cfg = grpo_config(tiny_llama, formatted, files, tmp_path / name, eval_interval=6 if lr else 2)
        cfg = cfg.model_copy(update={"learning_rate": lr})  # the config refuses 0; no user would ask for it
        reporter = ListReporter(stop_when=lambda r, steps=steps: len(r.metric_steps()) >= steps)
        grpo.run(cfg, reporter)
        curves[name] = [r for _, r in reporter.metric_steps("eval/reward")]
    learns, flat = curves["learns"], curves["lr0"]
    assert len(learns) == 3 and len(flat) == 2, curves  # before the first step, then every 6 (2) steps
    assert flat == [learns[0]] * 2, curves  # unchanged weights draw the same seeded answers
    # 0.15 is 30 of the 200 answers: beyond what sampling noise could give even with fresh seeds (sd ~0.03)
    assert learns[1] > learns[0] and learns[2] >= learns[0] + 0.15, curves


@pytest.fixture(scope="module")
def lora_run(tiny_llama: Path, formatted: Path, files: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """16 prompts, 8 per rollout, 2 steps per rollout: 4 steps, a checkpoint after step 2. That run whole;
    then resumed from its checkpoint (as a restarted job is: its last checkpoint) and stopped at step 3,
    in the middle of a rollout (as a pause does); then resumed from there to the end."""
    out = tmp_path_factory.mktemp("lora")
    cfg = grpo_config(tiny_llama, formatted, files, out / "whole", grader=MULTI, grpo_beta=0.1, grpo_iterations=2,
                      train_file=files["small"], validation_file=files["small"], batch_size=8, grpo_group_size=4,
                      n_checkpoints=2, eval_interval=0, n_evals=1, eval_samples=1)
    whole = ListReporter()
    result = grpo.run(cfg, whole)
    checkpoint = out / "whole" / "checkpoints" / "step-2"
    stopping = ListReporter(stop_when=lambda r: len(r.metric_steps()) >= 1)
    stopped = grpo.run(cfg.model_copy(update={"resume_from": str(checkpoint), "output_dir": str(out / "a")}), stopping)
    resumed = ListReporter()
    ended = grpo.run(cfg.model_copy(update={"resume_from": stopped.path, "output_dir": str(out / "b")}), resumed)
    return {"whole": whole, "result": result, "stopping": stopping, "stopped": stopped, "resumed": resumed,
            "ended": ended}


@pytest.mark.slow
def test_a_lora_run_reports_rl_metrics_per_step(lora_run: dict[str, Any]) -> None:
    metrics = list(train_steps(lora_run["whole"]).values())
    assert len(metrics) == 4
    for key in ("train/reward", "train/reward_std", "train/grader/exact", "train/grader/close", "train/kl",
                "train/clip_fraction", "train/completion_length", "train/tokens_per_second",
                "train/sampling_tokens_per_second", "train/grader_errors", "train/learning_rate"):
        assert all(key in m for m in metrics), key
    assert metrics[0]["train/kl"] == 0.0  # the first step's policy is the reference
    assert metrics[1]["train/kl"] > 0.0  # the second step reuses the rollout after one update
    assert metrics[1]["train/clip_fraction"] >= 0.0
    assert all(0 < m["train/completion_length"] <= 4 for m in metrics)


@pytest.mark.slow
def test_a_run_resumed_from_its_checkpoint_repeats_the_uninterrupted_run(lora_run: dict[str, Any]) -> None:
    """Weights, optimizer, RNGs and the rollout's seed all come back: step 3 after a resume from step 2 is
    the uninterrupted run's step 3."""
    assert lora_run["stopping"].events("training_start")[0]["resumed_from_step"] == 2
    [(step, again)] = train_steps(lora_run["stopping"]).items()
    first = train_steps(lora_run["whole"])[3]
    assert step == 3 and again["train/reward"] == first["train/reward"]
    for key in ("train/loss", "train/kl", "train/grad_norm", "train/completion_length"):
        assert again[key] == pytest.approx(first[key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_stop_resume_in_the_middle_of_a_rollout_continues_the_run_to_the_end(lora_run: dict[str, Any]) -> None:
    stopped, resumed, ended = lora_run["stopped"], lora_run["resumed"], lora_run["ended"]
    assert stopped.status == "stopped" and stopped.step == 3 and ended.status == "completed"
    assert list(train_steps(resumed)) == [4] and ended.step == 4  # its rollout sampled again, then the end
    assert resumed.events("training_start")[0]["resumed_from_step"] == 3
    assert resumed.events("eval_complete") and Path(ended.path or "").joinpath("adapter").is_dir()


@pytest.mark.slow
def test_every_lora_weight_moved_from_the_start(lora_run: dict[str, Any]) -> None:
    final = load_file(Path(lora_run["result"].path) / "adapter" / "adapter_model.safetensors")
    assert all(t.abs().sum() > 0 for k, t in final.items() if "lora_B" in k)


@pytest.mark.slow
def test_an_adapter_continued_from_a_parent_job_is_its_own_kl_reference(
        tiny_llama: Path, formatted: Path, files: dict[str, str], lora_run: dict[str, Any], tmp_path: Path) -> None:
    """A job continuing an adapter starts from base + that adapter; disabling the adapter would give the
    base alone, so the KL reference is a frozen copy of the start and the first step's KL is 0."""
    parent = Path(lora_run["result"].path) / "adapter"
    cfg = grpo_config(tiny_llama, parent, files, tmp_path, base_model_dir=str(formatted), grpo_beta=0.1,
                      batch_size=4, grpo_group_size=4, validation_file=None, eval_interval=0)
    reporter = ListReporter(stop_when=lambda r: len(r.metric_steps()) >= 1)
    grpo.run(cfg, reporter)
    assert train_steps(reporter)[1]["train/kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_full_fine_tuning_with_the_kl_term_keeps_a_frozen_reference(
        tiny_llama: Path, formatted: Path, files: dict[str, str], tmp_path: Path) -> None:
    cfg = grpo_config(tiny_llama, formatted, files, tmp_path, lora=None, grpo_beta=0.2, learning_rate=1e-3,
                      batch_size=2, grpo_group_size=4, validation_file=None, eval_interval=0, grader=CODE)
    reporter = ListReporter(stop_when=lambda r: len(r.metric_steps()) >= 3)
    result = grpo.run(cfg, reporter)
    kls = [v for _, v in reporter.metric_steps("train/kl")]
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 0.0
    start = load_file(formatted / "model.safetensors")
    moved = load_file(Path(result.path or "") / "model" / "model.safetensors")
    assert any(not torch.equal(start[k], moved[k]) for k in start)


def test_prompt_rows_are_checked_with_their_line(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "1+1="}], "answer": "2"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant",
                                                                                    "content": "a"}]}) + "\n")
    with pytest.raises(DatasetInvalid, match="line 2: the last message is the assistant's"):
        load_prompts(str(path), "jsonl", tokenizer, 32)
    path.write_text(json.dumps({"question": "1+1"}) + "\n")
    with pytest.raises(DatasetInvalid, match="line 1: a reinforcement row needs messages"):
        load_prompts(str(path), "jsonl", tokenizer, 32)
    path.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    loaded = load_prompts(str(path), "jsonl", tokenizer, 32)
    assert loaded.prompts[0].item == {"prompt": "1+1=", "answer": "2"}


def test_a_grpo_config_without_a_usable_grader_is_refused_with_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        TrainConfig(job_id="x", method="grpo", base_model_dir="m", train_file="t", output_dir=str(tmp_path),
                    grader={**EXACT, "input": "{{ output }}"}, grpo_group_size=1, grpo_epsilon=2)
    message = str(caught.value)
    assert "grader: input" in message and "grpo_group_size must be >= 2" in message
    assert "grpo_epsilon must be in (0, 1)" in message


@pytest.mark.slow
def test_a_score_model_grader_is_judged_in_the_training_process(
        tiny_llama: Path, formatted: Path, files: dict[str, str], tmp_path: Path) -> None:
    judge = {"type": "score_model", "name": "judge", "model": "tunery/tiny-llama", "range": [0, 9],
             "input": [{"role": "user", "content": "{{ item.messages[0].content }}{{ sample.output_text }}"}],
             "sampling_params": {"temperature": 0, "max_completions_tokens": 3}}
    cfg = grpo_config(tiny_llama, formatted, files, tmp_path, grader=judge, batch_size=2, grpo_group_size=2,
                      validation_file=None, eval_interval=0, judge_model_dirs={"tunery/tiny-llama": str(formatted)})
    reporter = ListReporter(stop_when=lambda r: len(r.metric_steps()) >= 1)
    grpo.run(cfg, reporter)
    [step] = [r["values"] for r in reporter.of_kind("metrics") if "train/loss" in r["values"]]
    # The formatted tiny model answers with digits, which the judge reads as its score (or fails to).
    assert 0 <= step["train/grader/judge"] <= 9 and step["train/grader_errors"] <= 4
    with pytest.raises(ValueError, match="not available as a judge here; available: none"):
        grpo_config(tiny_llama, formatted, files, tmp_path, grader=judge)
