"""bench/step_profile.py: the step's time sorted by kind of work adds up, and the matmul FLOP the
profiler counts is the model's (a LoRA step multiplies the frozen base forward and back: about
4 x the base's matmul weights x the tokens, plus the adapters and the attention scores)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "step_profile.py"


def test_the_profile_of_a_tiny_lora_step_adds_up(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--only", "tiny-llama-lora", "--steps", "1", "--repeats", "1",
                          "--peak-seconds", "0.2", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    shares = [float(x) for x in re.findall(r"^\| [a-z ]+ \| [\d.]+ \| ([\d.]+) % \|$", out, re.M)]
    assert len(shares) == 8 and abs(sum(shares) - 100) < 0.5, out
    flop = float(re.search(r"matmuls: ([\d.]+) GFLOP a step", out).group(1))  # type: ignore[union-attr]
    assert 7.2 < flop < 9, out  # 4 x 886,528 matmul weights x 2,034 tokens = 7.2 GFLOP, plus attention, adapters
    assert re.search(r"\*\*[\d.]+ % of the peak\*\*; they are \*\*[\d.]+ % of the step\*\*", out), out
