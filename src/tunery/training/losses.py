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
