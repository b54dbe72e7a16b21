"""Packing and collation: best fit, determinism, and packed examples that never see each other."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tunery.training.data.collate import attention_bias, collate
from tunery.training.data.packing import epoch_batches, pack_best_fit
from tunery.training.data.render import IGNORE, Example
from tunery.training.logprobs import logits_target_logps
from tunery.training.model import load_causal_lm


def test_best_fit_decreasing_on_a_hand_example() -> None:
    # Longest first: 7 -> row0 (3 left), 6 -> row1 (4 left), 4 -> row1 (0 left),
    # 3 -> row0 (0 left), 2 -> row2 (8 left), 1 -> row2 (7 left).
    lengths = [3, 7, 1, 6, 2, 4]
    assert pack_best_fit(lengths, 10) == [[1, 0], [3, 5], [4, 2]]


def test_best_fit_places_every_example_once_within_capacity() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(500)]
    rows = pack_best_fit(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) <= sum(lengths) / 64 * 1.1 + 1  # nearly full rows


def test_best_fit_rejects_an_example_longer_than_a_row() -> None:
    with pytest.raises(ValueError, match="more than the row capacity"):
        pack_best_fit([5, 11], 10)


@pytest.mark.parametrize("packing", [True, False])
def test_epoch_batches_are_deterministic_and_reshuffled_per_epoch(packing: bool) -> None:
    lengths = [random.Random(i).randint(1, 30) for i in range(200)]
    kw = {"batch_size": 4, "capacity": 64, "packing": packing, "seed": 7}
    first = epoch_batches(lengths, epoch=0, **kw)
    assert first == epoch_batches(lengths, epoch=0, **kw)
    assert first != epoch_batches(lengths, epoch=1, **kw)
    flat = sorted(i for batch in first for row in batch for i in row)
    assert flat == list(range(200))
    if not packing:
        assert all(len(row) == 1 for batch in first for row in batch)
        spreads = [max(lengths[r[0]] for r in b) - min(lengths[r[0]] for r in b) for b in first]
        assert sum(spreads) / len(spreads) < 3  # length bucketing keeps padding small


def test_collate_restarts_positions_and_shifts_targets_per_example() -> None:
    a = Example([10, 11, 12], [IGNORE, 11, 12])
    b = Example([20, 21], [20, 21])
    c = Example([30, 31, 32, 33], [IGNORE, IGNORE, 32, 33])
    batch = collate([[a, b], [c]], pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21], [30, 31, 32, 33, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch.segment_ids.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 1]]
    # target[t] = label[t + 1] inside the same example; never across examples or into padding
    assert batch.targets.tolist() == [[11, 12, IGNORE, 21, IGNORE], [IGNORE, 32, 33, IGNORE, IGNORE]]
    assert (batch.num_tokens, batch.num_targets) == (9, 5)


def test_attention_bias_is_block_diagonal_causal() -> None:
    bias = attention_bias(torch.tensor([[0, 0, 1, 1, 2]]), torch.float32)
    allowed = (bias[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1],
    ]


def test_packed_loss_equals_token_weighted_per_example_loss(tiny_llama: Path) -> None:
    model = load_causal_lm(tiny_llama, torch.float32).eval()
    rng = random.Random(0)
    examples = []
    for n in (9, 17, 5, 12, 20):
        ids = [rng.randint(5, 600) for _ in range(n)]
        labels = [t if rng.random() < 0.7 else IGNORE for t in ids]
        examples.append(Example(ids, labels))

    def loss_sum_and_count(rows: list[list[Example]]) -> tuple[float, int]:
        batch = collate(rows, pad_id=0)
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                           attention_mask=attention_bias(batch.segment_ids, torch.float32)).logits
        return -float(logits_target_logps(logits, batch.targets).sum()), batch.num_targets

    # Reference: each example alone in a row of its own, with no padding at all.
    singles = [loss_sum_and_count([[e]]) for e in examples]
    reference = sum(s for s, _ in singles) / sum(n for _, n in singles)
    packed_sum, packed_n = loss_sum_and_count([[examples[0], examples[1], examples[2]], [examples[3], examples[4]]])
    assert packed_n == sum(n for _, n in singles)
    assert packed_sum / packed_n == pytest.approx(reference, abs=1e-4)
    padded_sum, padded_n = loss_sum_and_count([[e] for e in examples])  # one per row, padded
    assert padded_sum / padded_n == pytest.approx(reference, abs=1e-4)

    # And the mask matters: without it the second example would attend to the first.
    batch = collate([[examples[0], examples[1]]], pad_id=0)
    with torch.no_grad():
        leaky = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                      attention_mask=torch.ones_like(batch.input_ids)).logits
    leaky_loss = -float(logits_target_logps(leaky, batch.targets).sum()) / batch.num_targets
    isolated = (singles[0][0] + singles[1][0]) / (singles[0][1] + singles[1][1])
    assert abs(leaky_loss - isolated) > 1e-3
