"""``batch_size: "max"``: the largest micro-batch of full-length rows that fits in device memory.

The search starts at an upper bound (the model's ``max_batch_size`` limit, already clamped so a
small dataset still gets several steps per epoch) and halves on out-of-memory. Each try is one
forward and backward pass over ``size`` rows of ``row_capacity`` tokens, the worst case training
will meet, while tensors the size of AdamW's two moment buffers are held, as they will be.

When not even one row fits, memory demands activation checkpointing: each decoder layer's
activations are recomputed in the backward instead of held (about a third more compute), and the
search runs again with it on. A size that fits without it never pays for it.

Ranks probe in lockstep: after each try they agree whether it fitted on all of them, so every rank
tries the same sizes (a sharded model's passes are collectives every rank must join).

Only CUDA is probed: there an allocation failure is an exception the probe can catch. On CPU it is
the kernel's OOM killer, which no probe survives, so CPU runs take the bound as it is.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from tunery.errors import TrainingFailed
from tunery.training.attention import attention_for
from tunery.training.data.collate import Batch
from tunery.training.distributed import Dist
from tunery.training.model import LoadedModel, forward_logps, mask_dtype


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def fitting_batch_size(loaded: LoadedModel, dist: Dist, upper: int, row_capacity: int,
                       accumulating: bool = False) -> int:
    """The largest micro-batch of full rows that fits on every rank, turning on activation
    checkpointing (on every rank) when not even one row fits without it. ``accumulating``: a sharded
    model's micro-batches will accumulate whole gradients between syncs (``fsdp.py``)."""
    size = largest_fitting(upper, probe_step(loaded, row_capacity, accumulating), dist.min)
    if size == 0:
        enable_activation_checkpointing(loaded)
        size = largest_fitting(upper, probe_step(loaded, row_capacity, accumulating), dist.min)
    if size == 0:
        raise TrainingFailed("the model does not fit in device memory even with batch_size 1 and activation "
                             "checkpointing at this max_seq_length; lower max_seq_length or use LoRA", user_error=True)
    return size


def enable_activation_checkpointing(loaded: LoadedModel) -> None:
    causal_lm = loaded.model.get_base_model() if loaded.is_lora else loaded.model
    causal_lm.activation_checkpointing_enable({"use_reentrant": False})


def largest_fitting(upper: int, try_size: Callable[[int], None],
                    everywhere: Callable[[int], int] = lambda fits: fits) -> int:
    """The first of ``upper, upper // 2, …, 1`` for which ``try_size`` does not run out of memory, or
    0 when none fits. Other errors propagate. ``everywhere``: 1 if a try fitted on every rank (the
    minimum over ranks of each one's 1 or 0)."""
    size = max(1, upper)
    while size:
        fits = 1
        try:
            try_size(size)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled; the rest re-raised
            if not is_out_of_memory(exc):
                raise
            fits = 0
        if everywhere(fits):
            return size
        _release_memory()
        size //= 2
    return 0


def probe_step(loaded: LoadedModel, row_capacity: int, accumulating: bool = False) -> Callable[[int], None]:
    """A ``try_size`` that runs forward and backward over ``size`` full rows, leaving no trace: no
    gradients, no changed weights, the random number streams as they were. It holds what training
    will hold beside: AdamW's moments, and with ``accumulating`` a whole fp32 gradient."""

    def try_size(size: int) -> None:
        params = [p for _, p in loaded.trainable_parameters]
        ids = torch.full((size, row_capacity), loaded.tokenizer.eos_token_id or 0, dtype=torch.long,
                         device=loaded.device)
        positions = torch.arange(row_capacity, device=loaded.device).expand(size, -1)
        rows = Batch(ids, positions, torch.zeros_like(ids), ids, ids.numel(), ids.numel(), ((row_capacity,),) * size)
        devices = [] if loaded.device.type != "cuda" else [
            loaded.device.index if loaded.device.index is not None else torch.cuda.current_device()]
        try:
            with torch.random.fork_rng(devices=devices):
                moments = [torch.empty_like(p) for p in params for _ in range(2)]  # AdamW's state, to come
                if accumulating:
                    moments += [torch.empty(p.shape, device=loaded.device) for p in params]
                logps = forward_logps(loaded, ids, positions, ids, attention_for(rows, mask_dtype(loaded)))
                (-logps.sum()).backward()
                del logps, moments
        finally:
            for p in params:
                p.grad = None
            _release_memory()

    return try_size


def _release_memory() -> None:
    """Hand the failed try's memory back to CUDA before the next (a no-op without CUDA)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
