"""OpenAI's hyperparameters (``n_epochs``, ``batch_size``, ``learning_rate_multiplier``, DPO's ``beta``,
reinforcement's ``compute_multiplier``), each a number or ``"auto"``, resolved for an open model and a
dataset of ``n`` examples (prompts, for reinforcement).

"auto" follows OpenAI's published defaults (its fine-tuning guide and the cookbook's data-preparation
notebook), so a script that leaves them to OpenAI trains about as long, in batches about as large:

    n_epochs        3, raised so that n_epochs·n reaches 100 examples (at most 25 epochs), lowered
                    so that it stays under 25,000 (at least 1)
    batch_size      about 0.2 % of the examples (round(n / 500)), at least 1 and at most 256 and
                    the model's largest batch (``GET /v1/fine-tunes/models/limits``)
    learning_rate   BASE · learning_rate_multiplier, where BASE is 1e-3 for supervised, 1e-4 for
    _multiplier     DPO and 2e-4 for reinforcement (GRPO) training of the LoRA adapter tunery trains
                    for OpenAI-dialect jobs; "auto" is 0.05, 0.1 or 0.2 for a batch of under 8, under
                    32, or more examples (larger batches take larger steps, as OpenAI's default does)
    beta            0.1
    compute_        how much sampling explores: the completions drawn per prompt (GRPO's group) are
    multiplier      4 · compute_multiplier, rounded, at least 2; "auto" is 1 (a group of 4)

A number is used as given, within the model's limits. ``batch_size`` counts examples, as OpenAI's
does: OpenAI-dialect jobs train without packing, so one step is exactly ``batch_size`` examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Auto = Literal["auto"]

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
MAX_AUTO_BATCH = 256
BASE_LEARNING_RATE = {"supervised": 1e-3, "dpo": 1e-4, "reinforcement": 2e-4}
DEFAULT_BETA = 0.1
BASE_GROUP_SIZE = 4
MAX_GROUP_SIZE = 64
Method = Literal["supervised", "dpo", "reinforcement"]


def auto_n_epochs(n_examples: int) -> int:
    epochs = TARGET_EPOCHS
    if epochs * n_examples < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(1, n_examples)))
    elif epochs * n_examples > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return epochs


def auto_batch_size(n_examples: int, model_max_batch: int) -> int:
    return max(1, min(round(n_examples * 0.002), MAX_AUTO_BATCH, model_max_batch))


def group_size(compute_multiplier: float | Auto) -> int:
    """GRPO's completions per prompt for OpenAI's ``compute_multiplier``."""
    return max(2, round(BASE_GROUP_SIZE * (1.0 if compute_multiplier == "auto" else compute_multiplier)))


def compute_multiplier(group: int) -> float:
    """The ``compute_multiplier`` a group of ``group`` completions per prompt stands for."""
    return group / BASE_GROUP_SIZE


def auto_learning_rate_multiplier(batch_size: int) -> float:
    if batch_size < 8:
        return 0.05
    return 0.1 if batch_size < 32 else 0.2


@dataclass(frozen=True)
class Hyperparameters:
    """What "auto" became, as the job shows it (OpenAI's ``hyperparameters`` object)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None  # DPO only

    def learning_rate(self, method: str) -> float:
        return BASE_LEARNING_RATE[method] * self.learning_rate_multiplier


def resolve(method: Method, n_examples: int, model_max_batch: int, *,
            n_epochs: int | Auto, batch_size: int | Auto, learning_rate_multiplier: float | Auto,
            beta: float | Auto | None) -> Hyperparameters:
    """Every "auto" replaced for ``n_examples`` examples on a model whose batches hold at most
    ``model_max_batch``; numbers pass through (their bounds are checked by the job's resolver)."""
    batch = auto_batch_size(n_examples, model_max_batch) if batch_size == "auto" else batch_size
    dpo_beta = None
    if method == "dpo":
        dpo_beta = DEFAULT_BETA if beta is None or beta == "auto" else beta
    return Hyperparameters(
        n_epochs=auto_n_epochs(n_examples) if n_epochs == "auto" else n_epochs,
        batch_size=batch,
        learning_rate_multiplier=(auto_learning_rate_multiplier(batch) if learning_rate_multiplier == "auto"
                                  else learning_rate_multiplier),
        beta=dpo_beta,
    )
