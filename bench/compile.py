"""Does ``torch.compile`` make tunery's training step faster? Compile time and step time, eager against compiled.

Run:  .venv/bin/python bench/compile.py                        # small-llama LoRA, 8 rows of 256 tokens
      .venv/bin/python bench/compile.py --full --model tiny-llama

One process per variant (eager, compiled), alternating, --repeats times. Each builds the model as a
job does (``load_for_training``), then times --steps forward+backward+optimizer steps on the same
packed batch after one warm-up step; for the compiled variant, ``torch.compile`` wraps the module
training passes go through (``loaded.scorer``: the model plus the chunked loss), and the warm-up
step's extra time over an eager step is reported as the compile time. Steps are timed in CPU
seconds of the process (``time.process_time``) as well as wall seconds: on a shared, loaded box the
CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def child(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from train_step import build_step

    step = build_step(a.model, a.full, Path(a.workdir))
    if a.variant == "compiled":
        step.loaded.scorer = torch.compile(step.loaded.scorer)  # type: ignore[assignment]

    def timed() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        step.run()
        return time.perf_counter() - wall, time.process_time() - cpu

    first = timed()
    times = [timed() for _ in range(a.steps)]
    wall = statistics.median(t for t, _ in times)
    return {"variant": a.variant, "first_wall": first[0], "step_wall": wall,
            "step_cpu": statistics.median(c for _, c in times), "tokens": step.batch.num_tokens,
            "precision": str(step.loaded.autocast_dtype or torch.float32).removeprefix("torch.")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small-llama")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/tunery-bench-compile")
    ap.add_argument("--variant", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(child(a)))
        return
    results: dict[str, list[dict[str, Any]]] = {"eager": [], "compiled": []}
    for rep in range(a.repeats):
        for variant in ("eager", "compiled") if rep % 2 == 0 else ("compiled", "eager"):
            args = [sys.executable, __file__, "--variant", variant, "--model", a.model, "--steps", str(a.steps),
                    "--workdir", a.workdir, *(["--full"] if a.full else [])]
            out = subprocess.run(args, capture_output=True, text=True, check=True)
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {variant} #{rep}: {results[variant][-1]}", file=sys.stderr)
    med = {v: {k: statistics.median(r[k] for r in runs) for k in ("first_wall", "step_wall", "step_cpu")}
           for v, runs in results.items()}
    compile_s = med["compiled"]["first_wall"] - med["eager"]["first_wall"]
    print(f"`{' '.join(sys.argv)}` ({a.model}, {'full' if a.full else 'LoRA r=8'}, "
          f"{results['eager'][0]['tokens']} tokens a step, {results['eager'][0]['precision']}, medians of {a.repeats})")
    print(f"- compile time (first step over eager's first step): {compile_s:.1f} s")
    for key, label in (("step_wall", "wall"), ("step_cpu", "CPU")):
        e, c = med["eager"][key], med["compiled"][key]
        print(f"- step {label} time: eager {e * 1000:.0f} ms, compiled {c * 1000:.0f} ms: "
              f"compiled is {e / c:.2f}x eager")


if __name__ == "__main__":
    main()
