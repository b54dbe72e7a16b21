"""Packed attention without an ``L x L`` mask: tunery's per-example segments against FlexAttention
document masks and PyTorch's variable-length FlashAttention, on one attention call.

Run:  .venv/bin/python bench/packed_attention.py                 # CUDA: Llama-3.1-8B heads, 4 rows of 4,096
      .venv/bin/python bench/packed_attention.py --device cpu    # CPU: small-llama heads, 2 rows of 1,024
      .venv/bin/python bench/packed_attention.py --smoke --json  # what the tests run (CPU, tiny, fp32, no compile)

Rows of ``--width`` tokens are packed with examples whose lengths are drawn (seeded) from
``[--min-len, --max-len]``, each row closed by padding when the next example does not fit. The same
queries, keys and values (grouped-query: ``--heads`` query heads, ``--kv-heads`` key/value heads) go
through each variant, forward and backward (an output gradient that is zero on row padding):

    segments  tunery's path on CUDA and for wide rows (``attention.segmented_attention``): each example
              gathered out of the rows, examples bucketed by length, causal SDPA per bucket, scattered back
    mask      SDPA with the 4-D block-diagonal mask (``collate.attention_bias``): tunery's CPU path for
              rows up to 512 tokens; memory and work grow with the square of the row width
    flex      ``flex_attention`` with a document-causal block mask built from the segment ids (the
              build is timed with it, as training would build one per batch), under ``torch.compile``
              (``--no-compile``: eager, which materialises the scores); torch 2.13 has no CPU backward
              for it, so on CPU only its forward is timed
    varlen    ``torch.nn.attention.varlen.varlen_attn``: FlashAttention over cumulative example lengths,
              no gathering and no padding; CUDA and bf16/fp16 only

Printed per variant: median time of forward and of forward + backward (CPU seconds on CPU, wall
seconds with synchronisation on CUDA), the ratio to ``segments``, the peak CUDA memory of forward +
backward above what was allocated before it, the first call's time (compilation), and the largest
difference from ``segments`` in the outputs and the input gradients over real tokens, relative to
their largest magnitude.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tunery.training.attention import segmented_attention, segments
from tunery.training.data.collate import attention_bias
from tunery.training.model import autocast_dtype_for

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # q, k, v -> [B, L, H, D]


@dataclass
class Packed:
    rows: list[list[int]]  # example lengths per row
    segment_ids: torch.Tensor  # [B, L]; row padding is its own segment
    real: torch.Tensor  # [B, L] bool: not row padding


def pack(rows: int, width: int, min_len: int, max_len: int, seed: int) -> Packed:
    rng = random.Random(seed)
    lengths: list[list[int]] = []
    for _ in range(rows):
        row: list[int] = []
        while True:
            n = rng.randint(min_len, max_len)
            if sum(row) + n > width:
                break
            row.append(n)
        lengths.append(row or [width])
    segment_ids = torch.empty(rows, width, dtype=torch.long)
    real = torch.zeros(rows, width, dtype=torch.bool)
    for b, row in enumerate(lengths):
        at = 0
        for s, n in enumerate(row):
            segment_ids[b, at : at + n] = s
            at += n
        segment_ids[b, at:] = len(row)
        real[b, :at] = True
    return Packed(lengths, segment_ids, real)


def variants(packed: Packed, device: torch.device, dtype: torch.dtype, compile_flex: bool,
             gqa: bool) -> dict[str, Attention | str]:
    """Each variant's attention call, or why it cannot run here."""
    width = packed.segment_ids.shape[1]
    segs = segments(packed.rows, width).to(device)
    bias = attention_bias(packed.segment_ids.to(device), dtype)
    out: dict[str, Attention | str] = {
        "segments": lambda q, k, v: segmented_attention(q, k, v, segs, None, 0.0),
        "mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa).transpose(1, 2),
        "flex": _flex(packed, device, compile_flex, gqa),
        "varlen": _varlen(packed, device, dtype, gqa),
    }
    return out


def _flex(packed: Packed, device: torch.device, compile_flex: bool, gqa: bool) -> Attention:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    seg = packed.segment_ids.to(device)
    batch, width = seg.shape
    attend = torch.compile(flex_attention, dynamic=False) if compile_flex else flex_attention
    build = torch.compile(create_block_mask) if compile_flex else create_block_mask

    def document_causal(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (seg[b, q] == seg[b, kv]) & (q >= kv)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        block_mask = build(document_causal, batch, None, width, width, device=device.type)
        out: torch.Tensor = attend(q, k, v, block_mask=block_mask, enable_gqa=gqa)
        return out.transpose(1, 2)

    return run


def _varlen(packed: Packed, device: torch.device, dtype: torch.dtype, gqa: bool) -> Attention | str:
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return "CUDA with bf16/fp16 only"
    from torch.nn.attention.varlen import varlen_attn

    width = packed.segment_ids.shape[1]
    spans = [n for row in packed.rows for n in [*row, width - sum(row)] if n]  # row padding: its own span
    cu_seq = torch.tensor([0, *torch.tensor(spans).cumsum(0).tolist()], dtype=torch.int32, device=device)
    longest = max(spans)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads, _, dim = q.shape
        flat = [t.transpose(1, 2).reshape(batch * width, t.shape[1], dim) for t in (q, k, v)]
        out = varlen_attn(*flat, cu_seq, cu_seq, longest, longest, window_size=(-1, 0), enable_gqa=gqa)
        assert isinstance(out, torch.Tensor)
        return out.view(batch, width, heads, dim)

    return run


def clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        def cuda_now() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return cuda_now
    return time.process_time


def measure(name: str, attend: Attention, inputs: tuple[torch.Tensor, ...], grad_out: torch.Tensor,
            real: torch.Tensor, reference: dict[str, Any] | None, repeats: int, backward: bool,
            device: torch.device) -> dict[str, Any]:
    now = clock(device)
    if not backward:
        inputs = tuple(t.detach() for t in inputs)  # FlexAttention on CPU refuses inputs that require grad

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return attend(*inputs)

    def both() -> tuple[torch.Tensor, list[torch.Tensor]]:
        for t in inputs:
            t.grad = None
        out = attend(*inputs)
        out.backward(grad_out)
        return out.detach(), [t.grad.clone() for t in inputs if t.grad is not None]

    start = time.perf_counter()  # wall: compilation runs in worker processes, off this one's CPU clock
    out, grads = both() if backward else (forward(), [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - start
    fwd, fwd_bwd = [], []
    held = 0  # bytes allocated before a timed forward + backward (inputs, earlier results): not its peak
    for _ in range(repeats):
        start = now()
        forward()
        fwd.append(now() - start)
        if backward:
            if device.type == "cuda":
                for t in inputs:
                    t.grad = None  # the last call's gradients would count as held and be freed inside
                torch.cuda.reset_peak_memory_stats()
                held = torch.cuda.memory_allocated()
            start = now()
            both()
            fwd_bwd.append(now() - start)
    row: dict[str, Any] = {"variant": name, "first_call_s": first, "forward_s": statistics.median(fwd),
                           "forward_backward_s": statistics.median(fwd_bwd) if fwd_bwd else None,
                           "peak_mb": (torch.cuda.max_memory_allocated() - held) / 2**20 if device.type == "cuda" and
                           backward else None, "out": out, "grads": grads}
    if reference is not None:
        row["out_diff"] = _relative(out[real], reference["out"][real])
        row["grad_diff"] = max((_relative(g, r) for g, r in zip(grads, reference["grads"], strict=True)),
                               default=None) if grads else None
    return row


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["fp32", "bf16"],
                   help="default: what training's precision auto picks on the device (bf16 on CUDA and on CPUs "
                        "with AVX512-BF16 or AMX, else fp32)")
    p.add_argument("--rows", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--min-len", type=int)
    p.add_argument("--max-len", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="segments,mask,flex,varlen")
    p.add_argument("--no-compile", action="store_true", help="run flex eagerly (materialises the scores)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes in fp32, flex eager: checks the script runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.smoke:
        device, args.no_compile, args.repeats = torch.device("cpu"), True, min(args.repeats, 2)
        args.dtype = args.dtype or "fp32"  # exact comparisons between the variants
    gpu = device.type == "cuda"
    shape = ((2, 128, 8, 48, 4, 2, 16) if args.smoke else (4, 4096, 64, 1536, 32, 8, 128) if gpu
             else (2, 1024, 16, 400, 8, 8, 64))
    rows, width, min_len, max_len, heads, kv_heads, dim = (
        given if given is not None else default for given, default in zip(
            (args.rows, args.width, args.min_len, args.max_len, args.heads, args.kv_heads, args.head_dim), shape,
            strict=True))
    dtype = ({"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype] if args.dtype
             else autocast_dtype_for(device, "auto") or torch.float32)
    backward_flex = gpu  # torch 2.13: FlexAttention has no backward on CPU

    torch.manual_seed(args.seed)
    packed = pack(rows, width, min_len, max_len, args.seed)
    real = packed.real.to(device)
    q = torch.randn(rows, heads, width, dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(rows, kv_heads, width, dim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(rows, kv_heads, width, dim, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(rows, width, heads, dim, device=device, dtype=dtype) * real[:, :, None, None]
    wanted = args.variants.split(",")
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    reference: dict[str, Any] | None = None
    for name, attend in variants(packed, device, dtype, not args.no_compile, kv_heads != heads).items():
        if name not in wanted:
            continue
        if isinstance(attend, str):
            skipped[name] = attend
            continue
        backward = name != "flex" or backward_flex
        row = measure(name, attend, (q, k, v), grad_out, real, reference, args.repeats, backward, device)
        if name == "segments":
            reference = row
        results.append(row)
    report(results, skipped, dict(device=str(device), dtype=str(dtype).removeprefix("torch."), rows=rows,
                                  width=width, examples=sum(len(r) for r in packed.rows),
                                  real_tokens=int(packed.real.sum()), min_len=min_len, max_len=max_len,
                                  heads=heads, kv_heads=kv_heads, head_dim=dim, torch=torch.__version__),
           args.json)
    return 0


def report(results: list[dict[str, Any]], skipped: dict[str, str], setup: dict[str, Any], as_json: bool) -> None:
    base = next((r for r in results if r["variant"] == "segments"), None)
    for r in results:
        del r["out"], r["grads"]
        for key in ("forward", "forward_backward"):
            mine, theirs = r[f"{key}_s"], base[f"{key}_s"] if base else None
            r[f"{key}_vs_segments"] = theirs / mine if mine and theirs else None
    if as_json:
        json.dump({"setup": setup, "results": results, "skipped": skipped}, sys.stdout, indent=2)
        print()
        return
    print(" · ".join(f"{k} {v}" for k, v in setup.items()))
    print("| variant | forward ms | speed-up over segments | fwd+bwd ms | speed-up over segments | peak MB "
          "| first call, wall s | out diff | grad diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cells = [r["variant"], _ms(r["forward_s"]), _x(r["forward_vs_segments"]), _ms(r["forward_backward_s"]),
                 _x(r["forward_backward_vs_segments"]), _num(r["peak_mb"]), f"{r['first_call_s']:.2f}",
                 _sci(r.get("out_diff")), _sci(r.get("grad_diff"))]
        print("| " + " | ".join(cells) + " |")
    for name, why in skipped.items():
        print(f"- {name}: not run ({why})")


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1000:.1f}"


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _sci(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1e}"


if __name__ == "__main__":
    sys.exit(main())
