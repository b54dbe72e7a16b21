"""Training throughput: tunery's SFT recipe against TRL's SFTTrainer on the same job, in one run.

Run:  .venv/bin/python bench/train_vs_trl.py                      # both built-in models, 3 repeats
      .venv/bin/python bench/train_vs_trl.py --models tiny-llama --repeats 1 --samples 200
      .venv/bin/python bench/train_vs_trl.py --base-src /tmp/old/src  # also an older tunery (before/after)

The job: LoRA r=8 (alpha 16, no dropout, all linear layers), packing, max_seq_length 256, batch 8
rows, one epoch, lr 1e-3 linear to 0, no warmup, clipping at 1.0, seed 42, on single-turn chat
samples generated deterministically here (a system prompt on some, one question, an answer of one
to six sentences), loss on the assistant reply only. TRL gets them as conversational
prompt/completion pairs, so both sides train exactly the same reply tokens (the table shows the
counts). Sides, each in its own subprocess (so peak RSS is per side), run one after another (2
cores), their order rotated across repeats:

    tunery       ``tunery.training.recipes.sft.run`` with a ListReporter that time-stamps records;
                 ``tunery.training`` is imported before torch, as ``python -m …recipes.sft`` does
    trl-tuned    SFTTrainer with bf16 and gradient checkpointing off, fp32 weights, packing on
                 (TRL's best-fit decreasing, padding-free)
    trl-tuned-bf16  the same with bf16 autocast on: faster on a CPU with native bf16 (AVX512-BF16,
                 AMX), where tunery's precision "auto" trains in bf16 too. "Tuned TRL" in the verdict is
                 the faster of the two
    trl-default  SFTTrainer with its defaults: bf16 autocast, gradient checkpointing, no packing
                 (``use_cpu=True`` is needed to run at all on a CPU). Stopped after
                 ``--default-steps`` steps: its tokens/s are those steps', its wall-clock is
                 extrapolated to the epoch (marked ~) and its held-out loss is not comparable (n/a)
    trl-tuned-passive  (with --sides) trl-tuned with OMP_WAIT_POLICY=PASSIVE, which tunery sets for
                 itself: how much of the gap is that setting alone
    tunery-base  (with --base-src) tunery imported from another source tree: before/after figures

Printed per side (medians over repeats): trained tokens per second (tokens with a label, over the
training loop: first step start to last step end), wall-clock from process start to the saved
adapter, the held-out loss of that adapter (the same evaluator for every side: token-weighted
cross-entropy on the replies of 64 unseen samples), the last logged train loss, peak RSS, the share
of real (non-padding) tokens in the batches, and the ratios against tunery.

It also measures the machine's fp32 matmul peak (4096² ``torch.mm``, best of 1 and 2 threads,
passive waiting, before and after every repeat) and a *full* fine-tune of small-llama with tunery,
whose model FLOP/s is printed as a fraction of the higher of the two peaks taken around it. FLOPs
are counted as 6·N·T: N the weights of every matmul (each Linear, the tied LM head included; the
embedding lookup is not a matmul), T every real token the step computed (trained or not); causal
attention would add 6·d·n²/2·layers per n-token sample and is printed separately, not counted.

The matmul peak is measured in fp32 and in bf16; the full run's fraction is taken against the peak
of the precision tunery trained in (printed).

Targets on the 2-core dev box: tunery >= 2.5x tuned TRL (the faster of trl-tuned and trl-tuned-bf16)
on both models, held-out loss within 2 % of it, >= 95 % real tokens, >= 65 % of the matmul peak on the
full small run (and, from an earlier issue, >= 10x trl-default).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

LORA_R, LORA_ALPHA, MAX_LEN, BATCH, LR, FULL_LR, SEED = 8, 16, 256, 8, 1e-3, 1e-4, 42
SIDES = ("tunery", "trl-tuned", "trl-tuned-bf16", "trl-default", "trl-tuned-passive", "tunery-base")
DEFAULT_SIDES = SIDES[:4]
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}

SUBJECTS = ["France", "Japan", "Italy", "Spain", "Germany", "the river", "the old bridge", "the train", "the sky",
            "the blue whale", "the small model", "the garden", "the winter", "the summer", "the house"]
QUESTIONS = ["What is the capital of {s}?", "Where is {s}?", "Why is {s} so cold?", "When does {s} arrive?",
             "How many days are in {s}?", "Which color is {s}?", "Who wrote about {s}?"]
FACTS = ["The capital of {s} is {w}.", "{S} is near {w}, close to the old bridge.",
         "{S} is cold because the snow in the mountains melts into it.",
         "{S} arrives at nine in the morning and leaves at noon.", "There are seven days in a week, and {w} has {n}.",
         "The sky is blue on a clear day, and {s} is grey when it rains.",
         "She wrote about {s} in the summer, and he read it in the winter."]
WORDS = ["Paris", "Tokyo", "Rome", "Madrid", "Berlin", "the river", "the house", "the garden", "Monday", "Friday"]


def conversations(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` single-turn chats; the reply is a deterministic-looking function of the question."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        s = rng.choice(SUBJECTS)
        q = rng.randrange(len(QUESTIONS))
        k = 1 + (i * 7 + q) % 6
        reply = " ".join(FACTS[(q + j) % len(FACTS)].format(s=s, S=s[0].upper() + s[1:], w=WORDS[(q + j) % 10],
                                                              n=(i + j) % 90 + 1) for j in range(k))
        messages = [{"role": "user", "content": QUESTIONS[q].format(s=s)}, {"role": "assistant", "content": reply}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "You are a helpful assistant. Answer in full sentences."})
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- children: one side each, printing one JSON object ---------------------------------------------


def child_tunery(a: argparse.Namespace, full: bool, born: float) -> dict[str, Any]:
    import torch

    from tunery.training.config import TrainConfig
    from tunery.training.data.packing import epoch_batches
    from tunery.training.model import autocast_dtype_for
    from tunery.training.recipes import sft
    from tunery.training.reporter import ListReporter

    class TimedReporter(ListReporter):
        def _stamp(self) -> None:
            self.records[-1]["t"] = time.perf_counter()

        def event(self, type: str, message: str, level: str = "info", **fields: Any) -> None:
            super().event(type, message, level, **fields)
            self._stamp()

        def metrics(self, step: int, values: dict[str, float]) -> None:
            super().metrics(step, values)
            self._stamp()

    cfg = TrainConfig(
        job_id="bench", base_model_dir=a.model_dir, train_file=a.train, output_dir=str(Path(a.out) / "run"),
        device="cpu", lora=None if full else {"r": LORA_R, "alpha": LORA_ALPHA},
        batch_size=BATCH, max_seq_length=MAX_LEN, packing=True,
        learning_rate=FULL_LR if full else LR, lr_scheduler_type="linear", seed=SEED)
    reporter = TimedReporter()
    sft.run(cfg, reporter)
    saved, rss = time.perf_counter(), peak_rss_mb()
    start = reporter.events("training_start")[0]
    metrics = reporter.of_kind("metrics")
    # What the recipe packed: re-derive its rows from the lengths it trained on.
    data = _tunery_examples(a.model_dir, a.train)
    lengths = [len(e) for e in data]
    batches = epoch_batches(lengths, batch_size=BATCH, capacity=MAX_LEN, packing=True,
                            seed=SEED, epoch=0)
    padded = sum(len(b) * max(sum(lengths[i] for i in row) for row in b) for b in batches)
    out = {
        "trained_tokens": sum(e.num_trained for e in data),
        "real_tokens": sum(lengths),
        "real_fraction": sum(lengths) / padded,
        "loop_s": metrics[-1]["t"] - start["t"],
        "wall_s": saved - born,
        "partial": False,
        "peak_rss_mb": rss,
        "steps": len(metrics),
        "train_loss": metrics[-1]["values"]["train/loss"],
        "adapter": str(Path(a.out) / "run" / "final" / ("model" if full else "adapter")),
        "param_count": start["param_count"],
        "precision": "bf16" if autocast_dtype_for(torch.device("cpu"), cfg.precision) else "fp32",
    }
    if full:
        out |= _flop_counts(a.model_dir, lengths)
    return out


def _tunery_examples(model_dir: str, path: str) -> list[Any]:
    from tunery.datasets import DatasetFormat
    from tunery.training.data.render import Renderer
    from tunery.training.model import load_tokenizer

    renderer = Renderer(load_tokenizer(model_dir))
    lines = Path(path).read_text().splitlines()
    return [renderer.render(json.loads(line), DatasetFormat.CONVERSATION) for line in lines]


def _flop_counts(model_dir: str, lengths: list[int]) -> dict[str, float]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = sum(6 * config.hidden_size * t * t / 2 * config.num_hidden_layers for t in lengths)
    return {"matmul_params": n, "model_flops": 6 * n * sum(lengths), "attention_flops": attention}


def child_trl(a: argparse.Namespace, tuned: bool, born: float) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(a.train).read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    engine: dict[str, Any] = {}
    if tuned:  # the knobs a careful CPU user turns
        engine = {"bf16": a.child == "trl-tuned-bf16", "gradient_checkpointing": False, "packing": True}
    args = SFTConfig(
        output_dir=str(Path(a.out) / "run"), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        max_length=MAX_LEN, per_device_train_batch_size=BATCH, num_train_epochs=1,
        learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, seed=SEED, max_steps=a.max_steps or -1, **engine)
    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32 if tuned else "auto")
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    epoch_steps = math.ceil(len(cast(Sized, trainer.train_dataset)) / BATCH)
    seen = {"real": 0, "slots": 0, "trained": 0}
    collate = trainer.data_collator

    def counting_collator(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(examples)
        seen["slots"] += batch["input_ids"].numel()
        seen["real"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        seen["trained"] += int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels by one
        return batch

    trainer.data_collator = counting_collator
    stamps: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            stamps["begin"] = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            stamps["end"] = time.perf_counter()

    trainer.add_callback(Clock())
    trainer.train()
    trainer.save_model(str(Path(a.out) / "adapter"))
    saved, rss = time.perf_counter(), peak_rss_mb()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    steps, loop = trainer.state.global_step, stamps["end"] - stamps["begin"]
    # A run cut short at max_steps: the wall-clock of the whole epoch is extrapolated from its steps.
    wall = (saved - stamps["end"]) + loop * epoch_steps / steps + (stamps["begin"] - born)
    return {
        "trained_tokens": seen["trained"],
        "real_fraction": seen["real"] / max(seen["slots"], 1),
        "loop_s": loop,
        "wall_s": wall,
        "partial": steps < epoch_steps,
        "peak_rss_mb": rss,
        "steps": f"{steps}/{epoch_steps}" if steps < epoch_steps else steps,
        "train_loss": losses[-1] if losses else float("nan"),
        "adapter": str(Path(a.out) / "adapter"),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def heldout_loss(model_dir: str, weights: str, heldout: str, full: bool) -> float:
    """Token-weighted reply loss of ``weights`` (an adapter, or a full model dir) on ``heldout``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.training.data.collate import collate
    from tunery.training.logprobs import logits_target_logps

    model: Any = AutoModelForCausalLM.from_pretrained(weights if full else model_dir, dtype=torch.float32)
    if not full:
        model = PeftModel.from_pretrained(model, weights)
    model.eval()
    loss, count = 0.0, 0
    with torch.no_grad():
        for example in _tunery_examples(model_dir, heldout):
            batch = collate([[example]], pad_id=0)
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
            loss += -float(logits_target_logps(logits, batch.targets).sum())
            count += batch.num_targets
    return loss / count


def child_peak(seconds: float) -> dict[str, Any]:
    """GFLOP/s of a 4096² ``torch.mm`` loop in fp32 and in bf16, at every thread count up to the default;
    ``gflops`` and ``gflops_bf16`` are the best of each."""
    import torch

    best: dict[str, Any] = {"threads_default": torch.get_num_threads()}
    for dtype, suffix in ((torch.float32, ""), (torch.bfloat16, "_bf16")):
        a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
        for threads in range(1, best["threads_default"] + 1):
            torch.set_num_threads(threads)
            torch.mm(a, b)
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                torch.mm(a, b)
                calls += 1
            best[f"gflops{suffix}_{threads}"] = 2 * 4096**3 * calls / (time.perf_counter() - start) / 1e9
        best[f"gflops{suffix}"] = max(best[f"gflops{suffix}_{t}"] for t in range(1, best["threads_default"] + 1))
    return best


def child_main(a: argparse.Namespace) -> None:
    import psutil

    born = time.perf_counter() - (time.time() - psutil.Process().create_time())  # process start, on perf_counter
    if a.child == "peak":
        print(json.dumps(child_peak(a.peak_seconds)))
        return
    if a.child.startswith("tunery"):
        import tunery.training  # noqa: F401 - before torch, as `python -m tunery.training.recipes.sft` does
    import torch

    full = a.child == "tunery-full"
    if a.child.startswith("tunery"):
        result = child_tunery(a, full, born)
    else:
        result = child_trl(a, a.child.startswith("trl-tuned"), born)
    result["threads"] = torch.get_num_threads()
    adapter = result.pop("adapter")
    result["heldout_loss"] = float("nan") if result["partial"] else heldout_loss(a.model_dir, adapter, a.heldout, full)
    result["tokens_per_s"] = result["trained_tokens"] / result["loop_s"]
    print(json.dumps(result))


# --- parent: plan the runs, collect, print ---------------------------------------------------------


def run_child(args: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    with log.open("a") as f:
        f.write(f"$ {' '.join(args)}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed (exit {proc.returncode}); see {log}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def med(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


HEADER = ["side", "trained tok/s", "tunery speed-up", "wall s", "wall vs tunery", "held-out loss", "last train loss",
          "peak RSS MB", "real tokens", "steps", "trained tokens", "tok/s per repeat"]


def side_rows(results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    ours = results["tunery"]
    rows = []
    for side, runs in results.items():
        tps, wall, partial = med(runs, "tokens_per_s"), med(runs, "wall_s"), runs[0]["partial"]
        rows.append([
            side, f"{tps:,.0f}", f"{med(ours, 'tokens_per_s') / tps:.2f}x" if side != "tunery" else "1",
            f"{'~' if partial else ''}{wall:.1f}", f"{'~' if partial else ''}{wall / med(ours, 'wall_s'):.2f}x",
            "n/a" if partial else f"{med(runs, 'heldout_loss'):.4f}", f"{med(runs, 'train_loss'):.4f}",
            f"{med(runs, 'peak_rss_mb'):,.0f}", f"{100 * med(runs, 'real_fraction'):.1f}%", str(runs[0]["steps"]),
            f"{runs[0]['trained_tokens']:,}", " ".join(f"{r['tokens_per_s']:,.0f}" for r in runs),
        ])
    return rows


def verdict(results: dict[str, list[dict[str, Any]]]) -> str:
    ours = results["tunery"]
    lines = [f"tunery real tokens: {100 * med(ours, 'real_fraction'):.1f}% (target >= 95%)"]
    tuned_sides = [s for s in ("trl-tuned", "trl-tuned-bf16") if s in results]
    if tuned_sides:  # tuned TRL: whichever of its tunings was faster
        best = max(tuned_sides, key=lambda s: med(results[s], "tokens_per_s"))
        tuned = results[best]
        gap = 100 * (med(ours, "heldout_loss") / med(tuned, "heldout_loss") - 1)
        lines.append(f"vs tuned TRL ({best}, the faster tuning): "
                     f"{med(ours, 'tokens_per_s') / med(tuned, 'tokens_per_s'):.2f}x tokens/s (target >= 2.5x); "
                     f"held-out loss {gap:+.2f}% (target within 2%); tunery trained in {ours[0]['precision']}")
    if "trl-default" in results:
        lines.append(f"vs trl-default: {med(ours, 'tokens_per_s') / med(results['trl-default'], 'tokens_per_s'):.2f}x "
                     "tokens/s (target >= 10x)")
    return "\n".join(f"- {line}" for line in lines)


def parent_main(a: argparse.Namespace) -> None:
    from tunery.models.builtin import ensure_builtin

    root = Path(a.workdir or tempfile.mkdtemp(prefix="tunery-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    log = root / "children.log"
    train = write_jsonl(root / "train.jsonl", conversations(a.samples, seed=0))
    heldout = write_jsonl(root / "heldout.jsonl", conversations(64, seed=1))
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def peak() -> dict[str, float]:
        p = run_child(["--child", "peak", "--peak-seconds", str(a.peak_seconds)], log, PASSIVE)
        peaks["fp32"].append(p["gflops"])
        peaks["bf16"].append(p["gflops_bf16"])
        print(f"  matmul peak: fp32 {p['gflops']:.1f}, bf16 {p['gflops_bf16']:.1f} GFLOP/s ({p})", file=sys.stderr)
        return {"fp32": p["gflops"], "bf16": p["gflops_bf16"]}

    def side_run(side: str, model_dir: Path, out: Path) -> dict[str, Any]:
        args = ["--child", side, "--model-dir", str(model_dir), "--train", str(train), "--heldout", str(heldout),
                "--out", str(out)]
        if side == "trl-default" and a.default_steps:
            args += ["--max-steps", str(a.default_steps)]
        if side == "tunery-base":  # another tunery source tree, e.g. a worktree of an older commit
            return run_child(args, log, {"PYTHONPATH": a.base_src})
        return run_child(args, log, PASSIVE if side.endswith("passive") else None)

    tables: list[str] = []
    sides = [s for s in SIDES if s in a.sides.split(",")]
    if a.base_src and "tunery-base" not in sides:
        sides.append("tunery-base")
    for name in [m for m in a.models.split(",") if m]:
        model_dir = ensure_builtin(f"tunery/{name}", root / "models")
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        for rep in range(a.repeats):
            peak()
            for side in sides[rep % len(sides):] + sides[: rep % len(sides)]:  # rotate who goes first
                r = side_run(side, model_dir, root / f"{name}-{side}-{rep}")
                results[side].append(r)
                print(f"  {name} {side} #{rep}: {r['tokens_per_s']:,.0f} tok/s, wall {r['wall_s']:.1f}s, "
                      f"held-out {r['heldout_loss']:.4f}", file=sys.stderr)
        title = f"### {name}, LoRA r=8 ({a.repeats} repeats, medians)"
        tables.append(title + "\n\n" + fmt_table(HEADER, side_rows(results)) + "\n\n" + verdict(results))
    if a.full_repeats:
        model_dir = ensure_builtin("tunery/small-llama", root / "models")
        variants = {"tunery": None, **({"tunery-base": {"PYTHONPATH": a.base_src}} if a.base_src else {})}
        full: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for rep in range(a.full_repeats):
            for variant, env in variants.items():
                before = peak()
                r = run_child(["--child", "tunery-full", "--model-dir", str(model_dir), "--train", str(train),
                               "--heldout", str(heldout), "--out", str(root / f"full-{variant}-{rep}")], log, env)
                r["model_gflops"] = r["model_flops"] / r["loop_s"] / 1e9
                after = peak()
                # against the peak of the precision it trained in: the better of those measured around it
                r["peak_gflops"] = max(before[r["precision"]], after[r["precision"]])
                r["fraction"] = r["model_gflops"] / r["peak_gflops"]
                full[variant].append(r)
                print(f"  small full {variant} #{rep}: {r['model_gflops']:.1f} model GFLOP/s = "
                      f"{100 * r['fraction']:.1f}% of peak", file=sys.stderr)
        tables += [full_table(variant, runs) for variant, runs in full.items()]
    else:
        peak()
    spread = " · ".join(
        f"{dtype} matmul peak (4096² mm, best thread count) median {statistics.median(v):.1f} GFLOP/s over "
        f"{len(v)} measurements (range {min(v):.1f}–{max(v):.1f})" for dtype, v in peaks.items())
    header = (f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} CPUs · load average at the end "
              f"{os.getloadavg()[0]:.1f} · {spread} · {a.samples} training samples\n\n`{' '.join(sys.argv)}`")
    print(header + "\n\n" + "\n\n".join(tables))


def full_table(variant: str, runs: list[dict[str, Any]]) -> str:
    r = runs[0]
    each = ", ".join(f"{100 * x['fraction']:.1f}%" for x in runs)
    return (f"### small-llama, full fine-tune, {variant} ({len(runs)} repeats, medians)\n\n"
            f"- {r['matmul_params']:,} matmul weights; {r['real_tokens']:,} real tokens per epoch; 6·N·T = "
            f"{r['model_flops'] / 1e12:.2f} TFLOP (causal attention would add "
            f"{100 * r['attention_flops'] / r['model_flops']:.1f}%, not counted)\n"
            f"- loop {med(runs, 'loop_s'):.1f} s, {med(runs, 'tokens_per_s'):,.0f} trained tok/s, "
            f"{med(runs, 'model_gflops'):.1f} model GFLOP/s = **{100 * med(runs, 'fraction'):.1f}% of the "
            f"{r['precision']} matmul peak** measured around it (target >= 65%); per repeat "
            f"{each}; held-out loss {med(runs, 'heldout_loss'):.4f}; "
            f"peak RSS {med(runs, 'peak_rss_mb'):,.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-llama,small-llama", help="comma-separated; empty skips the LoRA runs")
    ap.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"some of {','.join(SIDES)}")
    ap.add_argument("--samples", type=int, default=400, help="training samples (the held-out set is 64 more)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--default-steps", type=int, default=16,
                    help="stop trl-default after this many steps (0: the whole epoch); its wall-clock is extrapolated")
    ap.add_argument("--full-repeats", type=int, default=3, help="full fine-tunes of small-llama (0 skips them)")
    ap.add_argument("--peak-seconds", type=float, default=3.0)
    ap.add_argument("--base-src", help="also run side tunery-base: tunery imported from this src/ directory")
    ap.add_argument("--workdir", help="keep models, data and outputs here (default: a new temp dir)")
    ap.add_argument("--child", choices=[*SIDES, "tunery-full", "peak"], help=argparse.SUPPRESS)
    ap.add_argument("--max-steps", type=int, default=0, help=argparse.SUPPRESS)
    for name in ("--model-dir", "--train", "--heldout", "--out"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    a = ap.parse_args()
    child_main(a) if a.child else parent_main(a)


if __name__ == "__main__":
    main()
