"""Prompts for reinforcement fine-tuning: each dataset row becomes prompt tokens plus the row itself,
which graders read as ``item`` (``{{ item.answer }}``).

A row is OpenAI's reinforcement format, ``{"messages": [...], ...any other fields}``, whose last message
is the user's (or system's) turn to answer; it is rendered with the chat template and its generation
prompt. A ``{"prompt": "..."}`` row is plain text that the model continues. Rows are checked as they
are read; an error names the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.errors import DatasetInvalid


@dataclass(frozen=True)
class PromptItem:
    ids: list[int]
    item: dict[str, Any]


@dataclass
class PromptSet:
    prompts: list[PromptItem]
    rows: int  # rows read
    dropped: int  # rows whose prompt leaves no room to answer within max_seq_length


def load_prompts(path: str, file_type: str, tokenizer: Any, max_prompt_tokens: int,
                 what: str = "training file", template_vars: Mapping[str, str] | None = None) -> PromptSet:
    """``template_vars``: more variables for the chat template (``reasoning_effort``)."""
    prompts, rows, dropped = [], 0, 0
    for line, row in _rows(Path(path), file_type, what):
        rows += 1
        ids = _prompt_ids(row, tokenizer, line, what, template_vars or {})
        if len(ids) > max_prompt_tokens:
            dropped += 1
            continue
        prompts.append(PromptItem(ids, row))
    if not prompts:
        raise DatasetInvalid(f"the {what} has no prompt that fits: {rows} rows, each longer than "
                             f"{max_prompt_tokens} tokens (max_seq_length less the tokens to generate)")
    return PromptSet(prompts, rows, dropped)


def _rows(path: Path, file_type: str, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if file_type == "parquet":
        import pyarrow.parquet as pq

        for line, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield line, row
        return
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                raise DatasetInvalid(f"{what} line {line}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise DatasetInvalid(f"{what} line {line}: each line must be a JSON object")
            yield line, row


def _prompt_ids(row: dict[str, Any], tokenizer: Any, line: int, what: str, template_vars: Mapping[str, str]
                ) -> list[int]:
    messages = row.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise DatasetInvalid(f"{what} line {line}: messages must be a non-empty list of "
                                 '{"role": ..., "content": ...} objects')
        if messages[-1]["role"] not in ("user", "system", "developer", "tool"):
            raise DatasetInvalid(f"{what} line {line}: the last message is the {messages[-1]['role']}'s; a "
                                 "reinforcement prompt ends with the turn the model answers (user)")
        try:
            text = tokenizer.apply_chat_template(messages, tools=row.get("tools") or None, tokenize=False,
                                                 add_generation_prompt=True, **template_vars)
        except Exception as exc:  # noqa: BLE001 - a template's own refusal (jinja raise_exception, …)
            raise DatasetInvalid(f"{what} line {line}: the model's chat template cannot render these "
                                 f"messages: {exc}") from None
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template writes BOS
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return bos + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    raise DatasetInvalid(f"{what} line {line}: a reinforcement row needs messages (a conversation ending "
                         f"with the user's turn) or a prompt string; it has {', '.join(sorted(row)) or 'no keys'}")
