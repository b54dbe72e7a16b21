"""GPU training throughput on Llama-3 shapes, random weights: tunery against TRL's SFTTrainer.

Run on a machine with a CUDA GPU (nothing is downloaded; models are built from the configs in
bench/configs/ with random weights and a stand-in tokenizer, data is random token ids):

    .venv/bin/python bench/gpu.py                                   # 1B LoRA, 1B full, 8B LoRA
    .venv/bin/python bench/gpu.py --runs llama-3.1-8b:lora --steps 30 --rows 2
    .venv/bin/python bench/gpu.py --smoke                            # CPU, shapes scaled down: what the tests run

Each run (model:method) trains both sides, each in its own subprocess, on the same pre-tokenized
documents (random lengths, all tokens trained) packed into rows of --seq tokens (4,096), --rows rows
per step, for --warmup + --steps optimizer steps; the figures are over the last --steps:

    tunery  ``recipes/sft.py`` as a job runs it: precision auto (bf16 base + fp32 LoRA adapters, or
            fp32 weights under bf16 autocast for full), chunked loss, fused LoRA, packed attention
    trl     ``SFTTrainer``: packing (padding-free), bf16, Liger kernels when installed, otherwise its
            defaults (gradient checkpointing on), the same LoRA (r=16, alpha 32, all linear layers)

Printed per side: trained tokens/s per GPU (median over steps), MFU against the GPU's dense bf16 peak
from its datasheet (and against a bf16 matmul measured in the same run), and peak GPU memory. Model
FLOPs per token: 6·N for full fine-tuning, 4·N for LoRA (the frozen base takes no weight gradients;
the adapters' FLOPs are under 1 %), N the weights of every matmul including the LM head, plus
3x the forward attention FLOPs of each token's causal context in its own document.

Targets on an H100/H200-class GPU: 8B LoRA >= 40 % MFU (about 12.5k tok/s) and >= 1.5x TRL; 1B full
>= 40 % MFU. Without a GPU, --smoke runs everything on the CPU on scaled-down shapes (MFU then against
the CPU's measured fp32 matmul peak); its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).parent / "configs"
DEFAULT_RUNS = "llama-3.2-1b:lora,llama-3.2-1b:full,llama-3.1-8b:lora"
LORA = {"r": 16, "alpha": 32}
# Dense bf16 tensor-core peaks from NVIDIA's datasheets, FLOP/s, by a substring of the device name.
BF16_PEAKS = {"H200": 989.4e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989.4e12, "GH200": 989.4e12,
              "B200": 2250e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165.2e12}
SMOKE_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 2048}


def model_config(name: str, smoke: bool) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return config | SMOKE_SHAPE if smoke else config


def flops_per_token(config: dict[str, Any], method: str, doc_lengths: list[int]) -> float:
    """Model FLOPs per trained token (see the module docstring)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    n = layers * (2 * h * q + 2 * h * kv + 3 * h * config["intermediate_size"]) + h * vocab
    # causal attention, forward: QK^T and AV, 2 FLOPs per multiply-add, over each token's own context
    attention_fwd = sum(4 * q * t * (t + 1) / 2 for t in doc_lengths) * layers / sum(doc_lengths)
    return (6 if method == "full" else 4) * n + 3 * attention_fwd


# --- children ----------------------------------------------------------------------------------


def child_build(a: argparse.Namespace) -> dict[str, Any]:
    """A model directory: the config with random weights (built on the GPU in bf16, where there is
    one) and the built-in models' tokenizer as a stand-in (the data is token ids already)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunery.models.builtin import build_tokenizer

    config = LlamaConfig(**model_config(a.model, a.smoke))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(a.out)
    build_tokenizer(config.max_position_embeddings).save_pretrained(a.out)
    return {"params": sum(p.numel() for p in model.parameters())}


def child_peak(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    size, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    x = torch.randn(size, size, dtype=dtype, device="cuda" if cuda else "cpu")
    for _ in range(3):
        x @ x
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < a.peak_seconds:
        x @ x
        calls += 1
    sync()
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    return {"measured_peak": 2 * size**3 * calls / (time.perf_counter() - start), "device": name,
            "datasheet_peak": next((v for k, v in BF16_PEAKS.items() if cuda and k in name), None)}


def child_tunery(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tunery.training.config import TrainConfig
    from tunery.training.recipes import sft
    from tunery.training.reporter import ListReporter

    cfg = TrainConfig(job_id="bench-gpu", base_model_dir=a.model_dir, train_file=a.data, file_type="parquet",
                      output_dir=a.out, lora=LORA if a.method == "lora" else None, batch_size=a.rows,
                      max_seq_length=a.seq, packing=True, n_epochs=1, learning_rate=1e-4, lr_scheduler_type="linear",
                      max_grad_norm=1.0)
    reporter = ListReporter()
    sft.run(cfg, reporter)
    rates = [m["values"]["train/tokens_per_second"] for m in reporter.of_kind("metrics")]
    return {"tokens_per_s": statistics.median(rates[a.warmup:] or rates), "steps": len(rates),
            "peak_memory": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}


def child_trl(a: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    docs = [{"input_ids": ids} for ids in json.loads(Path(a.data).with_suffix(".json").read_text())]
    args = SFTConfig(output_dir=a.out, report_to="none", save_strategy="no", logging_steps=1, use_cpu=not cuda,
                     bf16=cuda, packing=True, max_length=a.seq, per_device_train_batch_size=a.rows,
                     max_steps=a.warmup + a.steps, learning_rate=1e-4, lr_scheduler_type="linear",
                     use_liger_kernel=importlib.util.find_spec("liger_kernel") is not None,
                     dataloader_num_workers=0)
    weights = torch.bfloat16 if a.method == "lora" and cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=weights)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(docs),
                         processing_class=AutoTokenizer.from_pretrained(a.model_dir),
                         peft_config=lora if a.method == "lora" else None)
    counts: list[int] = []
    collate = trainer.data_collator

    def counting(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(examples)
        counts.append(int((batch["labels"] != -100).sum()))
        return batch

    trainer.data_collator = counting
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    rates = [n / (end - start) for n, start, end in zip(counts, stamps[0::2], stamps[1::2], strict=False)]
    return {"tokens_per_s": statistics.median(rates[a.warmup:] or rates), "steps": len(rates),
            "peak_memory": torch.cuda.max_memory_allocated() if cuda else None,
            "liger": args.use_liger_kernel, "gradient_checkpointing": args.gradient_checkpointing}


# --- parent ------------------------------------------------------------------------------------


def run_child(args: list[str], log: Path) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    with log.open("a") as f:
        f.write(f"$ {' '.join(args)}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed (exit {proc.returncode}); see {log}:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def write_documents(root: Path, a: argparse.Namespace, vocab: int) -> tuple[Path, list[int]]:
    """Random documents enough for the steps (in parquet for tunery, JSON for TRL), and their lengths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    low, high = (a.seq // 32, a.seq // 2)
    docs: list[list[int]] = []
    while sum(len(d) for d in docs) < (a.warmup + a.steps) * a.rows * a.seq * 0.97:
        docs.append([rng.randrange(vocab) for _ in range(rng.randint(low, high))])
    path = root / f"docs-{vocab}.parquet"
    pq.write_table(pa.table({"input_ids": docs}), path)
    path.with_suffix(".json").write_text(json.dumps(docs))
    return path, [len(d) for d in docs]


def parent_main(a: argparse.Namespace) -> None:
    root = Path(a.workdir or tempfile.mkdtemp(prefix="tunery-bench-gpu-"))
    root.mkdir(parents=True, exist_ok=True)
    log = root / "children.log"
    peak = run_child(["--child", "peak", "--peak-seconds", str(a.peak_seconds)], log)
    common = ["--seq", str(a.seq), "--rows", str(a.rows), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    results = []
    for run in a.runs.split(","):
        name, method = run.split(":")
        config = model_config(name, a.smoke)
        model_dir = root / f"{name}{'-smoke' if a.smoke else ''}"
        if not (model_dir / "config.json").exists():
            run_child(["--child", "build", "--model", name, "--out", str(model_dir), *(["--smoke"] if a.smoke else [])],
                      log)
        data, lengths = write_documents(root, a, config["vocab_size"])
        per_token = flops_per_token(config, method, lengths)
        row: dict[str, Any] = {"model": name, "method": method, "flops_per_token": per_token}
        for side in ("tunery", "trl"):
            r = run_child(["--child", side, "--model-dir", str(model_dir), "--data", str(data), "--method", method,
                           "--out", str(root / f"{name}-{method}-{side}"), *common], log)
            r["mfu_datasheet"] = peak["datasheet_peak"] and r["tokens_per_s"] * per_token / peak["datasheet_peak"]
            r["mfu_measured"] = r["tokens_per_s"] * per_token / peak["measured_peak"]
            row[side] = r
            print(f"  {name} {method} {side}: {r['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
        row["speedup_vs_trl"] = row["tunery"]["tokens_per_s"] / row["trl"]["tokens_per_s"]
        results.append(row)
    out = {"date": str(datetime.date.today()), "command": " ".join(sys.argv), "smoke": a.smoke, **peak,
           "seq": a.seq, "rows": a.rows, "steps": a.steps, "warmup": a.warmup, "runs": results}
    print(json.dumps(out) if a.json else report(out))


def report(out: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    def gb(x: float | None) -> str:
        return "n/a" if x is None else f"{x / 2**30:.1f} GiB"

    peak = out["datasheet_peak"]
    lines = [f"{out['date']} · {out['device']} · datasheet bf16 peak "
             f"{'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'} · measured matmul peak "
             f"{out['measured_peak'] / 1e9:,.0f} GFLOP/s · rows of {out['seq']} tokens, {out['rows']} per step, "
             f"median over {out['steps']} steps after {out['warmup']}"
             + (" · SMOKE (CPU, scaled-down shapes)" if out["smoke"] else ""), "", f"`{out['command']}`", "",
             "| model | method | side | tok/s per GPU | MFU (datasheet) | MFU (measured peak) | peak memory | vs TRL |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["runs"]:
        for side in ("tunery", "trl"):
            s = r[side]
            ratio = f"{r['speedup_vs_trl']:.2f}x" if side == "tunery" else "1"
            lines.append(f"| {r['model']} | {r['method']} | {side} | {s['tokens_per_s']:,.0f} | "
                         f"{pct(s['mfu_datasheet'])} | {pct(s['mfu_measured'])} | {gb(s['peak_memory'])} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated model:method (method lora or full)")
    ap.add_argument("--seq", type=int, default=4096, help="tokens per packed row")
    ap.add_argument("--rows", type=int, default=2, help="rows per optimizer step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-seconds", type=float, default=5.0)
    ap.add_argument("--smoke", action="store_true", help="CPU, scaled-down shapes, few short steps")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", help="keep models, data and outputs here (default: a new temp dir)")
    ap.add_argument("--child", choices=["build", "peak", "tunery", "trl"], help=argparse.SUPPRESS)
    for name in ("--model", "--model-dir", "--data", "--method", "--out"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.smoke and not a.child:
        a.runs = "llama-3.2-1b:lora,llama-3.2-1b:full" if a.runs == DEFAULT_RUNS else a.runs
        a.seq, a.rows, a.steps, a.warmup, a.peak_seconds = 128, 2, 3, 1, 1.0
    if a.child == "tunery":
        import tunery.training  # noqa: F401 - before torch, as `python -m tunery.training.recipes.sft` does
    if a.child:
        child = {"build": child_build, "peak": child_peak, "tunery": child_tunery, "trl": child_trl}[a.child]
        print(json.dumps(child(a)))
    else:
        parent_main(a)


if __name__ == "__main__":
    main()
