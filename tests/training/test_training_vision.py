"""Real SFT and DPO runs of the built-in tiny VLM on samples with images: what ``train_vision``
trains under LoRA and full fine-tuning, and exports that load with AutoModelForImageTextToText and
AutoProcessor (the adapter too) and answer from the image. A couple of steps each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.sample_images import QUESTION, colour_samples, solid_url
from tests.training.samples import write_jsonl
from tunery.training.config import TrainConfig
from tunery.training.recipes import dpo, sft
from tunery.training.reporter import ListReporter

pytestmark = pytest.mark.slow

VISION = ("vision_tower", "multi_modal_projector")


@pytest.fixture(scope="module")
def colour_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("colours") / "train.jsonl", colour_samples(8, seed=0))


def run(tiny_vlm: Path, train: Path, out: Path, **overrides: Any) -> Path:
    values: dict[str, Any] = {
        "job_id": "ft-vision", "base_model_dir": str(tiny_vlm), "base_model_name": "tunery/tiny-vlm",
        "train_file": str(train), "output_dir": str(out), "lora": {"r": 4}, "n_epochs": 1, "learning_rate": 1e-2,
        "batch_size": 2, "max_seq_length": 128, "seed": 0,
    }
    values.update(overrides)
    cfg = TrainConfig(**values)
    result = (dpo if cfg.method == "dpo" else sft).run(cfg, ListReporter())
    assert result.status == "completed" and result.path is not None
    return Path(result.path)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], part: str) -> bool:
    names = [n for n in before if part in n]
    assert names
    return any(not torch.equal(before[n], after[n]) for n in names)


@pytest.mark.parametrize("train_vision", [False, True])
def test_lora_adapts_the_vision_part_only_with_train_vision(tiny_vlm: Path, colour_file: Path, tmp_path: Path,
                                                          train_vision: bool) -> None:
    final = run(tiny_vlm, colour_file, tmp_path, train_vision=train_vision)
    adapted = load_file(final / "adapter" / "adapter_model.safetensors")
    assert any("language_model" in n for n in adapted)
    assert any(part in n for n in adapted for part in VISION) == train_vision
    assert not any("lm_head" in n for n in adapted)


@pytest.mark.parametrize("train_vision", [False, True])
def test_full_training_freezes_the_vision_part_unless_train_vision(tiny_vlm: Path, colour_file: Path,
                                                                   tmp_path: Path, train_vision: bool) -> None:
    final = run(tiny_vlm, colour_file, tmp_path, lora=None, learning_rate=1e-3, train_vision=train_vision)
    before, after = load_file(tiny_vlm / "model.safetensors"), load_file(final / "model" / "model.safetensors")
    assert changed(before, after, "language_model")
    for part in VISION:
        assert changed(before, after, part) == train_vision


def test_exports_load_as_image_text_to_text_and_answer_from_the_image(tiny_vlm: Path, colour_file: Path,
                                                                      tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    final = run(tiny_vlm, colour_file, tmp_path, train_vision=True)
    for part in ("model", "adapter"):  # the whole processor travels with each
        assert {"processor_config.json", "chat_template.jinja", "tokenizer.json"} <= {
            p.name for p in (final / part).iterdir()}
    processor = AutoProcessor.from_pretrained(final / "adapter")
    merged = AutoModelForImageTextToText.from_pretrained(final / "model").eval()
    adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_vlm),
                                        final / "adapter").eval()

    def ask(model: Any, colour: tuple[int, int, int]) -> torch.Tensor:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": solid_url(colour)}},
                                                 {"type": "text", "text": QUESTION}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        with torch.no_grad():
            return model(**inputs).logits[0, -1]

    red, blue = ask(merged, (220, 30, 30)), ask(merged, (40, 60, 220))
    assert not torch.allclose(red, blue)
    assert torch.allclose(red, ask(adapted, (220, 30, 30)), atol=1e-4)


def test_dpo_trains_on_pairs_with_images(tiny_vlm: Path, tmp_path: Path) -> None:
    rows = [{"input": {"messages": r["messages"][:1]},
             "preferred_output": [r["messages"][1]],
             "non_preferred_output": [{"role": "assistant", "content": "purple"}]}
            for r in colour_samples(8, seed=1)]
    final = run(tiny_vlm, write_jsonl(tmp_path / "pairs.jsonl", rows), tmp_path / "out", method="dpo")
    assert (final / "model" / "processor_config.json").is_file()
