"""Per-token log-probabilities of the targets, without ever holding the full logits.

A causal LM's head turns every position's last hidden state into logits over the whole vocabulary:
``[tokens, vocab]`` floats, 4 GB in fp32 for 8k tokens of a 128k-token vocabulary, and as much again
for their gradient. Training needs only ``log p(target)`` at the positions that have a target, so
``target_logps`` scores them a chunk of rows at a time: a chunk's logits exist only while it is
scored (forward) and while its gradient is taken (backward, where they are recomputed from the saved
hidden states and each row's log-sum-exp, one extra head matmul). The loss step holds one chunk's
logits at a time; values and gradients are those of ``log_softmax`` over the full logits, up to
float rounding (checked to 1e-5 in ``tests/training/test_training_logprobs.py``).

``TargetLogps`` is the module every training forward pass goes through, and what DDP or FSDP wrap:
the model's body gives the hidden states, and only positions with a target go through the head.
Models whose logits are more than ``head(hidden)`` (soft-capped or scaled logits, a LoRA-adapted
head) are told apart when it is built, by comparing both on a few tokens, and take the plain path:
the model's own logits, then ``log_softmax``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from tunery.training.data.render import IGNORE

# A chunk's logits hold at most max(the hidden states' elements, this many): on a 128k vocabulary,
# 262 rows (128 MB in fp32), enough rows per weight read to keep the head's matmuls compute-bound;
# a small vocabulary gets one chunk.
CHUNK_FLOOR_ELEMENTS = 1 << 25


def chunk_rows(tokens: int, hidden: int, vocab: int) -> int:
    return max(1, -(-tokens * hidden // vocab), CHUNK_FLOOR_ELEMENTS // vocab)


def target_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                 rows: int | None = None) -> torch.Tensor:
    """``log softmax(hidden @ weight.T + bias)[t, targets[t]]`` for each row ``t``, in fp32, ``rows``
    rows at a time (default: ``chunk_rows``). ``hidden`` is ``[T, H]``, ``weight`` ``[V, H]``;
    every target must be a real token id. Matmuls run in the autocast dtype when autocast is on for
    ``hidden``'s device (as the head's own ``Linear`` would), else in ``hidden``'s dtype."""
    return target_logps_and_hits(hidden, weight, bias, targets, rows)[0]


def target_logps_and_hits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``target_logps`` and, for each row, whether its target has the highest logit (the model's
    greedy guess is right: token accuracy), which the chunks give for one comparison each."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    rows = rows or chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0])
    picked, hits = _ChunkedTargetLogps.apply(hidden, weight, bias, targets, rows, dtype)
    return picked, hits


class _ChunkedTargetLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, rows: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        picked = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(picked)
        hits = torch.empty(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            end = start + rows
            logits = F.linear(hidden[start:end].to(dtype), w, b).float()
            target = logits.gather(1, targets[start:end, None]).squeeze(1)
            # log-sum-exp in place, so a chunk costs one [rows, V] buffer
            top = logits.amax(1, keepdim=True)
            hits[start:end] = target >= top.squeeze(1)
            lse[start:end] = logits.sub_(top).exp_().sum(1).log_().add_(top.squeeze(1))
            picked[start:end] = target - lse[start:end]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.rows, ctx.dtype = rows, dtype
        ctx.mark_non_differentiable(hits)
        return picked, hits

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _hits: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        rows, dtype = ctx.rows, ctx.dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_bias else None
        for start in range(0, hidden.shape[0], rows):
            end = start + rows
            h = hidden[start:end].to(dtype)
            g = grad[start:end, None].float()
            # d log p(target) / d logits = onehot(target) - softmax; built in the logits' own buffer
            d = F.linear(h, w, b).float().sub_(lse[start:end, None]).exp_().mul_(-g)
            d.scatter_add_(1, targets[start:end, None], g)
            if grad_bias is not None:
                grad_bias += d.sum(0)
            d_low = d.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = d_low @ w
            if grad_weight is not None:
                grad_weight += (d_low.T @ h).float()
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None, None)


def logits_target_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The plain path: ``[B, L]`` fp32 log-probabilities of ``targets`` under full ``logits`` ``[B, L, V]``
    (0 where the target is ``IGNORE``)."""
    return -F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="none").view(targets.shape)


def logits_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B, L]``: whether each target has the highest logit (False where it is ``IGNORE``)."""
    trained = targets != IGNORE
    target = logits.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return trained & (target >= logits.amax(-1))


class TargetLogps(nn.Module):
    """``model`` (a transformers causal LM, or a peft model over one) as a function from a batch to
    the ``[B, L]`` fp32 log-probabilities of its targets (0 where a target is ``IGNORE``) — and, with
    ``hits=True``, also whether each target was the model's top guess (for token accuracy)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        # A tuple, so the body and head are not registered twice as submodules.
        self.split: tuple[Any, nn.Linear] | None = _split_head(model)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                temperature: float = 1.0, hits: bool = False, **inputs: Any,
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``temperature``: log-probabilities of the logits divided by it (what sampling at that
        temperature draws from). ``hits``: also return whether each target was the top guess."""
        if self.split is None:
            logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **inputs).logits
            logps = logits_target_logps(logits / temperature if temperature != 1 else logits, targets)
            return (logps, logits_hits(logits.detach(), targets)) if hits else logps
        body, head = self.split
        hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False, **inputs).last_hidden_state
        trained = targets != IGNORE
        hidden, bias = hidden[trained], cast(torch.Tensor | None, head.bias)
        if temperature != 1:  # (h·Wᵀ + b) / T = (h / T)·Wᵀ + b / T
            hidden, bias = hidden / temperature, None if bias is None else bias / temperature
        picked, picked_hits = target_logps_and_hits(hidden, head.weight, bias, targets[trained])
        logps = picked.new_zeros(trained.shape).masked_scatter(trained, picked)
        return (logps, torch.zeros_like(trained).masked_scatter(trained, picked_hits)) if hits else logps


def _split_head(model: Any) -> tuple[Any, nn.Linear] | None:
    """The causal LM's body (hidden states out) and head, when its logits are exactly ``head(body)``."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head, body = causal_lm.get_output_embeddings(), getattr(causal_lm, "base_model", causal_lm)
    if type(head) is not nn.Linear or body is causal_lm:
        return None
    ids = torch.arange(min(8, head.weight.shape[0]), device=head.weight.device)[None]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = causal_lm(input_ids=ids, use_cache=False).logits.float()
            split = head(body(input_ids=ids, use_cache=False).last_hidden_state).float()
    finally:
        model.train(training)
    return (body, head) if torch.allclose(full, split, rtol=1e-4, atol=1e-4) else None
