"""The loss without full logits (``training/logprobs.py``): chunked target log-probabilities equal the
plain ``log_softmax`` over full logits in values and gradients; the training forward uses them on
models whose logits are ``head(hidden)`` and the model's own logits elsewhere; and on a
Llama-3-shaped head (vocab 128,256, hidden 4,096) the loss step never holds the full logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tunery.training.config import TrainConfig
from tunery.training.data.render import IGNORE
from tunery.training.logprobs import TargetLogps, logits_target_logps, target_logps
from tunery.training.model import _with_lora, load_causal_lm

BENCH = Path(__file__).parents[2] / "bench" / "loss_memory.py"


def _within_1e5(ours: torch.Tensor, plain: torch.Tensor) -> bool:
    """Equal up to float rounding: every element within 1e-5 of the tensor's largest magnitude."""
    return bool((ours - plain).abs().max() <= 1e-5 * plain.abs().max())


def test_chunked_log_probs_equal_the_plain_ones_in_values_and_gradients() -> None:
    torch.manual_seed(0)
    tokens, hidden_size, vocab = 300, 96, 4099  # 5 chunks of 64 rows, the last one partial
    hidden = torch.randn(tokens, hidden_size, dtype=torch.float64).float().requires_grad_()
    weight = (torch.randn(vocab, hidden_size) * 0.3).requires_grad_()
    bias = torch.randn(vocab).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))
    upstream = torch.randn(tokens)  # a different weight per token, as DPO's per-sequence sums give

    def run(chunked: bool) -> list[torch.Tensor]:
        for t in (hidden, weight, bias):
            t.grad = None
        if chunked:
            logps = target_logps(hidden, weight, bias, targets, rows=64)
        else:
            logps = logits_target_logps((hidden @ weight.T + bias)[None], targets[None])[0]
        (logps * upstream).sum().backward()
        return [logps.detach(), *(t.grad.clone() for t in (hidden, weight, bias) if t.grad is not None)]

    for ours, plain in zip(run(True), run(False), strict=True):
        assert _within_1e5(ours, plain)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 600, (2, 24), generator=torch.Generator().manual_seed(1))
    targets = ids.roll(-1, 1)
    targets[:, :6] = IGNORE  # a prompt
    targets[1, 20:] = IGNORE
    return ids, torch.arange(24).expand(2, -1), targets


@pytest.mark.parametrize("lora", [True, False])
def test_the_training_forward_gives_the_models_own_log_probs_and_gradients(tiny_llama: Path, lora: bool) -> None:
    torch.manual_seed(0)
    model = load_causal_lm(tiny_llama, torch.float32)
    if lora:
        cfg = TrainConfig(job_id="ft-l", base_model_dir=str(tiny_llama), train_file="t", output_dir="o", lora={"r": 4})
        model = _with_lora(model, cfg, None)
        with torch.no_grad():  # peft starts B at zero, which would hide A's gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1)
    scorer = TargetLogps(model)
    assert scorer.split is not None  # the chunked path
    ids, positions, targets = _batch()

    def run(chunked: bool) -> list[torch.Tensor]:
        model.zero_grad()
        if chunked:
            logps = scorer(ids, positions, targets)
        else:
            logps = logits_target_logps(model(input_ids=ids, position_ids=positions).logits, targets)
        logps.sum().backward()
        return [logps.detach(), *(p.grad.clone() for p in model.parameters() if p.requires_grad)]

    ours, plain = run(True), run(False)
    assert len(ours) == len(plain) > 1
    assert (ours[0][targets == IGNORE] == 0).all()
    for a, b in zip(ours, plain, strict=True):
        assert _within_1e5(a, b)


def test_hits_are_the_targets_the_model_ranks_first_on_both_paths(tiny_llama: Path) -> None:
    """Token accuracy (OpenAI's mean_token_accuracy) comes from the same pass as the log-probs."""
    torch.manual_seed(0)
    model = load_causal_lm(tiny_llama, torch.float32)
    ids, positions, targets = _batch()
    logits = model(input_ids=ids, position_ids=positions).logits
    targets[0, 6:12] = logits[0, 6:12].argmax(-1)  # some targets the model surely ranks first
    expected = (logits.argmax(-1) == targets) & (targets != IGNORE)
    assert 6 <= int(expected.sum()) < int((targets != IGNORE).sum())
    chunked = TargetLogps(model)
    plain = TargetLogps(model)
    plain.split = None
    for scorer in (chunked, plain):
        logps, hits = scorer(ids, positions, targets, hits=True)
        assert torch.equal(hits, expected)
        assert _within_1e5(logps, scorer(ids, positions, targets))


def test_a_model_whose_logits_are_more_than_its_head_takes_the_plain_path() -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0)
    model = Gemma2ForCausalLM(config)
    scorer = TargetLogps(model)
    assert scorer.split is None
    ids = torch.randint(0, 64, (1, 10))
    logits = model(input_ids=ids).logits
    assert torch.allclose(scorer(ids, torch.arange(10)[None], ids), logits_target_logps(logits, ids))
    hot = logits_target_logps(logits / 0.7, ids)
    assert torch.allclose(scorer(ids, torch.arange(10)[None], ids, temperature=0.7), hot)


def test_log_probs_at_a_temperature_are_those_of_the_logits_over_it(tiny_llama: Path) -> None:
    """What GRPO scores its completions with: the distribution that sampling at that temperature drew."""
    model = load_causal_lm(tiny_llama, torch.float32)
    scorer = TargetLogps(model)
    assert scorer.split is not None
    ids, positions, targets = _batch()
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=positions).logits
        for temperature in (0.5, 1.0, 1.7):
            expected = logits_target_logps(logits / temperature, targets)
            assert _within_1e5(scorer(ids, positions, targets, temperature=temperature), expected)


@pytest.mark.slow
def test_on_a_llama3_head_the_loss_step_never_holds_the_full_logits() -> None:
    tokens = 16  # in 4 chunks: few rows keep each pass over the 2 GB head cheap, 4 chunks keep it chunked
    out = subprocess.run([sys.executable, str(BENCH), "--tokens", str(tokens), "--chunk-rows", "4", "--json"],
                         capture_output=True, text=True, check=True)
    r: dict[str, Any] = json.loads(out.stdout)
    assert (r["vocab"], r["hidden"]) == (128256, 4096)
    full, chunk = r["full_logits_bytes"], r["chunk_logits_bytes"]
    # The measurement sees the full logits where they exist ...
    assert r["plain"]["largest"] >= full and r["plain"]["peak"] >= 2 * full
    # ... and the chunked step never holds more than a chunk's logits, plus its small outputs.
    assert r["chunked"]["largest"] <= chunk
    assert r["chunked"]["peak"] <= 2 * chunk + 2 * tokens * 4096 * 4
    assert r["chunked"]["peak"] < r["plain"]["peak"] / 4
    for diff in r["chunked_vs_plain"].values():
        assert diff["relative"] < 1e-5
