"""Small datasets the training tests write on the fly."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

ANSWERS = ["red", "blue", "green", "gold", "pink", "grey", "black", "white"]


def qa_conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Color of thing {i}?"},
                    {"role": "assistant", "content": rng.choice(ANSWERS)}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Answer in one word."})
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def preference_pairs(n: int) -> list[dict[str, Any]]:
    """Varied requests; a helpful reply is always preferred over a curt refusal."""
    rows = []
    for i in range(n):
        right, wrong = "Sure, gladly.", "No."
        rows.append({"input": {"messages": [{"role": "user", "content": f"Can you help with task {i}?"}]},
                     "preferred_output": [{"role": "assistant", "content": right}],
                     "non_preferred_output": [{"role": "assistant", "content": wrong}]})
    return rows
