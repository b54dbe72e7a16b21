"""DPO: pair rendering, the loss on hand-computed values, and real runs on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.samples import preference_pairs, qa_conversations, write_jsonl
from tests.training.test_training_render import trained_spans
from tunery.errors import TrainingFailed
from tunery.training.config import TrainConfig
from tunery.training.data.dataset import load_pairs
from tunery.training.data.render import IGNORE, Renderer
from tunery.training.losses import dpo_loss, sequence_logps
from tunery.training.recipes import dpo
from tunery.training.reporter import ListReporter

END = "<|im_end|>\n"


def test_a_pair_trains_only_the_final_reply(tokenizer: Any) -> None:
    record = {
        "input": {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"}]},
        "preferred_output": [{"role": "assistant", "content": "Goodbye!"}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    chosen, rejected = Renderer(tokenizer, True).preference(record)
    assert trained_spans(tokenizer, chosen) == [f"Goodbye!{END}"]
    assert trained_spans(tokenizer, rejected) == [f"No.{END}"]
    prompt = tokenizer.decode(chosen.input_ids).removesuffix(f"Goodbye!{END}")
    assert tokenizer.decode(rejected.input_ids) == f"{prompt}No.{END}"


def test_dpo_loss_on_hand_computed_values() -> None:
    chosen, rejected = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-1.5, -3.0]), torch.tensor([-1.5, -1.0])
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)
    # pair 0: 0.1 * ((-1 + 1.5) - (-2 + 1.5)) = 0.1 -> log(1 + e^-0.1); pair 1: margin 0 -> log 2
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.1)), math.log(2)])
    assert chosen_rewards.tolist() == pytest.approx([0.05, 0.0])
    assert rejected_rewards.tolist() == pytest.approx([-0.05, 0.0])
    simpo, _, _ = dpo_loss(chosen, rejected, torch.zeros(2), torch.zeros(2), beta=2.0, gamma=0.5)
    assert simpo.tolist() == pytest.approx([math.log1p(math.exp(-(2.0 - 0.5))), math.log1p(math.exp(4.0 + 0.5))])


def test_sequence_logps_sums_per_segment() -> None:
    token_logps = torch.log(torch.tensor([[0.5, 0.75, 0.9, 1.0]]))
    targets = torch.tensor([[1, 1, 0, IGNORE]])
    segments = torch.tensor([[0, 0, 1, 2]])
    sums, counts = sequence_logps(token_logps, targets, segments, 3)
    assert sums[0].tolist() == pytest.approx([math.log(0.5) + math.log(0.75), math.log(0.9), 0.0])
    assert counts[0].tolist() == [2.0, 1.0, 0.0]


def test_load_pairs_rejects_sft_data_as_a_user_error(tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", qa_conversations(3))
    with pytest.raises(TrainingFailed, match="DPO trains on preference samples") as caught:
        load_pairs(path, "jsonl", Renderer(tokenizer, False), 64)
    assert caught.value.user_error


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return (write_jsonl(root / "train.jsonl", preference_pairs(32)),
            write_jsonl(root / "val.jsonl", preference_pairs(40)[32:]))


def dpo_config(tiny_llama: Path, files: tuple[Path, Path], out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "job_id": "ft-dpo", "method": "dpo", "base_model_dir": str(tiny_llama), "train_file": str(files[0]),
        "validation_file": str(files[1]), "n_evals": 1, "output_dir": str(out), "lora": {"r": 16},
        "n_epochs": 3, "learning_rate": 5e-3, "batch_size": 2, "max_seq_length": 64, "dpo_beta": 0.5, "seed": 3,
        "precision": "fp32",  # compared to 1e-5..1e-7; see test_training_sft.config
    }
    values.update(overrides)
    return TrainConfig(**values)


def losses(reporter: ListReporter, key: str = "train/loss") -> list[float]:
    return [loss for _, loss in reporter.metric_steps(key)]


@pytest.mark.slow
def test_dpo_learns_the_preference_and_resumes_exactly(tiny_llama: Path, pair_files: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    reporter = ListReporter()
    result = dpo.run(dpo_config(tiny_llama, pair_files, tmp_path / "a"), reporter)
    assert result.status == "completed"
    curve = losses(reporter)
    assert curve[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference before the first update
    assert sum(curve[-3:]) / 3 < 0.5 * math.log(2)
    assert sum(losses(reporter, "train/reward_accuracy")[-3:]) / 3 > 0.9
    assert sorted(p.name for p in (tmp_path / "a" / "final").iterdir()) == ["adapter", "model"]
    assert losses(reporter, "eval/reward_accuracy") and losses(reporter, "eval/loss")[0] < math.log(2)

    out = tmp_path / "b"
    stopping = ListReporter(stop_when=lambda r: len(r.of_kind("metrics")) >= 5)
    assert dpo.run(dpo_config(tiny_llama, pair_files, out), stopping).status == "stopped"
    resumed = ListReporter()
    dpo.run(dpo_config(tiny_llama, pair_files, out, resume_from=str(out / "checkpoints" / "step-5")), resumed)
    assert losses(stopping) + losses(resumed) == pytest.approx(curve, rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_simpo_and_rpo_full_fine_tuning_run(tiny_llama: Path, pair_files: tuple[Path, Path], tmp_path: Path) -> None:
    reporter = ListReporter()
    cfg = dpo_config(tiny_llama, pair_files, tmp_path / "out", lora=None, learning_rate=1e-3, n_epochs=1,
                     simpo_gamma=0.5, dpo_beta=2.0, rpo_alpha=0.5, n_evals=0, validation_file=None)
    result = dpo.run(cfg, reporter)
    assert result.status == "completed"
    curve = losses(reporter)
    assert all(math.isfinite(loss) for loss in curve)
    assert curve[0] > math.log(2)  # the margin γ and the NLL term add to log 2 at the start
    assert sorted(p.name for p in (tmp_path / "out" / "final").iterdir()) == ["model"]
