"""Training in several processes (``torchrun``): the process group, and the few collectives the
recipes need.

How the ranks hold the model (``sharding``): LoRA replicates it, every rank holding the whole model
wrapped in ``DistributedDataParallel``; a full fine-tune shards it with FSDP2 (see ``fsdp.py``).
Either way each optimizer step's rows are shared out across ranks (see ``session.my_share``), so the
global batch, the step count and the loss curve are those of one process. Rank 0 alone reports,
writes checkpoints and exports; the other ranks wait for it at a barrier. Stopping is decided by
rank 0 and broadcast, so every rank leaves the loop at the same step.

One process (no ``torchrun``, or ``WORLD_SIZE=1``) is the same code with every collective a no-op.
Backends: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

from tunery.training import fsdp
from tunery.training.config import TrainConfig

# Rank 0 writes checkpoints and merged exports while the others wait at a barrier; merging a large
# model can take far longer than the collectives' default timeout (10 minutes on NCCL).
COLLECTIVE_TIMEOUT = timedelta(hours=2)
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where collective tensors live (NCCL needs CUDA)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Each value summed over ranks (float64, so integer counts stay exact)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (a copy travels through the collective's device)."""
        if self.world > 1:
            t = tensor.to(self.device)
            tdist.all_reduce(t)
            tensor.copy_(t)
        return tensor

    def min(self, value: int) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
        return int(t.item())

    def main_says(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        tdist.broadcast(t, src=0)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()


def env_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def process_group(device: torch.device) -> Iterator[Dist]:
    """Join the process group ``torchrun`` describes in the environment, if any, for the block."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Dist()
        return
    _die_with_launcher()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)  # "cuda" now means this rank's device
        backend, comm_device = "nccl", torch.device("cuda", local)
    else:
        backend, comm_device = "gloo", torch.device("cpu")
    tdist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield Dist(tdist.get_rank(), tdist.get_world_size(), comm_device)
    finally:
        tdist.destroy_process_group()


def shards(cfg: TrainConfig, world: int) -> bool:
    """Whether the ranks shard the model (FSDP2) rather than replicate it (DDP): with ``sharding:
    "auto"``, full fine-tunes in several processes shard (their weights, gradients and AdamW state,
    16 bytes a parameter, are what outgrows one device), and LoRA replicates (its trained state is
    small, and the frozen base is read by every pass)."""
    if world == 1:
        return False
    return cfg.sharding == "fsdp" or (cfg.sharding == "auto" and cfg.lora is None)


def wrap(model: torch.nn.Module, dist: Dist) -> Any:
    """The model that training forward passes go through: ``model`` itself in one process, else a
    ``DistributedDataParallel`` over it that averages gradients across ranks (only parameters that
    require grad take part, so LoRA syncs just the adapters)."""
    if dist.world == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    # Parameters and buffers are broadcast from rank 0 once, here; buffers (rotary tables) never
    # change, so no broadcast before every forward. Gradients live in the all-reduce buckets
    # (no second copy of them).
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False,
                                   gradient_as_bucket_view=True)


def grad_sync(parallel: Any, sync: bool) -> AbstractContextManager[Any]:
    """Inside a step's micro-batches: average gradients only on the step's last backward pass.
    ``parallel``: the ``DistributedDataParallel`` or FSDP2-sharded module, None in one process."""
    if parallel is None or sync:
        return nullcontext()
    return fsdp.no_sync(parallel) if fsdp.is_sharded(parallel) else parallel.no_sync()


def ignore_sigterm_off_main(dist_rank: int) -> None:
    """torchrun forwards SIGTERM to every rank; rank 0 turns it into a stop at the next step
    (its reporter's handler) and tells the others, so they must outlive the signal."""
    if dist_rank != 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _die_with_launcher() -> None:
    """A rank whose launcher dies (the worker killed it with SIGKILL) must not train on, orphaned."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
