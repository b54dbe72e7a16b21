"""Images in the data path, on the built-in tiny VLM: image tokens placed by the processor and never
trained, images kept whole through truncation and with their tokens through packing, and a packed
forward pass that sees each example's own images."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.sample_images import COLOURS, draw_shape, solid_url
from tunery.datasets import DatasetFormat
from tunery.errors import TrainingFailed
from tunery.models.processor import load_processor
from tunery.training.attention import attention_for
from tunery.training.data.chat import ConversationRefused
from tunery.training.data.collate import collate
from tunery.training.data.dataset import load_examples
from tunery.training.data.images import ImageInputs, VisionRenderer, split_images
from tunery.training.data.render import IGNORE, Renderer, truncate
from tunery.training.model import LoadedModel, forward_logps, load_causal_lm

IMAGE_TOKENS = 16  # tiny-vlm: 32x32 images in 8x8 patches


@pytest.fixture(scope="module")
def processor(tiny_vlm: Path) -> Any:
    return load_processor(tiny_vlm)


def renderer(processor: Any, train_on_inputs: bool | str = "auto") -> VisionRenderer:
    return VisionRenderer(Renderer(processor.tokenizer, train_on_inputs), processor)  # type: ignore[arg-type]


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def sample(*urls: str, answer: str = "red") -> dict[str, Any]:
    return {"messages": [
        {"role": "system", "content": "Look closely."},
        {"role": "user", "content": [{"type": "text", "text": "Which colour"}, *[image(u) for u in urls],
                                     {"type": "text", "text": "is it?"}]},
        {"role": "assistant", "content": answer},
    ]}


def test_each_image_becomes_its_tokens_which_are_never_trained(processor: Any) -> None:
    record = sample(solid_url((255, 0, 0), (40, 30)), solid_url((0, 0, 255), (8, 64), "JPEG"))
    # The text renderer's tokens for the conversation with one <image> placeholder per image.
    placeholders = Renderer(processor.tokenizer).render(
        {"messages": split_images(record["messages"])[0]}, DatasetFormat.CONVERSATION)
    for train_on_inputs in ("auto", True):
        example = renderer(processor, train_on_inputs).render(record, DatasetFormat.CONVERSATION)
        image_id = processor.image_token_id
        assert [(i.start, i.end) for i in example.images] == [
            (s, s + IMAGE_TOKENS) for s in (example.images[0].start, example.images[0].start + IMAGE_TOKENS)]
        assert example.input_ids.count(image_id) == 2 * IMAGE_TOKENS
        assert all(example.input_ids[t] == image_id for i in example.images for t in range(i.start, i.end))
        assert all(example.labels[t] == IGNORE for t, token in enumerate(example.input_ids) if token == image_id)
        # Apart from the image tokens, the text renderer's tokens and labels.
        text_only = [(t, label) for t, label in zip(example.input_ids, example.labels, strict=True) if t != image_id]
        if train_on_inputs == "auto":
            assert text_only == [(t, label) for t, label in zip(placeholders.input_ids, placeholders.labels,
                                                                strict=True) if t != image_id]
            trained = processor.tokenizer.decode([t for t, label in text_only if label != IGNORE])
            assert trained == "red<|im_end|>\n"
        else:
            assert all(label == t for t, label in text_only)


def test_images_go_as_files_and_the_processor_sizes_them(processor: Any) -> None:
    url = solid_url((0, 255, 0), (100, 20), "WEBP")
    [img] = renderer(processor).render(sample(url), DatasetFormat.CONVERSATION).images
    assert img.data[:4] == b"RIFF"  # the uploaded WebP file as it was
    pixels = ImageInputs(processor).encode([img])["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)


def test_a_broken_image_is_refused_and_training_names_its_line(processor: Any, tmp_path: Path) -> None:
    with pytest.raises(ConversationRefused, match="image 1 of the sample must be a decodable image"):
        renderer(processor).render(sample("data:image/png;base64,AAAA"), DatasetFormat.CONVERSATION)
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(sample(solid_url())) + "\n" + json.dumps(sample("data:image/png;base64,AAAA")) + "\n")
    with pytest.raises(TrainingFailed, match="line 2 of the training file: image 1 of the sample") as caught:
        load_examples(path, "jsonl", renderer(processor), 128)
    assert caught.value.user_error


def test_truncation_keeps_an_image_whole_or_drops_it(processor: Any) -> None:
    example = renderer(processor).render(sample(solid_url(), solid_url()), DatasetFormat.CONVERSATION)
    first, second = example.images
    cut, was_cut = truncate(example, second.start + 3)
    assert was_cut and len(cut) == second.start and cut.images == (first,)
    cut, _ = truncate(example, first.start + 1)
    assert len(cut) == first.start and cut.images == ()
    assert truncate(example, second.end)[0].images == (first, second)


def test_packed_rows_see_their_own_images(processor: Any, tiny_vlm: Path) -> None:
    """Two samples packed into one row give the logits each gives alone: the images follow their tokens."""
    rng = random.Random(0)
    from tests.sample_images import data_url

    examples = [renderer(processor).render(sample(*(data_url(draw_shape(c, rng)) for c in colours)),
                                           DatasetFormat.CONVERSATION)
                for colours in ([COLOURS["red"]], [COLOURS["blue"], COLOURS["green"]])]
    model = load_causal_lm(tiny_vlm, torch.float32).eval()
    loaded = LoadedModel(model, processor.tokenizer, tiny_vlm, False, torch.device("cpu"), None, 0,
                         processor=processor)
    encoder = loaded.images

    def logits(rows: list[list[Any]]) -> torch.Tensor:  # the log-probabilities of every next token
        batch = collate(rows, processor.tokenizer.pad_token_id, encoder)
        assert batch.vision["pixel_values"].shape[0] == sum(len(e.images) for row in rows for e in row)
        with torch.no_grad():
            # Every next token of the same example (not only the trained ones); none across examples.
            same = batch.segment_ids[:, 1:] == batch.segment_ids[:, :-1]
            targets = torch.full_like(batch.input_ids, IGNORE)
            targets[:, :-1] = torch.where(same, batch.input_ids[:, 1:], IGNORE)
            return forward_logps(loaded, batch.input_ids, batch.position_ids, targets,
                                 attention_for(batch, torch.float32), **batch.vision)

    packed = logits([examples])[0]
    alone = torch.cat([logits([[e]])[0] for e in examples])
    assert torch.allclose(packed, alone, atol=1e-4)
    swapped = logits([[examples[1], examples[0]]])[0]
    assert torch.allclose(swapped[: len(examples[1])], alone[len(examples[0]):], atol=1e-4)
    with pytest.raises(ValueError, match="ImageInputs"):
        collate([examples], processor.tokenizer.pad_token_id)


def test_a_processor_that_does_not_say_where_images_go_places_them_the_same(processor: Any) -> None:
    """Processors with their own ``__call__`` (InternVL's, Idefics2's, …) report no replacement offsets:
    the image tokens are then found from the tokens themselves, with the same result."""

    class Silent:
        image_token = processor.image_token

        def __call__(self, **kwargs: Any) -> Any:
            out = processor(**kwargs)
            out.pop("text_replacement_offsets", None)
            return out

    record = sample(solid_url(), solid_url((0, 0, 255), (20, 60)))
    silent = VisionRenderer(Renderer(processor.tokenizer), Silent()).marked(record, DatasetFormat.CONVERSATION)
    told = renderer(processor).marked(record, DatasetFormat.CONVERSATION)
    assert (silent.example, silent.text, silent.offsets) == (told.example, told.text, told.offsets)


def test_a_template_that_leaves_out_images_is_refused(processor: Any) -> None:
    import copy

    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace("{{- '<image>' -}}", "")
    with pytest.raises(ConversationRefused, match="the model's chat template rendered 0 image placeholders for the "
                                                  "sample's 1 images: it must render each image part as '<image>'"):
        VisionRenderer(Renderer(tokenizer), processor).render(sample(solid_url()), DatasetFormat.CONVERSATION)
