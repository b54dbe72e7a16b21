"""The loss step's peak memory and time on a Llama-3-shaped head: full logits against chunks.

Run:  .venv/bin/python bench/loss_memory.py                       # 8,192 tokens, vocab 128,256, hidden 4,096
      .venv/bin/python bench/loss_memory.py --tokens 2048 --train-head   # the head's weight trains too (full FT)
      .venv/bin/python bench/loss_memory.py --tokens 16 --chunk-rows 4 --json      # what the tests run

One step of ``loss = -sum(log p(target))`` and its backward, from final hidden states ``[T, H]``
through the LM head ``[V, H]``, two ways, each measured alone:

    plain     ``logits = hidden @ W.T`` over the whole batch, then ``log_softmax`` and gather (what a
              transformers model and ``F.cross_entropy`` do): ``[T, V]`` logits, and their gradient
    chunked   tunery's ``logprobs.target_logps``: one chunk of rows' logits at a time

Peak memory is the most bytes held at once by tensors the step created (its inputs, the hidden
states and the head, are not counted). On CUDA that is ``torch.cuda.max_memory_allocated`` above
the inputs; on CPU a dispatch mode adds up every new tensor storage until it is freed, which is what
the allocator holds for them. Also printed: the largest single tensor the step created, the step's
time, and how far the chunked values and gradients are from the plain ones (max abs difference,
and relative to the largest magnitude). fp32 on CPU, bf16 under autocast on CUDA unless --dtype.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tunery.training.logprobs import chunk_rows, logits_target_logps, target_logps


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops create under it, while they live: the peak, and the
    largest single one. Outputs that share an input's storage (views, in-place ops) are not new."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = self.largest = 0
        self.live: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._created(t.untyped_storage(), inputs)
        return out

    def _created(self, storage: torch.UntypedStorage, inputs: set[int]) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if key in inputs or key in self.live or size == 0:
            return
        self.live.add(key)
        self.now += size
        self.peak, self.largest = max(self.peak, self.now), max(self.largest, size)
        weakref.finalize(storage, self._freed, key, size)

    def _freed(self, key: int, size: int) -> None:
        self.live.discard(key)
        self.now -= size


@contextmanager
def measured(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak and largest-tensor bytes created inside the block, and its seconds."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        yield result
        torch.cuda.synchronize()
        result.update(seconds=time.perf_counter() - start, peak=torch.cuda.max_memory_allocated() - base,
                      largest=float("nan"))
        return
    with LiveBytes() as live:
        start = time.perf_counter()
        yield result
        result["seconds"] = time.perf_counter() - start
    result.update(peak=live.peak, largest=live.largest)


def step(path: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int,
         dtype: torch.dtype) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One loss step on fresh leaf copies of the inputs; its measurements, then the loss and gradients."""
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_(weight.requires_grad)
    autocast = torch.autocast(h.device.type, dtype=dtype, enabled=dtype != h.dtype)
    with measured(h.device) as m:
        with autocast:
            if path == "plain":
                logps = logits_target_logps((h @ w.T)[None], targets[None])
            else:
                logps = target_logps(h, w, None, targets, rows)
            loss = -logps.sum()
        loss.backward()
        out = {"loss": loss.detach(), "grad_hidden": h.grad}
        if w.grad is not None:
            out["grad_weight"] = w.grad
    return m, out


def differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    out = {}
    for name in a:
        diff = float((a[name].float() - b[name].float()).abs().max())
        out[name] = {"max_abs": diff, "relative": diff / max(float(b[name].float().abs().max()), 1e-30)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--chunk-rows", type=int, default=0, help="default: what training uses (logprobs.chunk_rows)")
    ap.add_argument("--train-head", action="store_true", help="the head's weight takes a gradient (full fine-tune)")
    ap.add_argument("--paths", default="plain,chunked")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], help="matmul dtype (default: fp32 on CPU, bf16 on CUDA)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(0)
    hidden = torch.randn(a.tokens, a.hidden, device=device)
    weight = torch.empty(a.vocab, a.hidden, device=device).normal_(std=a.hidden**-0.5)
    weight.requires_grad_(a.train_head)
    targets = torch.randint(0, a.vocab, (a.tokens,), device=device)
    rows = a.chunk_rows or chunk_rows(a.tokens, a.hidden, a.vocab)
    results: dict[str, Any] = {"tokens": a.tokens, "hidden": a.hidden, "vocab": a.vocab, "chunk_rows": rows,
                               "dtype": str(dtype).removeprefix("torch."), "device": device.type,
                               "train_head": a.train_head,
                               "full_logits_bytes": a.tokens * a.vocab * 4, "chunk_logits_bytes": rows * a.vocab * 4}
    outputs = {}
    for path in a.paths.split(","):
        results[path], outputs[path] = step(path, hidden, weight, targets, rows, dtype)
    if len(outputs) == 2:
        results["chunked_vs_plain"] = differences(outputs["chunked"], outputs["plain"])
    print(json.dumps(results) if a.json else report(results, " ".join(sys.argv)))


def report(r: dict[str, Any], command: str) -> str:
    mb: Callable[[float], str] = lambda b: f"{b / 2**20:,.0f} MB"  # noqa: E731
    lines = [f"`{command}`", "",
             f"{r['tokens']:,} tokens, hidden {r['hidden']:,}, vocab {r['vocab']:,}, {r['dtype']} on {r['device']}, "
             f"head {'trained' if r['train_head'] else 'frozen'}; full fp32 logits {mb(r['full_logits_bytes'])}, "
             f"one chunk's ({r['chunk_rows']} rows) {mb(r['chunk_logits_bytes'])}", "",
             "| path | peak memory of the step | largest tensor | seconds |", "|---|---|---|---|"]
    for path in ("plain", "chunked"):
        if path in r:
            m = r[path]
            largest = "n/a" if m["largest"] != m["largest"] else mb(m["largest"])
            lines.append(f"| {path} | {mb(m['peak'])} | {largest} | {m['seconds']:.2f} |")
    if "chunked_vs_plain" in r:
        diffs = [f"{k} max abs diff {v['max_abs']:.2e} (relative {v['relative']:.1e})"
                 for k, v in r["chunked_vs_plain"].items()]
        lines += ["", "chunked vs plain: " + "; ".join(diffs),
                  f"peak memory: chunked is {r['chunked']['peak'] / r['plain']['peak']:.3f}x plain"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
