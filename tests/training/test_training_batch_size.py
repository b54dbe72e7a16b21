"""``batch_size: "max"``: halving on out-of-memory from the clamped model limit, activation
checkpointing when not even one row fits (which leaves the gradients as they were), and a probe step
that leaves the model, its gradients and the random streams as they were."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tunery.errors import TrainingFailed
from tunery.training import batch_size
from tunery.training.batch_size import is_out_of_memory, largest_fitting, probe_step
from tunery.training.config import TrainConfig
from tunery.training.data.collate import attention_bias
from tunery.training.distributed import Dist
from tunery.training.model import forward_logps, load_for_training, mask_dtype
from tunery.training.session import MIN_BATCHES_PER_EPOCH, max_batch_size


def fake_step(fits_up_to: int, error: type[Exception] = torch.cuda.OutOfMemoryError) -> tuple[Any, list[int]]:
    tried: list[int] = []

    def try_size(size: int) -> None:
        tried.append(size)
        if size > fits_up_to:
            raise error("CUDA out of memory. Tried to allocate 2.00 GiB")

    return try_size, tried


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_halves_until_it_fits(error: type[Exception]) -> None:
    try_size, tried = fake_step(fits_up_to=5, error=error)
    assert largest_fitting(16, try_size) == 4
    assert tried == [16, 8, 4]


def test_ranks_halve_together_until_it_fits_on_every_one() -> None:
    try_size, tried = fake_step(fits_up_to=16)
    other_rank = iter([0, 1])  # another rank runs out of memory at 16 rows, not at 8
    assert largest_fitting(16, try_size, lambda fits: min(fits, next(other_rank))) == 8
    assert tried == [16, 8]


def test_the_limit_is_kept_when_it_fits() -> None:
    try_size, tried = fake_step(fits_up_to=100)
    assert largest_fitting(16, try_size) == 16 and tried == [16]


def test_other_errors_are_not_taken_for_memory() -> None:
    def broken(size: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        largest_fitting(16, broken)
    assert not is_out_of_memory(ValueError("out of memory"))


def test_nothing_fits_is_a_user_error_that_says_what_to_change(tiny_llama: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    try_size, tried = fake_step(fits_up_to=0)
    assert largest_fitting(8, try_size) == 0 and tried == [8, 4, 2, 1]
    loaded = load_for_training(cfg_for(tiny_llama, tmp_path, lora={"r": 4}))
    monkeypatch.setattr(batch_size, "probe_step", lambda loaded, capacity, accumulating: fake_step(fits_up_to=0)[0])
    with pytest.raises(TrainingFailed, match="lower max_seq_length") as caught:
        batch_size.fitting_batch_size(loaded, Dist(), 8, 64)
    assert caught.value.user_error


@pytest.mark.parametrize("lora", [True, False])
def test_activation_checkpointing_comes_on_when_not_even_one_row_fits(
        tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lora: bool) -> None:
    torch.manual_seed(0)
    loaded = load_for_training(cfg_for(tiny_llama, tmp_path, lora={"r": 4} if lora else None))
    causal_lm = loaded.model.get_base_model() if lora else loaded.model
    ids = torch.randint(5, 600, (2, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(32).expand(2, -1)

    def grads() -> list[torch.Tensor]:
        loaded.model.zero_grad()
        bias = attention_bias(torch.zeros_like(ids), mask_dtype(loaded))
        forward_logps(loaded, ids, positions, ids, bias).sum().backward()
        return [p.grad.clone() for _, p in loaded.trainable_parameters]

    without = grads()
    # Fits at 2 only with checkpointing on; without, nothing fits.
    monkeypatch.setattr(batch_size, "probe_step", lambda loaded, capacity, accumulating: fake_step(
        fits_up_to=2 if causal_lm.is_activation_checkpointing else 0)[0])
    assert not causal_lm.is_activation_checkpointing
    assert batch_size.fitting_batch_size(loaded, Dist(), 8, 64) == 2
    assert causal_lm.is_activation_checkpointing
    for a, b in zip(grads(), without, strict=True):  # the same gradients, recomputed activations
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def cfg_for(tiny_llama: Path, tmp_path: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {"job_id": "ft-bs", "base_model_dir": str(tiny_llama),
                              "base_model_name": "tunery/tiny-llama", "train_file": str(tmp_path / "t.jsonl"),
                              "output_dir": str(tmp_path / "out"), "max_seq_length": 64}
    values.update(overrides)
    return TrainConfig(**values)


def test_max_is_the_model_limit_clamped_then_probed_on_cuda(tiny_llama: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cfg_for(tiny_llama, tmp_path)
    cpu = SimpleNamespace(device=torch.device("cpu"))
    assert max_batch_size(cfg, cpu, Dist(), rows=10_000, row_capacity=64) == 16  # tiny-llama's limit
    assert max_batch_size(cfg, cpu, Dist(), rows=5 * MIN_BATCHES_PER_EPOCH, row_capacity=64) == 5
    assert max_batch_size(cfg, cpu, Dist(), rows=3, row_capacity=64) == 1
    assert max_batch_size(cfg.model_copy(update={"method": "dpo"}), cpu, Dist(), rows=10_000, row_capacity=64) == 8

    tries: list[tuple[int, int, bool]] = []

    def fake_probe(loaded: Any, row_capacity: int, accumulating: bool) -> Any:
        try_size, tried = fake_step(fits_up_to=6)
        return lambda size: (tries.append((size, row_capacity, accumulating)), try_size(size))

    monkeypatch.setattr(batch_size, "probe_step", fake_probe)
    cuda = SimpleNamespace(device=torch.device("cuda"), sharded=False)
    assert max_batch_size(cfg, cuda, Dist(), rows=10_000, row_capacity=64) == 4
    assert tries == [(16, 64, False), (8, 64, False), (4, 64, False)]  # full-length rows, from the limit down
    # Sharded, with gradient accumulation: each try also holds the whole gradient accumulated between syncs.
    tries.clear()
    sharded = SimpleNamespace(device=torch.device("cuda"), sharded=True)
    accumulating = cfg.model_copy(update={"gradient_accumulation_steps": 2})
    assert max_batch_size(accumulating, sharded, Dist(), rows=10_000, row_capacity=64) == 4
    assert tries[0] == (16, 64, True)


def test_probe_step_leaves_no_trace(tiny_llama: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaded = load_for_training(cfg_for(tiny_llama, tmp_path, lora={"r": 4, "dropout": 0.1}))
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    rng = torch.get_rng_state()
    probe_step(loaded, row_capacity=64)(3)
    assert torch.equal(torch.get_rng_state(), rng)
    for name, param in loaded.model.named_parameters():
        assert param.grad is None and torch.equal(param, before[name]), name
