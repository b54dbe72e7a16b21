"""Two processes under torchrun (gloo on CPU), launched exactly as the worker launches them, follow
the one-process loss curve: same global batch, same steps, same evals, same final weights. LoRA
replicates the model on both (DDP); a full fine-tune shards it over them (FSDP2).

Tolerance: the two runs differ only in fp32 summation order (a step's rows are split over two
ranks and padded to other widths, and the two halves of the gradient are added by the
all-reduce, or the reduce-scatter). Measured over these runs: losses and gradient norms within 2e-6
relative, eval losses within 4e-7 (DDP); sharded, losses within 2.2e-7, gradient norms 4.4e-6, eval
losses 4.5e-8. 1e-4 leaves a 50x margin for other CPUs' kernels, while every sharding
mistake shows far above it: a row dropped or seen twice changes that step's loss by percents,
gradients not averaged make the ranks' weights (and so the losses) part within a step or two, and
a loss scaled by the wrong count changes the reported gradient norm by a factor of 2 (the loss
curve alone would not show that: Adam's update does not depend on the gradient's scale).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.job_rows import claimed_job, sqlite_database
from tests.training.samples import preference_pairs, qa_conversations, write_jsonl
from tunery.storage import LocalBlobStore
from tunery.training.config import TrainConfig
from tunery.training.recipes import dpo, sft
from tunery.training.reporter import ListReporter
from tunery.worker.relay import Relay
from tunery.worker.run_job import training_command

pytestmark = pytest.mark.slow

REL = 1e-4


def sft_config(tiny_llama: Path, data: Path, out: Path, **overrides: Any) -> TrainConfig:
    # 31 unpacked rows, 6 rows a step (3 per micro-batch, 2 micro-batches): each epoch ends with a
    # one-row step, in which rank 1 has nothing to do but must still join the gradient average.
    values: dict[str, Any] = {
        "job_id": "ft-ddp", "base_model_dir": str(tiny_llama), "base_model_name": "tunery/tiny-llama",
        "train_file": str(data / "train.jsonl"), "validation_file": str(data / "val.jsonl"),
        "output_dir": str(out), "lora": {"r": 8}, "n_epochs": 2, "learning_rate": 5e-3, "batch_size": 3,
        "gradient_accumulation_steps": 2, "packing": False, "max_seq_length": 64, "n_evals": 2,
        "n_checkpoints": 1, "seed": 5, "precision": "fp32",  # compared to 1e-4; see test_training_sft.config
    }
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-data")
    write_jsonl(root / "train.jsonl", qa_conversations(31, seed=2))
    write_jsonl(root / "val.jsonl", qa_conversations(7, seed=3))
    write_jsonl(root / "pairs.jsonl", preference_pairs(13))
    return root


def launch(cfg: TrainConfig, root: Path) -> tuple[subprocess.Popen[str], Path]:
    """Start the recipe the way the worker does with TUNERY_PROCESSES_PER_JOB=2."""
    root.mkdir(parents=True, exist_ok=True)
    config_path, report = root / "job.json", root / "report.jsonl"
    config_path.write_text(cfg.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(training_command(cfg, config_path, report, processes=2), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, report


def records(report: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []


def training_start(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's training_start event (the tokenized training set's record comes before it)."""
    return next(r for r in recs if r.get("type") == "training_start")


def curve(recs: list[dict[str, Any]]) -> list[tuple[int, str, float]]:
    """(step, metric, value) for the losses, gradient norms and eval metrics: all but timings."""
    keys = ("train/loss", "train/grad_norm", "train/learning_rate", "train/reward_accuracy", "eval/loss",
            "eval/reward_accuracy")
    return [(r["step"], k, r["values"][k]) for r in recs if r["kind"] == "metrics" for k in keys if k in r["values"]]


def assert_same_curve(got: list[tuple[int, str, float]], expected: list[tuple[int, str, float]]) -> None:
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in expected]
    for (step, key, value), (_, _, want) in zip(got, expected, strict=True):
        assert value == pytest.approx(want, rel=REL, abs=1e-7), (step, key)


def assert_same_weights(got: Path, expected: Path) -> None:
    """Tensor by tensor, within 1% of the tensor's norm. Not tighter: where a gradient element is
    tiny, Adam's normalised update is about +-lr whatever its size, so a 1e-7 difference that flips
    its sign moves that weight by 2 x lr; the loss curves are the exact measure."""
    trained, reference = load_file(got), load_file(expected)
    assert set(trained) == set(reference)
    for name, tensor in reference.items():
        assert float((trained[name] - tensor).norm()) <= 1e-2 * float(tensor.norm()) + 1e-8, name


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


# Full fine-tuning at LoRA's rate of 5e-3 would blow the tiny model up within a few steps.
LORA_DDP = {"lora": {"r": 8}}
FULL_FSDP = {"lora": None, "learning_rate": 3e-4}


@pytest.mark.parametrize("overrides", [LORA_DDP, FULL_FSDP], ids=["lora-ddp", "full-fsdp"])
def test_two_processes_stop_resume_and_match_one_process(tiny_llama: Path, sft_data: Path, tmp_path: Path,
                                                         overrides: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    full = overrides["lora"] is None
    one = ListReporter()
    sft.run(sft_config(tiny_llama, sft_data, tmp_path / "one", **overrides), one)
    expected = curve(one.records)
    total = one.events("training_start")[0]["total_steps"]
    assert total == 12 and len(one.events("eval_complete")) == 2

    # Two processes, stopped the way the worker cancels a job: SIGTERM to torchrun, which passes it
    # on; rank 0 decides to stop at the next step boundary and every rank stops there with it.
    out = tmp_path / "two"
    proc, report = launch(sft_config(tiny_llama, sft_data, out, **overrides), tmp_path / "first")
    deadline = time.monotonic() + 240
    while not any(r["kind"] == "metrics" for r in records(report)) and proc.poll() is None:
        assert time.monotonic() < deadline, "no step reported"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, log = finish(proc)
    first = records(report)
    assert code != 0, log  # torchrun reports a stopped run as a failure; the worker knows why
    [ckpt] = [r for r in first if r["kind"] == "checkpoint"]
    assert not ckpt["final"] and 1 <= ckpt["step"] < total, log
    assert [e for e in first if e.get("level") == "error"] == []
    start = training_start(first)
    assert start["batch_size"] == 3 and start["sharded"] is full

    if full:  # the checkpoint holds whole tensors, as one process writes them: one process resumes it too
        alone = ListReporter()
        sft.run(sft_config(tiny_llama, sft_data, tmp_path / "alone", resume_from=ckpt["path"], **overrides), alone)
        assert_same_curve(curve(first) + curve(alone.records), expected)

    proc, report = launch(sft_config(tiny_llama, sft_data, out, resume_from=ckpt["path"], **overrides),
                          tmp_path / "second")
    code, log = finish(proc)
    assert code == 0, log
    second = records(report)
    assert training_start(second)["resumed_from_step"] == ckpt["step"]
    assert second[-1]["type"] == "training_complete" and second[-2]["final"] is True
    assert_same_curve(curve(first) + curve(second), expected)
    assert [e["epoch"] for e in first + second if e.get("type") == "epoch_complete"] == [1, 2]
    weights = "model/model.safetensors" if full else "adapter/adapter_model.safetensors"
    assert_same_weights(out / "final" / weights, tmp_path / "one" / "final" / weights)
    exported = AutoModelForCausalLM.from_pretrained(out / "final" / "model")
    assert exported.config.architectures == ["LlamaForCausalLM"]
    # rank 0 alone wrote (the tokenized training set too, once)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "final", "tokenized-train.parquet"]


def test_two_processes_train_dpo_fully_like_one(tiny_llama: Path, sft_data: Path, tmp_path: Path) -> None:
    """Sharded (FSDP2): the reference log-probabilities and evals (each rank scoring its share, the
    one with fewer batches running idle passes), and early stopping, whose best weights are gathered
    onto rank 0 and scattered back into the shards for the export."""
    def config(out: Path) -> TrainConfig:
        # min_delta 100: the second eval (the last step) never improves enough, so the run stops
        # early there, and the final model is the weights at the first eval, where a checkpoint is too.
        return TrainConfig(job_id="ft-ddp-dpo", method="dpo", base_model_dir=str(tiny_llama),
                           base_model_name="tunery/tiny-llama", train_file=str(sft_data / "pairs.jsonl"),
                           validation_file=str(sft_data / "pairs.jsonl"), output_dir=str(out), lora=None,
                           n_epochs=2, learning_rate=1e-4, batch_size=2, max_seq_length=32, n_evals=2,
                           n_checkpoints=2, early_stopping_enabled=True, early_stopping_patience=1,
                           early_stopping_warmup_evals=0, early_stopping_min_delta=100.0, seed=1, precision="fp32")

    one = ListReporter()
    dpo.run(config(tmp_path / "one"), one)
    proc, report = launch(config(tmp_path / "two"), tmp_path / "two-run")
    code, log = finish(proc)
    assert code == 0, log
    expected = curve(one.records)
    assert len(expected) > 10
    got = records(report)
    assert training_start(got)["sharded"] is True
    assert_same_curve(curve(got), expected)
    [stopped] = [r for r in got if r.get("type") == "early_stopped"]
    [ckpt] = [r for r in got if r["kind"] == "checkpoint" and not r["final"]]
    assert ckpt["step"] == stopped["best_step"] < stopped["step"]
    final = load_file(tmp_path / "two" / "final" / "model" / "model.safetensors")
    best = load_file(Path(ckpt["path"]) / "model" / "model.safetensors")
    assert all(torch.equal(final[name], best[name]) for name in best)
    assert_same_weights(tmp_path / "two" / "final" / "model" / "model.safetensors",
                        tmp_path / "one" / "final" / "model" / "model.safetensors")


def test_a_user_error_under_torchrun_stays_the_users(tiny_llama: Path, sft_data: Path, tmp_path: Path) -> None:
    """torchrun exits 1 whatever failed; the worker reads whose fault it was from the report."""
    cfg = sft_config(tiny_llama, sft_data, tmp_path / "out", train_file=str(sft_data / "pairs.jsonl"))
    proc, report = launch(cfg, tmp_path / "run")
    code, out = finish(proc)
    assert code != 0, out
    db = sqlite_database(tmp_path / "tunery.db")
    claimed_job(db, "ft-ddp", "w")
    relay = Relay(db=db, blobs=LocalBlobStore(tmp_path / "blobs"), job_id="ft-ddp", worker_id="w", report_path=report)
    relay.pump()
    assert relay.error_is_users and relay.error_message, out
    db.dispose()
