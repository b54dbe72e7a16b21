"""Packed attention: segments index every real token once, give each example exactly the attention it
would get alone, and train the same as the 4-D mask; the wait policy the engine sets for OpenMP."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.samples import preference_pairs, qa_conversations, write_jsonl
from tunery.training import attention
from tunery.training.attention import Segments, attention_for, segments
from tunery.training.config import TrainConfig
from tunery.training.data.collate import attention_bias, collate
from tunery.training.data.render import IGNORE, Example
from tunery.training.logprobs import logits_target_logps
from tunery.training.model import load_causal_lm
from tunery.training.recipes import dpo, sft
from tunery.training.reporter import ListReporter


def test_segments_index_every_real_token_once_and_send_row_padding_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "BUCKET", 4)
    # Row 0: examples of 3 and 5 tokens (then 2 of padding); row 1: one of 4 (then 6 of padding).
    segs = segments([[3, 5], [4]], width=10)
    by_length = {length: (index.tolist(), count) for index, count, length in segs.buckets}
    assert by_length == {
        4: ([0, 1, 2, 2, 10, 11, 12, 13], 2),  # the 3-token example, padded with its last token; row 1's
        8: ([3, 4, 5, 6, 7, 7, 7, 7], 1),
    }
    slots = [index for index, _, _ in segs.buckets]
    flat = torch.cat([*slots, torch.tensor([-1])])  # the last slot is the zero row
    gathered = flat[segs.inverse].tolist()
    assert gathered == [0, 1, 2, 3, 4, 5, 6, 7, -1, -1, 10, 11, 12, 13, -1, -1, -1, -1, -1, -1]


def test_narrow_rows_get_the_mask_and_wide_rows_segments() -> None:
    short = collate([[Example([1] * 10, [1] * 10)]], pad_id=0)
    wide = collate([[Example([1] * 300, [1] * 300), Example([1] * 300, [1] * 300)]], pad_id=0)
    mask = attention_for(short, torch.float32)
    assert isinstance(mask, torch.Tensor) and mask.shape == (1, 1, 10, 10)
    assert isinstance(attention_for(wide, torch.float32), Segments)


def _examples(lengths: list[int], seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randint(5, 600) for _ in range(n)]
        out.append(Example(ids, [t if rng.random() < 0.7 else IGNORE for t in ids]))
    return out


def test_segments_give_each_example_its_own_loss_and_the_masks_gradients(tiny_llama: Path) -> None:
    model = load_causal_lm(tiny_llama, torch.float32)
    examples = _examples([9, 17, 5, 12, 20, 70, 130, 66])  # several buckets, rows with padding

    def run(rows: list[list[Example]], how: str) -> tuple[float, int, list[torch.Tensor]]:
        model.zero_grad()
        batch = collate(rows, pad_id=0)
        isolation: dict[str, Any] = (
            {"attention_mask": attention_bias(batch.segment_ids, torch.float32)} if how == "mask"
            else {"packed_segments": segments(batch.lengths, batch.input_ids.shape[1])})
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, **isolation).logits
        loss = -logits_target_logps(logits, batch.targets).sum()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return float(loss.detach()), batch.num_targets, grads

    singles = [run([[e]], "mask") for e in examples]
    reference = sum(s for s, _, _ in singles) / sum(n for _, n, _ in singles)
    rows = [examples[:3], examples[3:6], examples[6:7], examples[7:]]
    packed_sum, packed_n, seg_grads = run(rows, "segments")
    assert packed_n == sum(n for _, n, _ in singles)
    assert packed_sum / packed_n == pytest.approx(reference, abs=1e-4)
    _, _, mask_grads = run(rows, "mask")
    for got, expected in zip(seg_grads, mask_grads, strict=True):
        assert float((got - expected).norm()) <= 1e-5 * float(expected.norm())


def test_a_padding_mask_and_no_mask_work_as_with_sdpa(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    ours = load_causal_lm(tiny_llama, torch.float32).eval()
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids = torch.tensor([[0, 0, 7, 8, 9, 10], [3, 4, 5, 6, 7, 8]])
    padding = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding, as generation uses
    with torch.no_grad():
        for mask in (padding, None):
            got, expected = (m(input_ids=ids, attention_mask=mask).logits for m in (ours, sdpa))
            assert torch.allclose(got[:, 2:], expected[:, 2:], atol=1e-5)


def _force_segments(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    monkeypatch.setattr(attention, "MASK_MAX_WIDTH", 0 if on else 10**9)


def _curve(reporter: ListReporter) -> list[float]:
    return [loss for _, loss in reporter.metric_steps()]


@pytest.mark.slow
def test_sft_trains_the_same_with_segments_as_with_the_mask(tiny_llama: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", qa_conversations(40, seed=3))
    curves = []
    for on in (False, True):
        _force_segments(monkeypatch, on)
        reporter = ListReporter()
        cfg = TrainConfig(job_id="seg", base_model_dir=str(tiny_llama), train_file=str(train),
                          output_dir=str(tmp_path / f"out-{on}"), lora={"r": 8}, n_epochs=1, learning_rate=5e-3,
                          batch_size=2, max_seq_length=96, seed=1, precision="fp32")
        sft.run(cfg, reporter)
        curves.append(_curve(reporter))
    assert len(curves[0]) >= 4
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)


@pytest.mark.slow
def test_dpo_trains_the_same_with_segments_as_with_the_mask(tiny_llama: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    train = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(16))
    curves = []
    for on in (False, True):
        _force_segments(monkeypatch, on)
        reporter = ListReporter()
        cfg = TrainConfig(job_id="seg-dpo", method="dpo", base_model_dir=str(tiny_llama), train_file=str(train),
                          output_dir=str(tmp_path / f"out-{on}"), lora={"r": 8}, n_epochs=1, learning_rate=5e-3,
                          batch_size=2, max_seq_length=64, seed=1, precision="fp32")
        dpo.run(cfg, reporter)
        curves.append(_curve(reporter))
    assert len(curves[0]) >= 2
    assert curves[1] == pytest.approx(curves[0], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_engine_makes_openmp_threads_wait_passively_unless_told(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, tunery.training; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
