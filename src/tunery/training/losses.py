"""Loss functions over per-token target log-probabilities (``logprobs.py``): SFT's is their negated
sum, so callers can normalise over exactly the tokens of a whole optimizer step (gradient
accumulation included); DPO's work on per-sequence sums."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunery.training.data.render import IGNORE


def sequence_logps(
    token_logps: torch.Tensor, targets: torch.Tensor, segment_ids: torch.Tensor, segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment sums of ``log p(target)`` and counts of trained targets, each ``[B, segments]``.

    ``token_logps`` is ``[B, L]`` (see ``logprobs.TargetLogps``); segments are the examples of a
    (packed) row, as numbered by ``collate``.
    """
    trained = (targets != IGNORE).to(token_logps.dtype)
    sums = token_logps.new_zeros(targets.shape[0], segments)
    counts = torch.zeros_like(sums)
    return sums.scatter_add(1, segment_ids, token_logps * trained), counts.scatter_add(1, segment_ids, trained)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss ``-log σ(β·((c - c_ref) - (r - r_ref)) - γ)`` and the two implicit
    rewards ``β·(c - c_ref)``, ``β·(r - r_ref)``.

    With zero reference log-probs this is reference-free; with length-averaged log-probs and
    ``γ > 0`` it is SimPO's loss.
    """
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards - gamma), chosen_rewards, rejected_rewards


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages: each reward less its group's mean, over the group's standard deviation.

    ``rewards`` is ``[P·G]``, the ``G`` completions of each prompt adjacent. A group whose rewards are
    all equal has advantage 0 everywhere (it teaches nothing)."""
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=False)
    return ((groups - mean) / (std + eps)).view(-1)


def grpo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    *,
    epsilon: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per completion token: the clipped-surrogate loss with a KL penalty, whether the ratio was
    clipped, and the KL estimate (all ``[T]``).

    ``ratio = exp(logp - old_logp)``; the surrogate is ``min(ratio·A, clip(ratio, 1-ε, 1+ε)·A)``; the KL
    to the reference is the unbiased, non-negative estimator ``exp(ref - logp) - (ref - logp) - 1``
    (Schulman's k3, as GRPO uses), weighted by ``β``. The loss is ``-(surrogate - β·KL)``."""
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = ratio.clamp(1 - epsilon, 1 + epsilon)
    surrogate = torch.minimum(ratio * advantages, clipped_ratio * advantages)
    clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon) & (advantages > 0))
    if ref_logps is None:
        kl = torch.zeros_like(logps)
    else:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
    return -(surrogate - beta * kl), clipped, kl.detach()
