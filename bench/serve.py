"""Serving throughput and time to first token: tunery's inference engine, through the real API, against
sequential ``transformers`` ``generate`` on the same model and prompts, in one run.

Run:  .venv/bin/python bench/serve.py                                 # tiny-llama, 1/4/16 streams
      .venv/bin/python bench/serve.py --models tunery/tiny-llama tunery/small-llama --out bench/results/serve.md

Sides:

    baseline   ``model.generate`` (greedy, ``min_new_tokens = max_new_tokens``), one prompt after the other,
               in this process with the engine's thread count (``--threads``)
    tunery     a live ``tunery serve`` (no worker; its engine process with ``TUNERY_INFERENCE_THREADS``) and
               C concurrent streaming clients (C = 1, 4, 16), each sending its share of the prompts one
               after the other through ``POST /v1/chat/completions`` with ``stream: true``,
               ``temperature: 0`` and ``ignore_eos`` (so every answer is exactly ``--max-tokens`` long)

Both generate the same number of tokens for the same chat prompts (the model's own template). Reported:
aggregate generated tokens per second (all tokens over the wall time from the first request to the
last answer), the ratio to the baseline, and time to first token (request sent → first streamed chunk,
which carries the first generated token) p50/p90 over all requests, measured after one warm-up request.
The clients run on the same machine as the server: their CPU is part of the cost.

Targets for the embedded CPU engine with tunery/tiny-llama: at 16 streams >= 5x the baseline's tokens/s;
warm time to first token p50 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

QUESTIONS = ["What is the capital of France?", "How many days are in a week?", "Tell me a joke.",
             "Which animal is the largest?", "Why is the water cold?", "When does the train leave?",
             "What color is the sky?", "Who wrote the play?"]


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}] for i in range(n)]


def baseline(model_name: str, conversations: list[list[dict[str, str]]], max_tokens: int, threads: int,
             cache: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunery.models.registry import resolve

    torch.set_num_threads(threads)
    path = resolve(model_name, cache_dir=cache).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    inputs = [tokenizer.apply_chat_template(c, add_generation_prompt=True, return_tensors="pt", return_dict=True)
              for c in conversations]
    with torch.no_grad():
        model.generate(**inputs[0], max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        firsts, tokens = [], 0
        for x in inputs:  # its time to first token: a one-token generate
            t0 = time.perf_counter()
            model.generate(**x, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            firsts.append(time.perf_counter() - t0)
        start = time.perf_counter()
        for x in inputs:
            out = model.generate(**x, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
            tokens += out.shape[1] - x["input_ids"].shape[1]
        wall = time.perf_counter() - start
    return {"tokens": tokens, "wall": wall, "tok_s": tokens / wall, "ttft": firsts}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, threads: int) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}, "TUNERY_WORKERS": "0",
           "TUNERY_INFERENCE_THREADS": str(threads), "TUNERY_INFERENCE_START": "eager", "HF_HUB_OFFLINE": "1",
           # One user drives every stream here; the per-user cap is for sharing a server, not for this.
           "TUNERY_INFERENCE_MAX_CONCURRENT_PER_USER": "64"}
    tunery = str(Path(sys.executable).parent / "tunery")
    log = open(data_dir.parent / "server.log", "wb")  # noqa: SIM115 - the server writes to it while it runs
    proc = subprocess.Popen([tunery, "serve", "--port", str(port), "--data-dir", str(data_dir), "--no-worker"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, (data_dir / "api_key").read_text().strip()
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("tunery serve did not start")


async def one(client: httpx.AsyncClient, model: str, conversation: list[dict[str, str]],
              max_tokens: int) -> tuple[float, int]:
    body = {"model": model, "messages": conversation, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices"):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    assert first is not None
    return first, tokens


async def served(url: str, key: str, model: str, conversations: list[list[dict[str, str]]], streams: int,
                 max_tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=streams + 2)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600,
                                 limits=limits) as client:
        await one(client, model, conversations[0], 4)  # warm: the model is loaded and compiled paths ran
        queue = list(conversations)
        results: list[tuple[float, int]] = []

        async def worker() -> None:
            while queue:
                results.append(await one(client, model, queue.pop(0), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        wall = time.perf_counter() - start
    tokens = sum(t for _, t in results)
    return {"tokens": tokens, "wall": wall, "tok_s": tokens / wall, "ttft": [f for f, _ in results]}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tunery/tiny-llama"])
    ap.add_argument("--streams", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=32, help="prompts per measurement")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, for the engine and the baseline alike")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    args = ap.parse_args()

    lines = [f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} CPUs · torch threads {args.threads} "
             f"· {args.requests} requests of {args.max_tokens} tokens per measurement",
             f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = start_server(Path(tmp) / "data", args.threads)
        try:
            for model in args.models:
                conversations = prompts(args.requests)
                base = baseline(model, conversations, args.max_tokens, args.threads, Path(tmp) / "data" / "models")
                lines += [f"### {model}", "",
                          "| side | streams | tokens | wall s | tokens/s | vs baseline | TTFT p50 ms | TTFT p90 ms |",
                          "|---|---|---|---|---|---|---|---|",
                          _row("transformers generate (sequential)", "1", base, base)]
                for streams in args.streams:
                    result = asyncio.run(served(url, key, model, conversations, streams, args.max_tokens))
                    lines.append(_row("tunery engine via the API", str(streams), result, base))
                    print(lines[-1], flush=True)  # noqa: T201
                lines.append("")
        finally:
            proc.terminate()
            proc.wait(30)
    lines.append(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = "\n".join(lines) + "\n"
    print(text)  # noqa: T201
    if args.out:
        args.out.write_text(text)


def _row(side: str, streams: str, r: dict[str, Any], base: dict[str, Any]) -> str:
    return (f"| {side} | {streams} | {r['tokens']} | {r['wall']:.2f} | {r['tok_s']:,.0f} | "
            f"{r['tok_s'] / base['tok_s']:.2f}x | {statistics.median(r['ttft']) * 1000:.0f} | "
            f"{pct(r['ttft'], 0.9) * 1000:.0f} |")


if __name__ == "__main__":
    main()
