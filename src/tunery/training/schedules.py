"""Learning-rate schedules and evenly spaced step plans, as pure functions of the step.

Steps are 0-based: ``lr_at(s, ...)`` is the rate used by the optimizer step that follows ``s``
completed steps. Warmup ramps ``(s + 1) / (warmup + 1)`` so that no step runs at rate 0; the decay
then runs over the remaining steps from ``progress = 0`` (full rate) towards ``progress = 1``:

    linear: factor = 1 - (1 - min_lr_ratio) * progress
    cosine: factor = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(2 * pi * num_cycles * progress))

With ``num_cycles = 0.5`` (Together's default) the cosine falls once, from 1 to ``min_lr_ratio``.
"""

from __future__ import annotations

import math
from typing import Literal


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return min(total_steps, round(total_steps * warmup_ratio))


def lr_at(
    step: int,
    total_steps: int,
    *,
    base_lr: float,
    scheduler: Literal["linear", "cosine"] = "cosine",
    warmup: int = 0,
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> float:
    if step < warmup:
        return base_lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if scheduler == "linear":
        factor = 1.0 - (1.0 - min_lr_ratio) * progress
    else:
        factor = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(2.0 * math.pi * num_cycles * progress))
    return base_lr * factor


def evenly_spaced(total_steps: int, n: int) -> list[int]:
    """The steps (1-based, ascending, distinct) that split ``total_steps`` into ``n`` equal parts.

    The last one is always ``total_steps``; fewer than ``n`` come back when there are fewer steps.
    """
    if n <= 0 or total_steps <= 0:
        return []
    return sorted({max(1, round(k * total_steps / n)) for k in range(1, n + 1)})
