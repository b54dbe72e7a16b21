"""Small datasets the tests write on the fly (never committed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

COLORS = ["red", "blue", "green", "black", "white", "pink", "gold", "grey"]
THINGS = ["sky", "sea", "leaf", "coal", "snow", "rose", "sun", "ash"]


def qa_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"What color is the {t}{i}?", f"The {t}{i} is {rng.choice(COLORS)}.") for i, t in
            ((i, THINGS[i % len(THINGS)]) for i in range(n))]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conversation_file(path: Path, n: int = 32, seed: int = 0) -> Path:
    return write_jsonl(path, [
        {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q},
                      {"role": "assistant", "content": a}]}
        for q, a in qa_pairs(n, seed)
    ])


def instruction_file(path: Path, n: int = 32, seed: int = 0) -> Path:
    return write_jsonl(path, [{"prompt": q, "completion": a} for q, a in qa_pairs(n, seed)])


def text_file(path: Path, n: int = 32, seed: int = 0) -> Path:
    return write_jsonl(path, [{"text": f"{q} {a}"} for q, a in qa_pairs(n, seed)])


def preference_file(path: Path, n: int = 32, seed: int = 0) -> Path:
    return write_jsonl(path, [
        {"input": {"messages": [{"role": "user", "content": q}]},
         "preferred_output": [{"role": "assistant", "content": a}],
         "non_preferred_output": [{"role": "assistant", "content": "I do not know."}]}
        for q, a in qa_pairs(n, seed)
    ])
