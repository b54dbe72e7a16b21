"""LoRA layers as one autograd op, so the low-rank update costs no extra passes over the output.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: beside the GEMMs, a multiply and an
add over the whole ``[tokens, out]`` output, a multiply over it again in the backward, and an add of
the two gradients that reach ``x``; on the 2-core CPU box those elementwise passes were about 15 % of
a small-llama LoRA step. ``lora_linear`` does the same arithmetic with the scale folded into ``B``
(``[out, r]``, tiny) and each update accumulated by the GEMM that follows it (``addmm_``): the
update into the base output, and the LoRA path's input gradient into the base one.

``fuse_lora_layers`` points the forward of every peft ``lora.Linear`` of a model at it. peft's own
extension point for this is a private variant API, so the layers keep their class (saving, merging
and peft's other modes are untouched), and a layer whose state the fused op does not cover (adapter
disabled or merged, several active adapters, dropout, DoRA or another variant, a LoRA bias) runs
peft's forward, checked at every call.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
from torch import nn


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """``x @ weight.T + bias + scale * (x @ lora_a.T) @ lora_b.T``. Matmuls run in the autocast dtype
    when autocast is on for ``x``'s device (as ``nn.Linear`` would), else in ``x``'s dtype."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    out: torch.Tensor = _LoraLinear.apply(x, weight, bias, lora_a, lora_b, scale, dtype)
    return out


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        w, a, b = weight.to(dtype), lora_a.to(dtype), (lora_b * scale).to(dtype)
        xa = x2 @ a.T
        out = torch.addmm(bias.to(dtype), x2, w.T) if bias is not None else x2 @ w.T
        out.addmm_(xa, b.T)
        ctx.save_for_backward(x2, xa, w, a, b)
        ctx.scale, ctx.shape, ctx.dtypes = scale, x.shape, (x.dtype, weight.dtype, lora_a.dtype, lora_b.dtype)
        return out.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, xa, w, a, b = ctx.saved_tensors
        x_dtype, w_dtype, a_dtype, b_dtype = ctx.dtypes
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        g = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
        gxa = g @ b  # the gradient at x @ a.T; b already carries the scale
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if need_x:
            grad_x = (g @ w).addmm_(gxa, a).view(ctx.shape).to(x_dtype)
        if need_w:
            grad_w = (g.T @ x2).to(w_dtype)
        if need_bias:
            grad_bias = g.sum(0).to(w_dtype)
        if need_a:
            grad_a = (gxa.T @ x2).to(a_dtype)
        if need_b:
            grad_b = (g.T @ xa).mul_(ctx.scale).to(b_dtype)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None


def fuse_lora_layers(model: nn.Module) -> int:
    """Route the forward of ``model``'s peft ``lora.Linear`` layers over ``nn.Linear`` through
    ``lora_linear``; returns how many."""
    from peft.tuners.lora import Linear as LoraLinear

    count = 0
    for layer in model.modules():
        if isinstance(layer, LoraLinear) and type(layer.get_base_layer()) is nn.Linear and not layer.fan_in_fan_out:
            layer.forward = MethodType(_fused_forward, layer)  # type: ignore[method-assign]  # the class stays peft's
            count += 1
    return count


def _fused_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    adapter = _plain_adapter(layer)
    if adapter is None or args or kwargs:
        return type(layer).forward(layer, x, *args, **kwargs)  # type: ignore[no-any-return]
    base = layer.get_base_layer()
    return lora_linear(x, base.weight, base.bias, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
                       layer.scaling[adapter])


def _plain_adapter(layer: Any) -> str | None:
    """The one active adapter, if it is plain LoRA in the state ``lora_linear`` computes."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name: str = layer.active_adapters[0]
    if (name not in layer.lora_A or name in layer.lora_variant or layer.lora_B[name].bias is not None
            or not isinstance(layer.lora_dropout[name], nn.Identity)):
        return None
    return name
