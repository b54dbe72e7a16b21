"""Real SFT runs on the built-in tiny model: through the module entry point, in process, stopped and
resumed, full and LoRA. Each run is a few seconds on one CPU thread."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tests.training import wandb_offline
from tests.training.samples import write_jsonl
from tunery.training.config import TrainConfig
from tunery.training.recipes import sft
from tunery.training.reporter import ListReporter
from tunery.training.session import MIN_BATCHES_PER_EPOCH

pytestmark = pytest.mark.slow

WANDB_KEY = "wandb-secret-key-" + "0123456789abcdef" * 3  # W&B wants 40+ characters


def config(tiny_llama: Path, qa_files: tuple[Path, Path], out: Path, **overrides: Any) -> TrainConfig:
    """fp32: the tests compare runs to 1e-4..1e-6, which bf16 (``precision: auto`` on a CPU with native
    bf16) does not hold; ``test_training_precision`` covers bf16."""
    values: dict[str, Any] = {
        "job_id": "ft-test", "base_model_dir": str(tiny_llama), "base_model_name": "tunery/tiny-llama",
        "train_file": str(qa_files[0]), "output_dir": str(out), "lora": {"r": 8, "dropout": 0.1},
        "n_epochs": 2, "learning_rate": 5e-3, "batch_size": 2, "max_seq_length": 128,
        "warmup_ratio": 0.1, "seed": 42, "precision": "fp32",
    }
    values.update(overrides)
    return TrainConfig(**values)


def curve(reporter: ListReporter) -> list[tuple[int, float, float, float]]:
    """(step, loss, learning rate, grad norm) per step: everything but the timing."""
    return [(r["step"], r["values"]["train/loss"], r["values"]["train/learning_rate"], r["values"]["train/grad_norm"])
            for r in reporter.of_kind("metrics") if "train/loss" in r["values"]]


def trainable_names(path: Path) -> list[str]:
    return sorted(load_file(path / "adapter_model.safetensors"))


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)  # main() installs the reporter's handler
    yield
    signal.signal(signal.SIGTERM, previous)


# --- one LoRA run through the module entry point; several tests read its outputs ------------------


def offline_wandb_env(root: Path) -> dict[str, str]:
    """W&B writes its run (and its own logs and caches) under ``root``; no network."""
    return {"WANDB_MODE": "offline", **{f"WANDB_{d}_DIR": str(root / d.lower()) for d in ("CACHE", "CONFIG", "DATA")},
            "WANDB_DIR": str(root)}


@pytest.fixture(scope="module")
def lora_run(tiny_llama: Path, qa_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lora-run")
    cfg = config(tiny_llama, qa_files, root / "out", validation_file=str(qa_files[1]), n_epochs=3, n_evals=2,
                 n_checkpoints=2, wandb_api_key=WANDB_KEY, wandb_project_name="tunery-tests", wandb_name="lora-run")
    (root / "job.json").write_text(cfg.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **offline_wandb_env(root / "wandb")}
    proc = subprocess.run(
        [sys.executable, "-m", "tunery.training.recipes.sft", "--config", str(root / "job.json"),
         "--report", str(root / "report.jsonl")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (root / "report.jsonl").read_text().splitlines()]
    return {"root": root, "out": root / "out", "records": records, "log": proc.stdout + proc.stderr}


def test_lora_run_reports_events_metrics_and_checkpoints_in_order(lora_run: dict) -> None:
    records, out = lora_run["records"], lora_run["out"]
    # The tokenized training set is written before the first step (the SDK's tokenized-dataset download).
    [tokenized] = [i for i, r in enumerate(records) if r.get("type") == "tokenized_dataset"]
    assert Path(records[tokenized]["path"]).is_file()
    records = records[:tokenized] + records[tokenized + 1:]
    assert (records[0]["type"], records[0]["wandb_url"]) == ("wandb_init", None)  # offline: no URL
    records = records[1:]
    start = records[0]
    assert (start["kind"], start["type"]) == ("event", "training_start")
    total, half = start["total_steps"], start["total_steps"] // 2
    assert total == 18 and start["param_count"] > 800_000 and start["token_count"] > 0
    assert start["batch_size"] == 2

    steps = [r["step"] for r in records if r["kind"] == "metrics" and "train/loss" in r["values"]]
    assert steps == list(range(1, total + 1))
    first = next(r for r in records if r["kind"] == "metrics")["values"]
    assert set(first) == {"train/loss", "train/token_accuracy", "train/learning_rate", "train/epoch",
                          "train/grad_norm", "train/tokens_per_second"}
    assert 0 <= first["train/token_accuracy"] <= 1

    def where(kind: str, **match: Any) -> int:
        return next(i for i, r in enumerate(records)
                    if r["kind"] == kind and all(r.get(k) == v for k, v in match.items()))

    assert [r["step"] for r in records if r.get("type") == "eval_complete"] == [half, total]
    assert [r["epoch"] for r in records if r.get("type") == "epoch_complete"] == [1, 2, 3]
    middle = out / "checkpoints" / f"step-{half}"
    assert where("metrics", step=half) < where("event", type="eval_complete", step=half) \
        < where("checkpoint", step=half) < where("metrics", step=half + 1)
    assert records[where("checkpoint", step=half)] == {"kind": "checkpoint", "step": half, "path": str(middle),
                                                       "final": False}
    assert records[-2] == {"kind": "checkpoint", "step": total, "path": str(out / "final"), "final": True}
    assert records[-1]["type"] == "training_complete"
    assert not [r for r in records if r.get("level") == "error"]

    assert sorted(p.name for p in middle.iterdir()) == ["adapter", "model", "state"]
    assert sorted(p.name for p in (out / "final").iterdir()) == ["adapter", "model"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == [middle.name]  # nothing half-written left

    losses = [r["values"]["train/loss"] for r in records if r["kind"] == "metrics" and "train/loss" in r["values"]]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    evals = [r["values"] for r in records if r["kind"] == "metrics" and "eval/loss" in r["values"]]
    assert len(evals) == 2 and evals[1]["eval/loss"] < losses[0]
    accuracy = [r["values"]["train/token_accuracy"] for r in records if r["kind"] == "metrics"
                and "train/loss" in r["values"]]
    assert sum(accuracy[-3:]) > sum(accuracy[:3])  # learning shows as more tokens guessed right
    assert 0 <= evals[1]["eval/token_accuracy"] <= 1


def test_exports_carry_the_config_without_secrets(lora_run: dict) -> None:
    for part in ("adapter", "model"):
        text = (lora_run["out"] / "final" / part / "training_config.json").read_text()
        assert "wandb-secret-key" not in text
        saved = json.loads(text)
        assert saved["job_id"] == "ft-test" and saved["batch_size"] == 2 and saved["max_seq_length"] == 128


def test_wandb_run_gets_every_metrics_record_and_never_the_key(lora_run: dict) -> None:
    [run_file] = (lora_run["root"] / "wandb" / "wandb").glob("offline-run-*/run-ft-test.wandb")
    logged = {row["_step"]: row for row in wandb_offline.history(run_file)}
    reported = [r for r in lora_run["records"] if r["kind"] == "metrics"]
    expected: dict[int, dict[str, float]] = {}
    for r in reported:  # a step's train and eval records arrive as two logs of one W&B step
        expected.setdefault(r["step"], {}).update(r["values"])
    assert sorted(logged) == sorted(expected) and len(expected) == 18
    for step, values in expected.items():
        assert {k: logged[step][k] for k in values} == pytest.approx(values, rel=1e-12), step
    run_config = wandb_offline.config(run_file)
    assert run_config["job_id"] == "ft-test" and run_config["batch_size"] == 2 and run_config["total_steps"] == 18
    assert "wandb_api_key" not in run_config

    # The key went to W&B, and nowhere else: not the report, the exports, the logs, W&B's own files.
    leaks = [p for p in lora_run["root"].rglob("*") if p.is_file() and p.name != "job.json"
             and WANDB_KEY.encode() in p.read_bytes()]
    assert leaks == [] and WANDB_KEY not in lora_run["log"]


def test_final_model_and_adapter_load_generate_and_agree(lora_run: dict, tiny_llama: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = lora_run["out"] / "final"
    tokenizer = AutoTokenizer.from_pretrained(final / "model")
    merged = AutoModelForCausalLM.from_pretrained(final / "model").eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Color of thing 3?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    generated = merged.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids.shape[1]

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), final / "adapter").eval()
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        base = adapted.get_base_model()
        with adapted.disable_adapter():
            untrained = base(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, untrained, atol=1e-2)  # the adapter does something


def test_every_trainable_parameter_changed_and_frozen_ones_did_not(lora_run: dict, tiny_llama: Path) -> None:
    out = lora_run["out"]
    [middle_dir] = (out / "checkpoints").iterdir()
    middle = load_file(middle_dir / "adapter" / "adapter_model.safetensors")
    final = load_file(out / "final" / "adapter" / "adapter_model.safetensors")
    assert len(final) == 4 * 7 * 2  # 4 layers x 7 linear modules x (A, B)
    for name, tensor in final.items():
        assert not torch.equal(tensor, middle[name]), f"{name} did not change in the second half"
        if "lora_B" in name:
            assert torch.count_nonzero(middle[name]) > 0, f"{name} is still at its zero init"

    base = load_file(tiny_llama / "model.safetensors")
    merged = load_file(out / "final" / "model" / "model.safetensors")
    assert set(merged) == set(base)
    for name, tensor in base.items():
        adapted = name.endswith("proj.weight")
        assert torch.equal(merged[name], tensor) != adapted, name


# --- in-process runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, qa_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("reference")
    reporter = ListReporter()
    result = sft.run(config(tiny_llama, qa_files, out), reporter)
    return {"result": result, "curve": curve(reporter), "reporter": reporter}


def test_same_seed_gives_identical_metrics(reference: dict, tiny_llama: Path, qa_files: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    reporter = ListReporter()
    sft.run(config(tiny_llama, qa_files, tmp_path / "a"), reporter)
    assert curve(reporter) == reference["curve"]
    assert len(reference["curve"]) == 12
    other = ListReporter()
    sft.run(config(tiny_llama, qa_files, tmp_path / "b", seed=7, n_epochs=1), other)
    assert curve(other) != reference["curve"][:4]


def test_stop_and_resume_continue_the_same_loss_curve(reference: dict, tiny_llama: Path,
                                                     qa_files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    stopping = ListReporter(stop_when=lambda r: len(r.of_kind("metrics")) >= 3)  # mid-epoch: 6 steps each
    result = sft.run(config(tiny_llama, qa_files, out), stopping)
    assert (result.status, result.step) == ("stopped", 3)
    assert stopping.of_kind("checkpoint") == [
        {"kind": "checkpoint", "step": 3, "path": str(out / "checkpoints" / "step-3"), "final": False}]
    assert not (out / "final").exists()

    resumed = ListReporter()
    result = sft.run(config(tiny_llama, qa_files, out, resume_from=str(out / "checkpoints" / "step-3")), resumed)
    assert result.status == "completed"
    assert resumed.events("training_start")[0]["resumed_from_step"] == 3
    combined = curve(stopping) + curve(resumed)
    assert [c[0] for c in combined] == list(range(1, 13))
    for got, expected in zip(combined, reference["curve"], strict=True):
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    epochs = [e["epoch"] for e in stopping.events("epoch_complete") + resumed.events("epoch_complete")]
    assert epochs == [1, 2]


def test_full_fine_tuning_changes_every_parameter(tiny_llama: Path, qa_files: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    reporter = ListReporter()
    result = sft.run(config(tiny_llama, qa_files, tmp_path / "out", lora=None, n_epochs=1, learning_rate=1e-3,
                            weight_decay=0.01), reporter)
    final = Path(str(result.path))
    assert sorted(p.name for p in final.iterdir()) == ["model"]
    base = load_file(tiny_llama / "model.safetensors")
    trained = load_file(final / "model" / "model.safetensors")
    unchanged = [name for name, tensor in base.items() if torch.equal(trained[name], tensor)]
    assert unchanged == []
    start = reporter.events("training_start")[0]
    assert start["trainable_param_count"] == start["param_count"]


def test_unpacked_batches_from_pretokenized_parquet(tiny_llama: Path, tokenizer: Any, tmp_path: Path) -> None:
    rows = []
    for i in range(24):
        prompt = tokenizer(f"Say {i}:", add_special_tokens=True)["input_ids"]
        answer = tokenizer(f" {i}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    reporter = ListReporter()
    cfg = config(tiny_llama, (tmp_path / "train.parquet", tmp_path), tmp_path / "out", file_type="parquet",
                 packing=False, batch_size=4, n_epochs=2, learning_rate=1e-2)
    result = sft.run(cfg, reporter)
    losses = [loss for _, loss, _, _ in curve(reporter)]
    assert result.status == "completed" and len(losses) == 12
    assert losses[-1] < losses[0]


def test_batch_size_max_keeps_several_steps_per_epoch(tiny_llama: Path, qa_files: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    reporter = ListReporter(stop_when=lambda r: True)  # only the plan is of interest
    sft.run(config(tiny_llama, qa_files, tmp_path / "out", batch_size="max"), reporter)
    start = reporter.events("training_start")[0]
    assert start["batch_size"] == 1 and start["total_steps"] >= 2 * MIN_BATCHES_PER_EPOCH


def test_early_stopping_promotes_the_best_weights(tiny_llama: Path, qa_files: tuple[Path, Path],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    losses = iter([3.0, 1.0, 1.5, 1.6, 0.5, 0.4])  # eval 1 is warmup; best at eval 2; halt after 2 worse
    monkeypatch.setattr(sft, "_evaluate", lambda s, data: (next(losses), {}))
    out = tmp_path / "out"
    reporter = ListReporter()
    cfg = config(tiny_llama, qa_files, out, n_epochs=3, validation_file=str(qa_files[1]), n_evals=6,
                 n_checkpoints=6, early_stopping_enabled=True, early_stopping_patience=2,
                 early_stopping_warmup_evals=1)
    result = sft.run(cfg, reporter)
    # 18 steps: evals and checkpoints every 3 steps; best at step 6, halted at step 12
    assert (result.status, result.step, result.early_stopped) == ("completed", 12, True)
    [event] = reporter.events("early_stopped")
    assert (event["best_step"], event["best_metric"], event["step"]) == (6, 1.0, 12)
    assert reporter.records[-2] == {"kind": "checkpoint", "step": 12, "path": str(out / "final"), "final": True}
    best = load_file(out / "checkpoints" / "step-6" / "adapter" / "adapter_model.safetensors")
    final = load_file(out / "final" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(final[name], tensor) for name, tensor in best.items())


# --- the entry point's exit codes ------------------------------------------------------------------


def test_bad_data_exits_2_and_other_failures_exit_1(tiny_llama: Path, tmp_path: Path) -> None:
    no_assistant = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]}])
    cfg = config(tiny_llama, (no_assistant, tmp_path), tmp_path / "out")
    (tmp_path / "job.json").write_text(cfg.model_dump_json())
    assert sft.main(["--config", str(tmp_path / "job.json"), "--report", str(tmp_path / "r1.jsonl")]) == 2
    [error] = [json.loads(line) for line in (tmp_path / "r1.jsonl").read_text().splitlines()]
    assert (error["type"], error["level"], error["user_error"]) == ("error", "error", True)
    assert "were dropped" in error["message"]

    broken = cfg.model_copy(update={"base_model_dir": str(tmp_path / "missing")})
    (tmp_path / "job.json").write_text(broken.model_dump_json())
    assert sft.main(["--config", str(tmp_path / "job.json"), "--report", str(tmp_path / "r2.jsonl")]) == 1
    [error] = [json.loads(line) for line in (tmp_path / "r2.jsonl").read_text().splitlines()]
    assert error["type"] == "error" and error["user_error"] is False

    (tmp_path / "job.json").write_text(json.dumps({**json.loads(cfg.model_dump_json()), "learning_rate": 7}))
    assert sft.main(["--config", str(tmp_path / "job.json"), "--report", str(tmp_path / "r3.jsonl")]) == 2
    [error] = [json.loads(line) for line in (tmp_path / "r3.jsonl").read_text().splitlines()]
    assert "learning_rate must be in (0, 1]; got 7" in error["message"]


def test_init_from_an_adapter_continues_training_it(lora_run: dict, tiny_llama: Path, qa_files: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    parent = lora_run["out"] / "final" / "adapter"
    first_of_parent = next(r for r in lora_run["records"] if r["kind"] == "metrics")["values"]["train/loss"]
    reporter = ListReporter()
    sft.run(config(tiny_llama, qa_files, tmp_path / "out", init_from=str(parent), n_epochs=1,
                   lora={"r": 4}), reporter)
    assert curve(reporter)[0][1] < 0.7 * first_of_parent  # starts where the parent ended
    adapter = load_file(tmp_path / "out" / "final" / "adapter" / "adapter_model.safetensors")
    assert next(t for n, t in adapter.items() if "lora_A" in n).shape[0] == 8  # the parent's rank, not 4


def test_init_from_a_model_dir_puts_a_fresh_adapter_on_it(lora_run: dict, tiny_llama: Path,
                                                          qa_files: tuple[Path, Path], tmp_path: Path) -> None:
    parent = lora_run["out"] / "final" / "model"
    reporter = ListReporter()
    sft.run(config(tiny_llama, qa_files, tmp_path / "out", init_from=str(parent), n_epochs=1, lora={"r": 4}),
            reporter)
    first_of_parent = next(r for r in lora_run["records"] if r["kind"] == "metrics")["values"]["train/loss"]
    assert curve(reporter)[0][1] < 0.7 * first_of_parent
    merged = load_file(tmp_path / "out" / "final" / "model" / "model.safetensors")
    parent_weights = load_file(parent / "model.safetensors")
    assert torch.equal(merged["model.embed_tokens.weight"], parent_weights["model.embed_tokens.weight"])
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           parent_weights["model.layers.0.self_attn.q_proj.weight"])


def test_a_model_without_chat_template_trains_on_conversations(tiny_llama: Path, qa_files: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny_llama, bare)
    (bare / "chat_template.jinja").unlink()
    reporter = ListReporter()
    result = sft.run(config(bare, qa_files, tmp_path / "out", n_epochs=1), reporter)
    assert result.status == "completed"
    assert (Path(str(result.path)) / "model" / "chat_template.jinja").read_text().startswith("{{- bos_token -}}")
