"""Resumable checkpoints, written so that a half-written one is never visible.

    output_dir/checkpoints/step-{N}/   adapter/ (LoRA), model/, state/   intermediate and stop checkpoints
    output_dir/final/                  adapter/ (LoRA), model/           the final export

``state/`` holds what the weights do not: the optimizer (whole, keyed by parameter name, however the
ranks held it: a run may resume with another number of processes), the loop position (epoch, step within it)
and counters in ``trainer_state.json``, every random number generator's state (one set per rank
when training in several processes), and the best
weights so far when early stopping is on, and any tensors the recipe keeps (``extra``: DPO's
reference log-probabilities, computed once from the starting model). The learning rate is a pure
function of the step, and each epoch's batch order a pure function of the seed and the epoch, so
nothing else is needed to continue the same loss curve. Every directory is built under a temporary name and renamed into
place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimizer steps completed in the current epoch
    tokens_seen: int = 0
    evals_done: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step}"


def final_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "final"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target``; on success it becomes ``target``.

    An existing ``target`` (e.g. the same step written again after a resume) is replaced.
    On error the temporary directory is removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state keyed by ``model``'s parameter names, on rank 0's CPU (the other
    ranks get nothing when it is sharded). Every rank must call it: shards are gathered."""
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))


def save_state(
    state_dir: Path,
    state: TrainState,
    optimizer: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    rng: list[dict[str, Any]] | None = None,
) -> None:
    """``optimizer``: ``optimizer_state``'s; ``rng``: every rank's ``rng_states()`` in rank order
    (default: this process's)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
    torch.save(optimizer, state_dir / "optimizer.pt")
    torch.save(rng if rng is not None else [rng_states()], state_dir / "rng.pt")
    if best_weights is not None:
        save_file({k: v.contiguous() for k, v in best_weights.items()}, state_dir / "best.safetensors")
    if extra is not None:
        save_file({k: v.contiguous() for k, v in extra.items()}, state_dir / "extra.safetensors")


def load_state(
    state_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0, sharded: bool = False
) -> tuple[TrainState, dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
    """Restore the optimizer of ``model`` and ``rank``'s RNGs in place; return the loop state, best
    weights and extra tensors. A rank the checkpoint has no RNG states for (more processes than when
    it was written) takes rank 0's. ``sharded``: every rank must call it, and rank 0 alone reads the
    optimizer state and sends each rank its shard."""
    state = TrainState(**json.loads((state_dir / STATE_FILE).read_text()))
    saved = torch.load(state_dir / "optimizer.pt", weights_only=True) if rank == 0 or not sharded else {}
    set_optimizer_state_dict(model, optimizer, _by_name(saved, model, optimizer),
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=sharded))
    rng = torch.load(state_dir / "rng.pt", weights_only=False)
    rng = rng if isinstance(rng, list) else [rng]
    _restore_rng_states(rng[rank] if rank < len(rng) else rng[0])
    best, extra = state_dir / "best.safetensors", state_dir / "extra.safetensors"
    return state, (load_file(best) if best.exists() else None), (load_file(extra) if extra.exists() else None)


def _by_name(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Checkpoints written before optimizer states were keyed by name number the parameters in the
    optimizer's order, which this run's optimizer (built the same way) has too."""
    groups = saved.get("param_groups") or []
    if not groups or not groups[0]["params"] or not isinstance(groups[0]["params"][0], int):
        return saved
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {"state": {order[i]: v for i, v in saved["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in groups]}


def rng_states() -> dict[str, Any]:
    import numpy as np

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _restore_rng_states(states: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
