"""Fixtures for the training tests: the built-in tiny model (built once per session in a temp dir),
its tokenizer, and small conversation datasets written on the fly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.samples import qa_conversations, write_jsonl
from tunery.models.builtin import ensure_builtin


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core box: intra-op threads cost more in contention than they give.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_builtin("tunery/tiny-llama", tmp_path_factory.getbasetemp() / "builtin-models")


@pytest.fixture(scope="session")
def tokenizer(tiny_llama: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="session")
def qa_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, validation) conversation JSONL files."""
    root = tmp_path_factory.mktemp("qa")
    return (write_jsonl(root / "train.jsonl", qa_conversations(48, seed=0)),
            write_jsonl(root / "val.jsonl", qa_conversations(12, seed=1)))
