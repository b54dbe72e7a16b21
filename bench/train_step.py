"""One training step of tunery's engine on a fixed packed batch, built as a job builds it
(``load_for_training``, ``build_optimizer``): what bench/compile.py and bench/step_profile.py time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import tunery.training  # noqa: F401 - before the rest, as the recipes' entry point does
from tunery.models.builtin import ensure_builtin
from tunery.training.attention import attention_for
from tunery.training.config import TrainConfig
from tunery.training.data.collate import collate
from tunery.training.data.render import Example
from tunery.training.model import LoadedModel, forward_logps, load_for_training, mask_dtype
from tunery.training.session import build_optimizer


@dataclass
class Step:
    loaded: LoadedModel
    optimizer: torch.optim.Optimizer
    batch: Any
    isolation: Any

    def forward_backward(self) -> None:
        b = self.batch
        loss = -forward_logps(self.loaded, b.input_ids, b.position_ids, b.targets, self.isolation).sum()
        (loss / b.num_targets).backward()

    def optimize(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self) -> None:
        self.forward_backward()
        self.optimize()


def build_step(model: str, full: bool, workdir: Path, rows: int = 8, row_tokens: int = 256) -> Step:
    """``model`` (a built-in's short name), LoRA r=8 or ``full``, on ``rows`` packed rows of examples
    of 16..96 tokens filled to ``row_tokens``, in the precision a job would pick here."""
    model_dir = ensure_builtin(f"tunery/{model}", workdir / "models")
    cfg = TrainConfig(job_id="bench-step", base_model_dir=str(model_dir), train_file="unused", output_dir=str(workdir),
                      device="cpu", lora=None if full else {"r": 8, "alpha": 16}, learning_rate=1e-4)
    torch.manual_seed(0)
    loaded = load_for_training(cfg)
    gen = torch.Generator().manual_seed(0)
    packed = []
    for _ in range(rows):
        row, used = [], 0
        while used < row_tokens - 16:
            n = min(int(torch.randint(16, 96, (1,), generator=gen)), row_tokens - used)
            ids = torch.randint(5, 500, (n,), generator=gen).tolist()
            row.append(Example(ids, ids))
            used += n
        packed.append(row)
    batch = collate(packed, loaded.tokenizer.pad_token_id)
    return Step(loaded, build_optimizer(loaded, cfg), batch, attention_for(batch, mask_dtype(loaded)))
