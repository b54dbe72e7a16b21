"""Where tunery's training step spends its time, by kind of work: what limits the CPU targets of
bench/train_vs_trl.py (issue 18, point 5).

Run:  .venv/bin/python bench/step_profile.py                 # tiny-llama LoRA, small-llama LoRA and full
      .venv/bin/python bench/step_profile.py --only small-llama-full --steps 6

For each configuration the step is built as a job builds it (bench/train_step.py: 8 packed rows of
256 tokens, LoRA r=8 or full, the precision a job picks here), warmed up, then:

1. --steps steps are timed (wall seconds, as the bench's tokens/s are);
2. the same number of steps run under ``torch.profiler`` (with FLOP counts), and every op's self time
   is sorted into matmul, attention, elementwise, casts, loss, optimizer, and the rest (the step's time
   outside any op: Python, autograd's engine, the dispatcher);
3. the matmuls' FLOP (counted by the profiler from their shapes) over their time gives the rate they
   run at, against this machine's matmul peak measured in the same process (bench/train_vs_trl.py's
   4096² loop, before and after; the better of the two, as anything else running only lowers it).

Both, --repeats times, and the medians are reported. So the step's model FLOP/s is (matmul share of
the step) x (matmul rate): the table shows which of the two keeps it from a target, and by how much.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from train_step import Step, build_step
from train_vs_trl import child_peak

CONFIGS = {"tiny-llama-lora": ("tiny-llama", False), "small-llama-lora": ("small-llama", False),
           "small-llama-full": ("small-llama", True)}
MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"}
CASTS = {"aten::copy_", "aten::_to_copy", "aten::to"}
LOSS = {"aten::logsumexp", "aten::log_softmax", "aten::_log_softmax", "aten::_log_softmax_backward_data",
        "aten::gather", "aten::scatter_add_", "aten::nll_loss_forward", "aten::nll_loss_backward", "aten::exp",
        "aten::sub", "aten::scatter", "aten::index_select"}
KINDS = ("matmul", "attention", "elementwise", "casts", "loss", "optimizer", "other ops", "outside ops")
OPTIMIZER = {"aten::_fused_adamw_", "aten::_foreach_zero_", "Optimizer.zero_grad#AdamW.zero_grad"}


def category(name: str) -> str:
    if name in MATMUL:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
        return "attention"
    if name in CASTS:
        return "casts"
    if name in LOSS:
        return "loss"
    if name in OPTIMIZER or name.startswith("Optimizer."):
        return "optimizer"
    return "elementwise" if name.startswith("aten::") else "other ops"


def measure(step: Step, steps: int, repeats: int) -> dict[str, float]:
    """Per step, medians over ``repeats`` rounds of ``steps`` timed then ``steps`` profiled steps:
    wall ms, ms per kind of work (ops' self time), matmul FLOP."""
    step.run()
    step.run()
    rounds: list[dict[str, float]] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step.run()
        wall = (time.perf_counter() - start) / steps
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                step.run()
            profiled_wall = (time.perf_counter() - start) / steps
        out = {"wall_ms": wall * 1000, "profiled_wall_ms": profiled_wall * 1000, "matmul_flop": 0.0}
        out.update(dict.fromkeys(KINDS[:-1], 0.0))
        for event in prof.key_averages():
            kind = category(event.key)
            out[kind] += event.self_cpu_time_total / 1000 / steps
            if kind == "matmul":
                out["matmul_flop"] += (event.flops or 0) / steps
        out["outside ops"] = max(0.0, out["profiled_wall_ms"] - sum(out[k] for k in KINDS[:-1]))
        rounds.append(out)
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def report(name: str, r: dict[str, float], tokens: int, peak: float, precision: str) -> None:
    total = sum(r[k] for k in KINDS)
    print(f"\n### {name} ({tokens} tokens a step, {precision}, peak {peak:.1f} GFLOP/s)\n")
    print(f"step wall {r['wall_ms']:.1f} ms ({tokens / r['wall_ms'] * 1000:,.0f} tok/s); under the profiler "
          f"{r['profiled_wall_ms']:.1f} ms, shares below of that\n")
    print("| work | ms a step | share |\n|---|---|---|")
    for k in KINDS:
        print(f"| {k} | {r[k]:.1f} | {100 * r[k] / total:.1f} % |")
    rate = r["matmul_flop"] / (r["matmul"] / 1000) / 1e9
    share = r["matmul"] / total
    print(f"\n- matmuls: {r['matmul_flop'] / 1e9:.2f} GFLOP a step at {rate:.1f} GFLOP/s while they run = "
          f"**{100 * rate / peak:.1f} % of the peak**; they are **{100 * share:.1f} % of the step**")
    print(f"- the step's matmul FLOP/s: {100 * share * rate / peak:.1f} % of the peak "
          f"(= {100 * share:.1f} % x {100 * rate / peak:.1f} %); with no time outside matmuls it would be "
          f"{100 * rate / peak:.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=list(CONFIGS), action="append")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-seconds", type=float, default=3.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tunery-bench-step"))
    a = ap.parse_args()
    torch.manual_seed(0)
    peaks = [child_peak(a.peak_seconds)]
    results = {}
    for name in a.only or list(CONFIGS):
        model, full = CONFIGS[name]
        step = build_step(model, full, a.workdir)
        precision = str(step.loaded.autocast_dtype or torch.float32).removeprefix("torch.")
        results[name] = (measure(step, a.steps, a.repeats), step.batch.num_tokens, precision)
        print(f"  {name}: {results[name][0]}", file=sys.stderr)
        del step
    peaks.append(child_peak(a.peak_seconds))
    print(f"`{' '.join(sys.argv)}` · {time.strftime('%Y-%m-%d %H:%M')} · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · matmul peak (4096² mm, best thread count) before/after: fp32 "
          f"{peaks[0]['gflops']:.1f}/{peaks[1]['gflops']:.1f}, bf16 {peaks[0]['gflops_bf16']:.1f}/"
          f"{peaks[1]['gflops_bf16']:.1f} GFLOP/s")
    for name, (r, tokens, precision) in results.items():
        key = "gflops_bf16" if precision == "bfloat16" else "gflops"
        report(name, r, tokens, max(p[key] for p in peaks), precision)


if __name__ == "__main__":
    main()
