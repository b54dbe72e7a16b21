"""Exact loss masking against plain ``apply_chat_template``: tokenizing a chat dataset, side by side.

Run:  .venv/bin/python bench/masking.py                                   # 100k rows, Qwen3 and Llama 3.1
      .venv/bin/python bench/masking.py --rows 5000 --templates qwen3-0.6b --check

The data: ``--rows`` conversations generated deterministically here, shaped like fine-tuning sets
(a system prompt on a third of them, one to four user/assistant exchanges of 5 to 120 words, a
tool call with its result on one in eight). Each official template from tests/fixtures/chat_templates
runs on the built-in tiny tokenizer, given the template's special tokens, in two ways over the same
rows:

    plain    ``tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)`` per row: the
             token ids alone, what a trainer without masking pays
    tunery   ``Renderer(tokenizer).conversation(messages, tools)`` per row: the same ids plus labels
             that train exactly the assistant turns (see tunery/training/data/chat.py)

The sides alternate row by row (which goes first alternates too), so a busy machine slows both
alike; the time of each side is the sum over its rows. Printed per template: seconds and rows/s for each side, and
tunery/plain (the target is at most 2x). ``--check`` also asserts on every row that tunery's ids
equal plain's (rows whose tool arguments are JSON strings are skipped: tunery hands templates objects,
as Hugging Face and vLLM do). Loads of the machine (``os.getloadavg``) are printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "tests" / "fixtures" / "chat_templates"
WORDS = ["the", "model", "reads", "every", "token", "of", "prompt", "but", "learns", "only", "from", "answer",
         "it", "writes", "so", "we", "mask", "what", "should", "not", "learn", "paris", "is", "capital", "france",
         "and", "rome", "italy", "tools", "return", "json", "results", "quickly", "while", "reasoning", "takes",
         "longer", "numbers", "like", "42", "7", "appear", "too"]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a fact up.",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


def sentence(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def conversations(rows: int, seed: int = 0) -> list[tuple[list[dict[str, Any]], list[Any] | None]]:
    rng = random.Random(seed)
    out: list[tuple[list[dict[str, Any]], list[Any] | None]] = []  # (messages, tools)
    for i in range(rows):
        messages: list[dict[str, Any]] = []
        if i % 3 == 0:
            messages.append({"role": "system", "content": sentence(rng, 5, 20)})
        tools = None
        for turn in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": sentence(rng, 5, 60)})
            if turn == 0 and i % 8 == 0:
                tools = TOOLS
                # Empty content rather than none: Qwen3's template fails on a missing one in plain HF.
                call = {"id": "call00001", "type": "function",
                        "function": {"name": "lookup", "arguments": {"q": sentence(rng, 2, 6)}}}
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
                messages.append({"role": "tool", "tool_call_id": "call00001", "content": sentence(rng, 5, 30)})
            messages.append({"role": "assistant", "content": sentence(rng, 5, 120)})
        out.append((messages, tools))
    return out


def tokenizer_with(name: str) -> Any:
    from transformers import AutoTokenizer

    from tunery.models.builtin import ensure_builtin

    entry = json.loads((TEMPLATES / "templates.json").read_text())[name]
    tokenizer = AutoTokenizer.from_pretrained(ensure_builtin("tunery/tiny-llama", ROOT / ".data" / "bench-models"))
    specials: dict[str, Any] = {"additional_special_tokens": list(entry["special_tokens"])}
    specials.update({k: entry[k] for k in ("bos_token", "eos_token") if entry[k] is not None})
    tokenizer.add_special_tokens(specials)
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    return tokenizer


Rows = list[tuple[list[dict[str, Any]], list[Any] | None]]


def run(name: str, rows: Rows, check: bool, progress: int = 10_000) -> dict[str, Any]:
    from tunery.training.data.render import Renderer

    tokenizer = tokenizer_with(name)
    renderer = Renderer(tokenizer)
    clock = time.perf_counter
    spent = {"plain": 0.0, "tunery": 0.0}
    trained = tokens = 0
    for i, (messages, tools) in enumerate(rows):
        for side in (("plain", "tunery") if i % 2 else ("tunery", "plain")):
            start = clock()
            if side == "plain":
                ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False)
            else:
                example = renderer.conversation(messages, tools)
            spent[side] += clock() - start
        tokens += len(example)
        trained += example.num_trained
        if check:
            assert example.input_ids == list(ids), "tunery's tokens differ from apply_chat_template's"
        if (i + 1) % progress == 0:
            print(f"  {name}: {i + 1:,} rows, plain {spent['plain']:.1f} s, tunery {spent['tunery']:.1f} s, "
                  f"tunery/plain {spent['tunery'] / spent['plain']:.2f}x, load {os.getloadavg()[0]:.1f}", flush=True)
    return {"template": name, "rows": len(rows), "tokens": tokens, "trained": trained,
            "plain_s": spent["plain"], "tunery_s": spent["tunery"], "ratio": spent["tunery"] / spent["plain"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--templates", nargs="+", default=["qwen3-0.6b", "llama-3.1-8b-instruct"])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    rows = conversations(args.rows)
    print(f"load before: {os.getloadavg()}  rows: {args.rows}", flush=True)
    print(f"{'template':<24} {'tokens':>11} {'trained':>11} {'plain s':>9} {'rows/s':>8} {'tunery s':>9} "
          f"{'rows/s':>8} {'tunery/plain':>12}")
    for name in args.templates:
        r = run(name, rows, args.check)
        print(f"{name:<24} {r['tokens']:>11,} {r['trained']:>11,} {r['plain_s']:>9.1f} "
              f"{r['rows'] / r['plain_s']:>8.0f} {r['tunery_s']:>9.1f} {r['rows'] / r['tunery_s']:>8.0f} "
              f"{r['ratio']:>11.2f}x", flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
