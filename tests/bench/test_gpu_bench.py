"""bench/gpu.py's CPU smoke mode: both sides train the scaled-down Llama-3.2-1B shape on packed rows
and report tokens/s, MFU and the speed-up; the model FLOPs per token follow the configs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "gpu.py"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_token_follow_the_published_shapes() -> None:
    bench = _bench()
    one_b, eight_b = bench.model_config("llama-3.2-1b", False), bench.model_config("llama-3.1-8b", False)
    # matmul weights, the LM head included (tied or not): 0.973B + 0.263B, and 6.98B + 0.525B
    assert bench.flops_per_token(one_b, "full", [1]) == pytest.approx(6 * 1.2358e9, rel=1e-4)
    assert bench.flops_per_token(eight_b, "lora", [1]) == pytest.approx(4 * 7.5049e9, rel=1e-4)
    # causal attention grows with each document's length, not the row's
    assert bench.flops_per_token(eight_b, "lora", [4096]) > bench.flops_per_token(eight_b, "lora", [256] * 16)


@pytest.mark.slow
def test_the_smoke_mode_trains_both_sides_and_reports(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--runs", "llama-3.2-1b:lora", "--json",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert r["smoke"] and r["seq"] == 128 and r["measured_peak"] > 0
    [run] = r["runs"]
    assert (run["model"], run["method"]) == ("llama-3.2-1b", "lora")
    for side in ("tunery", "trl"):
        assert run[side]["tokens_per_s"] > 0 and run[side]["steps"] > r["warmup"]
        assert run[side]["mfu_measured"] > 0
    assert run["speedup_vs_trl"] == pytest.approx(run["tunery"]["tokens_per_s"] / run["trl"]["tokens_per_s"])
