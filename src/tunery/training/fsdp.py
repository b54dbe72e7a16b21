"""Full fine-tunes sharded over the ranks with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Replicated (DDP), every rank holds the whole training state: fp32 weights, gradients and AdamW's two
moments, 16 bytes a parameter (128 GB for an 8B model, before activations). Sharded, each rank holds
1/world of it, and a block's weights are all-gathered only while that block computes.

- Groups: each block the model names as indivisible (``_no_split_modules``: its decoder layers, and a
  vision tower's blocks) is one group, all-gathered and freed on its own; the rest (embeddings, final
  norm, head) belongs to the root, the ``TargetLogps`` scorer every training pass goes through, so the
  chunked loss reads the head's gathered weight inside the root's forward.
- Precision: the weights stay fp32; under bf16 (``precision``) they are all-gathered in bf16, which
  halves the traffic and the gathered copies, and gradients are reduced in fp32.
- Gradients: averaged over ranks by a reduce-scatter, as DDP's all-reduce averages them, after the
  step's last micro-batch only (``no_sync`` around the others, as DDP's ``no_sync``); between
  micro-batches each rank holds the unsharded fp32 gradient it is accumulating.
- Every rank runs the same number of forward and backward passes (each one all-gathers); a rank
  with fewer rows than another runs idle passes (``session.my_share``, ``session.my_batches``).
- State out: ``gathered_state`` gives rank 0 the full weights (checkpoints, the final export, in one
  process's layout); ``load_full`` scatters full tensors from rank 0 back into the shards.

The whole model is loaded into host memory on every rank before sharding; only the shard reaches the
device (``model.load_for_training``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def shard(root: nn.Module, causal_lm: nn.Module, device: torch.device, world: int,
          param_dtype: torch.dtype | None) -> None:
    """Shard ``root`` (which holds ``causal_lm``) in place over the ``world`` ranks of the process
    group, moving each rank's shard to ``device``."""
    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = set(getattr(causal_lm, "_no_split_modules", None) or ())
    for module in causal_lm.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(root, mesh=mesh, mp_policy=policy)


def is_sharded(module: Any) -> bool:
    return isinstance(module, FSDPModule)


@contextmanager
def no_sync(module: FSDPModule) -> Iterator[None]:
    """Backward passes in the block accumulate gradients locally instead of reduce-scattering them."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def gathered_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s full state dict, on rank 0's CPU (empty on the other ranks). Every rank must call
    it: parameters are gathered one at a time."""
    state = cast(dict[str, torch.Tensor],
                 get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
    # Gathering copies each weight, so weights the model ties (input embeddings and head) come back as
    # two tensors; make them one again, so that saving stores the model's one weight.
    first: dict[nn.Parameter, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        tied_to = first.setdefault(param, name)
        if tied_to != name and tied_to in state:
            state[name] = state[tied_to]
    return state


def load_full(root: FSDPModule, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Set the parameters of ``module`` (under the sharded ``root``) named in ``state`` (full tensors,
    read on rank 0 only) on every rank's shards. Every rank must call it."""
    root.reshard()  # the root keeps its weights gathered after a forward pass; loading writes the shards
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(module, cast(dict[str, Any], state), options=options)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective every rank must join); others as they are."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over gradients that may be sharded: the norm is over the
    whole gradient (the shards' partial norms summed across ranks), the same on every rank."""
    params = list(params)
    total = full_tensor(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    if max_norm != math.inf:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)
