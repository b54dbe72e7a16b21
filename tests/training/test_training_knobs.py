"""The optimiser and adapter knobs of the create API, each shown to change training as documented:
weight_decay, max_grad_norm, gradient_accumulation_steps, lora_r/alpha/dropout/trainable modules,
and the DPO variants dpo_reference_free and dpo_normalize_logratios_by_length."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.training.test_training_dpo import dpo_config, losses, pair_files  # noqa: F401 - pytest fixture
from tests.training.test_training_sft import config
from tunery.training.data.collate import collate
from tunery.training.data.dataset import load_examples
from tunery.training.data.packing import epoch_batches
from tunery.training.data.render import Renderer
from tunery.training.model import load_for_training
from tunery.training.recipes import dpo, sft
from tunery.training.reporter import ListReporter
from tunery.training.session import build_optimizer

pytestmark = pytest.mark.slow


def test_weight_decay_applies_to_matrices_only(tiny_llama: Path, qa_files: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = config(tiny_llama, qa_files, tmp_path, lora=None, weight_decay=0.1)
    loaded = load_for_training(cfg)
    groups = build_optimizer(loaded, cfg).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    spared = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    names = {id(p): n for n, p in loaded.trainable_parameters}
    assert decayed | spared == set(names) and not decayed & spared
    assert all("norm" in names[i] for i in spared) and spared  # llama has no biases; norms are 1-D
    assert all(loaded.model.get_parameter(names[i]).ndim == 2 for i in decayed)


class GradientNorms:
    """Records the gradient norm the optimiser steps with (after any clipping)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.norms: list[float] = []
        step = torch.optim.AdamW.step

        def recording_step(opt: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
            self.norms.append(float(torch.linalg.vector_norm(norms)))
            return step(opt, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)


@pytest.mark.parametrize("max_grad_norm", [0.05, 0.0])
def test_max_grad_norm_clips_and_zero_disables_clipping(tiny_llama: Path, qa_files: tuple[Path, Path],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         max_grad_norm: float) -> None:
    stepped = GradientNorms(monkeypatch)
    reporter = ListReporter()
    sft.run(config(tiny_llama, qa_files, tmp_path, n_epochs=1, max_grad_norm=max_grad_norm), reporter)
    reported = [v for _, v in reporter.metric_steps("train/grad_norm")]  # before clipping
    assert len(stepped.norms) == len(reported) and min(reported) > 0.05
    for before, after in zip(reported, stepped.norms, strict=True):
        expected = before if max_grad_norm == 0 else min(before, max_grad_norm)
        assert after == pytest.approx(expected, rel=1e-4)


def test_gradient_accumulation_steps_are_one_step_over_all_micro_batches(
        tiny_llama: Path, qa_files: tuple[Path, Path], tmp_path: Path, tokenizer: Any) -> None:
    """With weights that barely move (lr 1e-12), a step of two accumulated micro-batches has the
    token-weighted mean loss of those two batches taken one step each."""
    knobs = {"n_epochs": 1, "learning_rate": 1e-12, "warmup_ratio": 0.0, "packing": False, "batch_size": 2}
    single, double = ListReporter(), ListReporter()
    sft.run(config(tiny_llama, qa_files, tmp_path / "a", **knobs), single)
    sft.run(config(tiny_llama, qa_files, tmp_path / "b", gradient_accumulation_steps=2, **knobs), double)
    one = [v for _, v in single.metric_steps("train/loss")]
    two = [v for _, v in double.metric_steps("train/loss")]
    assert len(two) == math.ceil(len(one) / 2)

    data = load_examples(str(qa_files[0]), "jsonl", Renderer(tokenizer, "auto"), 128)
    batches = epoch_batches(data.lengths, batch_size=2, capacity=128, packing=False, seed=42, epoch=0)
    targets = [collate([[data.examples[i] for i in row] for row in rows], 0).num_targets for rows in batches]
    for k, loss in enumerate(two):
        pair = slice(2 * k, 2 * k + 2)
        expected = sum(x * n for x, n in zip(one[pair], targets[pair], strict=True)) / sum(targets[pair])
        assert loss == pytest.approx(expected, rel=1e-5)


def test_lora_settings_shape_the_adapter(tiny_llama: Path, qa_files: tuple[Path, Path], tmp_path: Path) -> None:
    lora = {"r": 4, "alpha": 12, "dropout": 0.2, "target_modules": ["q_proj", "v_proj"]}
    result = sft.run(config(tiny_llama, qa_files, tmp_path, n_epochs=1, lora=lora), ListReporter())
    adapter = Path(str(result.path)) / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (4, 12, 0.2)
    assert set(saved["target_modules"]) == {"q_proj", "v_proj"}
    weights = load_file(adapter / "adapter_model.safetensors")
    assert {name.split(".")[-3] for name in weights} == {"q_proj", "v_proj"}
    assert all(4 in tensor.shape for tensor in weights.values())


def test_lora_dropout_is_applied_in_training(tiny_llama: Path, qa_files: tuple[Path, Path], tmp_path: Path) -> None:
    """At step 1 LoRA's B is zero, so the loss is the base model's whatever the dropout; the gradient
    of B is not: it sees the dropped-out inputs."""
    firsts = []
    for dropout in (0.0, 0.5):
        reporter = ListReporter()
        sft.run(config(tiny_llama, qa_files, tmp_path / str(dropout), n_epochs=1, lora={"r": 8, "dropout": dropout}),
                reporter)
        firsts.append((reporter.metric_steps("train/loss")[0][1], reporter.metric_steps("train/grad_norm")[0][1]))
    (loss_0, norm_0), (loss_half, norm_half) = firsts
    assert loss_0 == pytest.approx(loss_half, rel=1e-6)
    assert norm_0 != pytest.approx(norm_half, rel=1e-3)


@pytest.mark.parametrize(("flags", "start_at_log2"), [({}, True), ({"dpo_reference_free": True}, False)])
def test_dpo_reference_free_drops_the_reference(tiny_llama: Path, pair_files: tuple[Path, Path],  # noqa: F811
                                                tmp_path: Path, flags: dict[str, Any], start_at_log2: bool) -> None:
    """Against a reference, the untrained policy scores every pair 0 (loss log 2); without one, the
    rewards are β × the policy's own log-probabilities, far from 0."""
    reporter = ListReporter()
    dpo.run(dpo_config(tiny_llama, pair_files, tmp_path, n_epochs=1, n_evals=0, validation_file=None, **flags),
            reporter)
    first_loss = losses(reporter)[0]
    chosen = losses(reporter, "train/chosen_reward")[0]
    if start_at_log2:
        assert first_loss == pytest.approx(math.log(2), abs=1e-5) and chosen == pytest.approx(0, abs=1e-5)
    else:
        assert first_loss != pytest.approx(math.log(2), abs=1e-3) and chosen < -1


def test_dpo_normalize_logratios_by_length_uses_mean_log_probabilities(tiny_llama: Path,
                                                                      pair_files: tuple[Path, Path],  # noqa: F811
                                                                      tmp_path: Path) -> None:
    """Reference-free, the first step's chosen reward is β × the reply's log-probability: summed over
    its tokens, or their mean with normalisation — about a token's cross-entropy, log(vocab) at init."""
    firsts = []
    for normalize in (False, True):
        reporter = ListReporter()
        dpo.run(dpo_config(tiny_llama, pair_files, tmp_path / str(normalize), n_epochs=1, n_evals=0,
                           validation_file=None, dpo_reference_free=True, dpo_beta=1.0,
                           dpo_normalize_logratios_by_length=normalize), reporter)
        firsts.append(losses(reporter, "train/chosen_reward")[0])
    summed, mean = firsts
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    assert mean == pytest.approx(-math.log(vocab), rel=0.2)
    assert summed < 3 * mean  # replies are several tokens long
