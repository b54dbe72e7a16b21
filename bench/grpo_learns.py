"""Proof that GRPO learns: tunery/tiny-llama, taught the answer format by a short SFT, is trained with
GRPO on small additions graded by a string_check grader; its eval reward (exact answers, greedy) is
compared with the same run at learning rate 0, side by side in one process.

    python bench/grpo_learns.py                  # the recorded run (a few CPU minutes)
    python bench/grpo_learns.py --steps 10       # shorter

Prints the eval-reward curve of both runs and a markdown block for bench/results/grpo_learns.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tunery.models.builtin import ensure_builtin
from tunery.training.config import LoraSettings, TrainConfig
from tunery.training.recipes import grpo, sft
from tunery.training.reporter import ListReporter

GRADER = {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
          "reference": "{{ item.answer }}", "operation": "eq"}


def additions(pairs: list[tuple[int, int]], with_answer: bool) -> list[dict[str, Any]]:
    rows = []
    for a, b in pairs:
        user = {"role": "user", "content": f"{a}+{b}="}
        if with_answer:
            rows.append({"messages": [user, {"role": "assistant", "content": str(a + b)}]})
        else:
            rows.append({"messages": [user], "answer": str(a + b)})
    return rows


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="grpo-learns-"))
    base = ensure_builtin("tunery/tiny-llama", root / "models")
    pairs = [(a, b) for a in range(args.operands) for b in range(args.operands)]
    random.Random(0).shuffle(pairs)
    sft_cfg = TrainConfig(job_id="sft", method="sft", base_model_dir=str(base), output_dir=str(root / "sft"),
                          train_file=write(root / "sft.jsonl", additions(pairs, True)), lora=None,
                          n_epochs=args.sft_epochs, learning_rate=3e-3, batch_size=16, lr_scheduler_type="linear",
                          n_checkpoints=1, device="cpu", seed=0)
    started = time.perf_counter()
    sft.run(sft_cfg, ListReporter())
    sft_seconds = time.perf_counter() - started
    prompts = write(root / "rl.jsonl", additions(pairs, False))
    val = write(root / "val.jsonl", additions(pairs, False))
    curves: dict[str, list[tuple[int, float]]] = {}
    seconds: dict[str, float] = {}
    for name, lr in (("grpo", args.lr), ("lr0", 0.0)):
        cfg = TrainConfig(job_id=name, method="grpo", base_model_dir=str(base), init_from=str(root / "sft/final/model"),
                          output_dir=str(root / name), train_file=prompts, validation_file=val,
                          lora=LoraSettings(r=16) if args.lora else None, n_epochs=1,
                          learning_rate=max(lr, 1e-9), batch_size=args.prompts,
                          lr_scheduler_type="linear", n_checkpoints=1, device="cpu", seed=1, grader=GRADER,
                          grpo_group_size=args.group, grpo_max_new_tokens=4, grpo_temperature=1.0, grpo_beta=args.beta,
                          eval_interval=args.eval_interval, eval_samples=args.eval_samples, max_seq_length=64)
        # A learning rate of 0 is no job anyone submits (the config refuses it); set it past validation.
        cfg = cfg.model_copy(update={"learning_rate": lr})
        cfg = _limit_steps(cfg, args.steps, args.prompts)
        reporter = ListReporter()
        started = time.perf_counter()
        grpo.run(cfg, reporter)
        seconds[name] = time.perf_counter() - started
        curves[name] = reporter.metric_steps("eval/reward")
    return {"curves": curves, "seconds": seconds, "sft_seconds": sft_seconds}


def _limit_steps(cfg: TrainConfig, steps: int, prompts: int) -> TrainConfig:
    """Repeat the prompts as often as ``steps`` rollouts of ``prompts`` need (one epoch)."""
    path = Path(cfg.train_file)
    rows = path.read_text().splitlines()
    need = steps * prompts
    path.write_text("\n".join((rows * (need // len(rows) + 1))[:need]) + "\n")
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient")
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--operands", type=int, default=5, help="additions a+b with a, b below this")
    parser.add_argument("--eval-interval", type=int, default=5)
    parser.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning instead of LoRA")
    parser.add_argument("--eval-samples", type=int, default=8, help="sampled answers per eval prompt (1: greedy)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    result = run(args)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load before: {load}; after: {uptime}")
    print(f"SFT (format): {result['sft_seconds']:.0f} s")
    for name, curve in result["curves"].items():
        print(f"{name:5s} ({result['seconds'][name]:.0f} s): " + "  ".join(f"{s}:{r:.2f}" for s, r in curve))


if __name__ == "__main__":
    main()
