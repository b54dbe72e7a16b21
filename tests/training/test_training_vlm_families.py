"""The vision-language families users fine-tune (tiny models with their real classes and chat templates,
``tests/vlm_families.py``): image tokens placed exactly and never trained, a packed row that is each example
exactly as the model's own forward pass sees it alone (Qwen's three-axis positions, Gemma 3's two-way
attention within an image), a short LoRA job and an export that loads as the base does."""

from __future__ import annotations

import filecmp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.sample_images import COLOURS, data_url, draw_shape, solid_url
from tests.training.samples import write_jsonl
from tests.vlm_families import FAMILIES
from tunery.datasets import DatasetFormat
from tunery.datasets.images import decode_image_url
from tunery.models.processor import content_as_parts, load_processor, processor_files, renders_string_content
from tunery.training import attention
from tunery.training.config import TrainConfig
from tunery.training.data.collate import Batch, collate
from tunery.training.data.images import VisionRenderer, split_images
from tunery.training.data.render import IGNORE, Example, Renderer
from tunery.training.model import LoadedModel, forward_logps, load_causal_lm
from tunery.training.recipes import sft
from tunery.training.reporter import ListReporter

Family = Callable[[str], Path]
RULED = {"qwen2-vl": "positions", "qwen2.5-vl": "positions", "gemma-3": "blocks"}  # the model's own image rules


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def conversation(*urls: str, answer: str = "red") -> dict[str, Any]:
    """A conversation as Together's datasets hold it: string contents, images as parts of the user turn."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Which colour"}]
    for url in urls:
        parts += [image(url), {"type": "text", "text": "and"}]
    return {"messages": [{"role": "system", "content": "Look closely."}, {"role": "user", "content": parts},
                         {"role": "assistant", "content": answer}]}


def shapes(*sizes: tuple[int, int], seed: int = 0) -> list[str]:
    """Drawn shapes of these sizes (different sizes give different numbers of image tokens where the
    processor keeps the aspect, as Qwen's and SmolVLM's do)."""
    import random

    rng = random.Random(seed)
    return [data_url(draw_shape(COLOURS[name], rng).resize(size)) for name, size in zip(COLOURS, sizes, strict=False)]


def prepared(processor: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the model's template needs them (text parts for SmolVLM's)."""
    return messages if renders_string_content(processor.tokenizer) else content_as_parts(messages)


class Silent:
    """The family's processor, keeping quiet about where it put image tokens (as InternVL's, Idefics2's and
    other processors with their own ``__call__`` do)."""

    def __init__(self, processor: Any):
        self.processor, self.image_token = processor, processor.image_token

    def __call__(self, **kwargs: Any) -> Any:
        out = self.processor(**kwargs)
        out.pop("text_replacement_offsets", None)
        return out


@pytest.fixture(scope="module")
def processors(vlm_family: Family) -> dict[str, Any]:
    return {name: load_processor(vlm_family(name)) for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_images_are_placed_exactly_and_never_trained(processors: dict[str, Any], name: str) -> None:
    processor = processors[name]
    record = conversation(*shapes((40, 30), (24, 48)))
    image_ids = set(processor.image_token_ids)
    placeholder = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    for train_on_inputs in ("auto", True):
        plain = Renderer(processor.tokenizer, train_on_inputs).marked(
            {"messages": split_images(prepared(processor, record["messages"]))[0]}, DatasetFormat.CONVERSATION).example
        marked = VisionRenderer(Renderer(processor.tokenizer, train_on_inputs), processor).marked(
            record, DatasetFormat.CONVERSATION)
        example = marked.example
        spans = {t for i in example.images for t in range(i.start, i.end)}
        assert len(example.images) == 2
        assert {t for t, token in enumerate(example.input_ids) if token in image_ids} <= spans
        assert all(example.labels[t] == IGNORE for t in spans)
        # Outside the images, exactly the text renderer's tokens and labels (its placeholders expanded).
        outside = [(token, label) for t, (token, label) in enumerate(zip(example.input_ids, example.labels,
                                                                         strict=True)) if t not in spans]
        assert outside == [(t, label) for t, label in zip(plain.input_ids, plain.labels, strict=True)
                           if t != placeholder]
        if train_on_inputs == "auto":
            trained = processor.tokenizer.decode([t for t, label in outside if label != IGNORE])
            assert trained.strip().startswith("red") and len(trained) < 30, trained
        # Where the processor does not say where it put them, the tokens themselves place them the same.
        silent = VisionRenderer(Renderer(processor.tokenizer, train_on_inputs), Silent(processor)).marked(
            record, DatasetFormat.CONVERSATION)
        assert (silent.example, silent.text, silent.offsets) == (example, marked.text, marked.offsets)


def test_qwen_processors_load_without_torchvision(vlm_family: Family) -> None:
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    for name in ("qwen2-vl", "qwen2.5-vl"):
        directory = vlm_family(name)
        if not is_torchvision_available():
            with pytest.raises((ImportError, ValueError), match="[Tt]orchvision"):
                AutoProcessor.from_pretrained(directory)
        processor = load_processor(directory)
        assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
        with pytest.raises(ValueError, match="takes images, not videos"):
            processor.video_processor([])


def token_logps(loaded: LoadedModel, batch: Batch, rules: bool = True) -> torch.Tensor:
    """The log-probability of every next token of the same example, through the training forward pass
    (``rules`` False: without the model's own image rules, plain positions and causal attention)."""
    same = batch.segment_ids[:, 1:] == batch.segment_ids[:, :-1]
    targets = torch.full_like(batch.input_ids, IGNORE)
    targets[:, :-1] = torch.where(same, batch.input_ids[:, 1:], IGNORE)
    positions = batch.position_ids if rules or batch.position_ids.dim() == 2 else batch.position_ids[0]
    plain = Batch(batch.input_ids, positions, batch.segment_ids, targets, batch.num_tokens, batch.num_targets,
                  batch.lengths, batch.vision, batch.blocks if rules else None)
    with torch.no_grad():
        return forward_logps(loaded, plain.input_ids, plain.position_ids, targets,
                             attention.attention_for(plain, torch.float32), **plain.vision)


def own_logps(model: Any, processor: Any, record: dict[str, Any], example: Example) -> torch.Tensor:
    """The same log-probabilities from the model's own forward pass on its processor's inputs, as a user
    of transformers runs it on one conversation."""
    messages, urls = split_images(prepared(processor, record["messages"]))
    text = Renderer(processor.tokenizer).marked({"messages": messages}, DatasetFormat.CONVERSATION).text
    inputs = processor(text=[text], images=[[decode_image_url(u) for u in urls]], add_special_tokens=False,
                       return_tensors="pt")
    ids = inputs["input_ids"]
    assert ids[0].tolist() == example.input_ids
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    return torch.log_softmax(logits, -1)[0, :-1].gather(1, ids[0, 1:, None])[:, 0]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_a_packed_row_is_each_example_as_the_model_sees_it_alone(vlm_family: Family, processors: dict[str, Any],
                                                                 name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    directory, processor = vlm_family(name), processors[name]
    records = [conversation(*shapes((40, 30))), conversation(*shapes((32, 32), (24, 48), seed=1), answer="blue")]
    renderer = VisionRenderer(Renderer(processor.tokenizer), processor)
    examples = [renderer.render(r, DatasetFormat.CONVERSATION) for r in records]
    model = load_causal_lm(directory, torch.float32).eval()
    loaded = LoadedModel(model, processor.tokenizer, directory, False, torch.device("cpu"), None, 0,
                         processor=processor)
    pad = processor.tokenizer.pad_token_id
    alone = []
    for record, example in zip(records, examples, strict=True):
        ours = token_logps(loaded, collate([[example]], pad, loaded.images))[0, :-1]
        own = own_logps(model, processor, record, example)
        assert torch.allclose(ours, own, atol=1e-5), (ours - own).abs().max()
        if name in RULED:  # the rules matter: without them the model sees something else
            plain = token_logps(loaded, collate([[example]], pad, loaded.images), rules=False)[0, :-1]
            assert (plain - own).abs().max() > 1e-4
        alone.append(ours)
    for width in (attention.MASK_MAX_WIDTH, 0):  # a 4-D mask, and (where no image blocks) per-example segments
        monkeypatch.setattr(attention, "MASK_MAX_WIDTH", width)
        packed = token_logps(loaded, collate([examples], pad, loaded.images))[0]
        first = len(examples[0])
        assert torch.allclose(packed[: first - 1], alone[0], atol=1e-5)
        assert torch.allclose(packed[first:-1], alone[1], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_a_lora_job_trains_and_its_export_loads_as_the_base_does(vlm_family: Family, name: str,
                                                                 tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    directory = vlm_family(name)
    rows = [conversation(*shapes((40, 30), seed=i), answer=colour) for i, colour in enumerate(COLOURS)]
    rows.append({"messages": [{"role": "user", "content": "Say red."}, {"role": "assistant", "content": "red"}]})
    cfg = TrainConfig(job_id="ft-family", base_model_dir=str(directory), base_model_name=name,
                      train_file=str(write_jsonl(tmp_path / "train.jsonl", rows)), output_dir=str(tmp_path / "out"),
                      lora={"r": 4}, n_epochs=1, learning_rate=1e-2, batch_size=2, max_seq_length=256, seed=0,
                      train_vision=True)
    reporter = ListReporter()
    result = sft.run(cfg, reporter)
    assert result.status == "completed" and result.path is not None, reporter.events
    final = Path(result.path)
    adapter = final / "adapter" / "adapter_config.json"
    assert adapter.is_file()
    for part in ("model", "adapter"):  # the processor's files as the base has them
        for source in processor_files(directory):
            assert filecmp.cmp(source, final / part / source.name, shallow=False), source.name
    model = AutoModelForImageTextToText.from_pretrained(final / "model").eval()
    processor = load_processor(final / "model")
    messages = [{"role": "user", "content": [image(solid_url((220, 30, 30), (40, 30))), {"type": "text", "text": "?"}]}]
    inputs = processor.apply_chat_template(prepared(processor, messages),
                                           add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
