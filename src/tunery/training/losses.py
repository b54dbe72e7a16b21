"""Loss functions. Token-level cross-entropy, summed, so callers can normalise over exactly the
tokens of a whole optimizer step (gradient accumulation included)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunery.training.data.render import IGNORE


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of ``-log p(target)`` over positions whose target is not ``IGNORE``.

    ``logits`` is ``[B, L, V]`` and ``targets`` ``[B, L]``, already aligned (see ``collate.py``).
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
