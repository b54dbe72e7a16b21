"""Chatting with vision-language models through the engine in-process: a conversation with images gets,
token for token, the greedy answer ``transformers`` gives the same model with the inputs its own processor
makes (``tunery/tiny-vlm`` and a tiny model of each family users fine-tune), also while other requests share
the batch; images for a text model and bad images are refused by name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.inference.test_engine import drain
from tests.sample_images import COLOURS, draw_shape, solid_url
from tests.sample_images import data_url as image_url
from tests.vlm_families import FAMILIES
from tunery.errors import InvalidRequest
from tunery.inference.engine import Limits, TransformersEngine
from tunery.inference.pool import ModelPool, PoolOptions
from tunery.inference.protocol import GenerateRequest, ModelRef, Sampling

MAX_TOKENS = 5


def make_engine(model_dir: Path) -> TransformersEngine:
    options = PoolOptions(budget_bytes=1 << 40, dtype="float32", device="cpu", max_batch_size=8,
                          max_batch_tokens=8192)
    pool = ModelPool(options, locate_base=lambda ref: model_dir, fetch=lambda key: model_dir)
    return TransformersEngine(pool, Limits(max_tokens=64, per_user=8, max_pending=16))


def ask(*urls: str, text: str = "What colour is the shape?") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def request(messages: list[dict[str, Any]]) -> GenerateRequest:
    return GenerateRequest(model=ModelRef(base="vlm"), user="u", messages=messages, max_tokens=MAX_TOKENS,
                           sampling=Sampling(temperature=0))


def answers(engine: TransformersEngine, *conversations: list[dict[str, Any]]) -> list[list[int]]:
    """The generated token ids of each conversation, all sent at once."""
    async def scenario() -> list[list[dict[str, Any]]]:
        streams = [await engine.open(request(m)) for m in conversations]
        return list(await asyncio.gather(*(drain(s) for s in streams)))

    return [[e["token_id"] for e in events if e["type"] == "token"] for events in asyncio.run(scenario())]


def reference(model_dir: Path, messages: list[dict[str, Any]]) -> list[int]:
    """What a user gets from transformers: the processor's inputs, greedy ``generate``. The template writes
    any BOS token itself, as in training (the families' tiny tokenizer has a BOS token Qwen's lacks)."""
    from transformers import AutoModelForImageTextToText

    from tunery.models.processor import load_processor  # AutoProcessor, also where torchvision is missing

    processor = load_processor(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", processor_kwargs={"add_special_tokens": False})
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return list(out[0, inputs["input_ids"].shape[1]:].tolist())


@pytest.fixture(scope="module")
def conversations() -> list[list[dict[str, Any]]]:
    import random

    rng = random.Random(0)
    shapes = [image_url(draw_shape(colour, rng, size=40)) for colour in COLOURS.values()]
    return [ask(shapes[0]), ask(shapes[1], shapes[2], text="Which shapes are these?"),
            [{"role": "user", "content": "Say something."}]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-vlm", *FAMILIES])
def test_answers_are_what_the_model_gives_with_its_processors_inputs(
        name: str, tiny_vlm: Path, vlm_family: Callable[[str], Path],
        conversations: list[list[dict[str, Any]]]) -> None:
    model_dir = tiny_vlm if name == "tiny-vlm" else vlm_family(name)
    engine = make_engine(model_dir)
    try:
        together = answers(engine, *conversations)  # one batch: the image requests prefill alone, then decode with it
        assert together == [answers(engine, c)[0] for c in conversations]
    finally:
        engine.close()
    assert together[:2] == [reference(model_dir, c) for c in conversations[:2]]


def test_images_for_a_text_model_and_bad_images_are_refused_by_name(tiny_llama: Path, tiny_vlm: Path) -> None:
    text_engine, vision_engine = make_engine(tiny_llama), make_engine(tiny_vlm)
    try:
        with pytest.raises(InvalidRequest, match="text model and takes no images") as refused:
            answers(text_engine, ask(solid_url()))
        assert refused.value.param == "messages"
        bad = {"https://example.com/cat.png": "must be a base64 data URL",
               "data:image/png;base64,bm90IGFuIGltYWdl": "image 1 of the messages must be a decodable image"}
        for url, problem in bad.items():
            with pytest.raises(InvalidRequest, match=problem) as refused:
                answers(vision_engine, ask(url))
            assert refused.value.param == "messages"
        with pytest.raises(InvalidRequest, match="at most 10"):
            answers(vision_engine, ask(*[solid_url()] * 11))
    finally:
        text_engine.close()
        vision_engine.close()


def test_the_chat_request_takes_image_parts_and_refuses_other_parts_by_name() -> None:
    from pydantic import ValidationError

    from tunery.api.schemas.completions import ChatCompletionRequest

    ChatCompletionRequest(model="m", messages=ask(solid_url()))
    with pytest.raises(ValidationError, match="only text and image_url content parts are supported; got input_audio"):
        ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "input_audio"}]}])
    with pytest.raises(ValidationError, match="an image_url part must be"):
        ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": solid_url()}]}])
