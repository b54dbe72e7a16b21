"""Fixtures for the inference tests: the built-in tiny model, its tokenizer, and LoRA adapters with
random (non-zero) weights saved the way training saves them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

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


def load_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def make_adapter(base: Path, out: Path, seed: int, r: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A LoRA adapter over ``base`` with random A and B (B is zero at init, which would change nothing)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(base), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    return out


def merged(base: Path, adapter: Path) -> Any:
    """``base + adapter`` merged into plain weights: what a LoRA job's download holds."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(base), str(adapter)).merge_and_unload().eval()


@pytest.fixture(scope="session")
def adapters(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return (make_adapter(tiny_llama, root / "a", seed=1),
            make_adapter(tiny_llama, root / "b", seed=2, r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj")))
