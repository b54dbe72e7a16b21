"""Proof that GRPO learns: tunery/tiny-llama, taught the answer format by a short SFT, is trained with
GRPO on small additions graded by a string_check grader; its eval reward is compared with the same
run at learning rate 0, side by side in one process.

    python bench/grpo_learns.py                  # the recorded run (a few CPU minutes)
    python bench/grpo_learns.py --steps 12       # what the test runs

The SFT (full fine-tuning, 12 epochs over the 25 additions ``a+b=`` with a, b in 0..4) stops half way
to memorising them: the model answers in the format (one number, then the end of its turn) and is
right about a quarter of the time at temperature 1, so nearly every group of completions holds right
and wrong answers to compare. The eval reward is the exact-answer rate of ``--eval-samples`` seeded
samples per prompt at the sampling temperature (the policy's expected reward), the same seeds at every
eval: a model that does not change scores the same. Both runs pin fp32 so that the curves do not
depend on whether the CPU multiplies bf16 natively.

Prints the eval-reward curve of both runs and the rows for bench/results/grpo_learns.md.
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
from tunery.training.config import TrainConfig
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
                          n_checkpoints=1, device="cpu", precision="fp32", seed=0)
    started = time.perf_counter()
    sft.run(sft_cfg, ListReporter())
    sft_seconds = time.perf_counter() - started
    prompts = [json.dumps(r) for r in additions(pairs, False)]
    need = args.steps * args.prompts  # one epoch of ``steps`` rollouts
    train = root / "rl.jsonl"
    train.write_text("\n".join((prompts * (need // len(prompts) + 1))[:need]) + "\n")
    val = write(root / "val.jsonl", additions(pairs, False))
    curves: dict[str, list[tuple[int, float]]] = {}
    train_rewards: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for name, lr in (("grpo", args.lr), ("lr0", 0.0)):
        cfg = TrainConfig(job_id=name, method="grpo", base_model_dir=str(base), init_from=str(root / "sft/final/model"),
                          output_dir=str(root / name), train_file=str(train), validation_file=val,
                          lora=None if args.full else {"r": 16}, n_epochs=1, learning_rate=max(lr, 1e-9),
                          batch_size=args.prompts, lr_scheduler_type="linear", min_lr_ratio=1.0, n_checkpoints=1,
                          device="cpu", precision="fp32", seed=args.seed, grader=GRADER, grpo_group_size=args.group,
                          grpo_max_new_tokens=4, grpo_temperature=1.0, grpo_beta=args.beta,
                          eval_interval=args.eval_interval, eval_samples=args.eval_samples, max_seq_length=64)
        # A learning rate of 0 is no job anyone submits (the config refuses it); set it past validation.
        cfg = cfg.model_copy(update={"learning_rate": lr})
        reporter = ListReporter()
        started = time.perf_counter()
        grpo.run(cfg, reporter)
        seconds[name] = time.perf_counter() - started
        curves[name] = reporter.metric_steps("eval/reward")
        train_rewards[name] = [r for _, r in reporter.metric_steps("train/reward")]
    return {"curves": curves, "train": train_rewards, "seconds": seconds, "sft_seconds": sft_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate (constant)")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient")
    parser.add_argument("--sft-epochs", type=int, default=12)
    parser.add_argument("--operands", type=int, default=5, help="additions a+b with a, b below this")
    parser.add_argument("--eval-interval", type=int, default=5)
    parser.add_argument("--eval-samples", type=int, default=8, help="sampled answers per eval prompt (1: greedy)")
    parser.add_argument("--seed", type=int, default=1, help="the GRPO runs' seed (the SFT's is 0)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r=16")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    result = run(args)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load before: {load}; after: {uptime}")
    print(f"SFT (format): {result['sft_seconds']:.0f} s")
    steps = [s for s, _ in result["curves"]["grpo"]]
    print("| step | " + " | ".join(str(s) for s in steps) + " |")
    print("|---" * (len(steps) + 1) + "|")
    for name, curve in result["curves"].items():
        label = f"GRPO, lr {args.lr:g}" if name == "grpo" else "GRPO, lr 0"
        print(f"| {label} ({result['seconds'][name]:.0f} s) | " + " | ".join(f"{r:.3f}" for _, r in curve) + " |")
    for name, rewards in result["train"].items():
        print(f"train/reward {name}: " + " ".join(f"{r:.2f}" for r in rewards))


if __name__ == "__main__":
    main()
