"""Images the tests draw on the fly: data URLs, and a dataset whose answer is only in the image."""

from __future__ import annotations

import base64
import io
import random
from typing import Any

from PIL import Image, ImageDraw

# Colour names and RGB values far apart, so a few pixels of any of them tell which it is.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (240, 220, 30),
}
QUESTION = "What colour is the shape?"
BLANK = (128, 128, 128)


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def solid_url(colour: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> str:
    return data_url(Image.new("RGB", size, colour), fmt)


def draw_shape(colour: tuple[int, int, int], rng: random.Random, size: int = 32) -> Image.Image:
    """A square, disc or triangle of ``colour`` at a random place and size on a light background."""
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    side = rng.randint(size // 3, size // 2)
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    kind = rng.choice(["square", "disc", "triangle"])
    if kind == "square":
        draw.rectangle((x, y, x + side, y + side), fill=colour)
    elif kind == "disc":
        draw.ellipse((x, y, x + side, y + side), fill=colour)
    else:
        draw.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)], fill=colour)
    return image


def colour_samples(n: int, seed: int, *, blank: bool = False, fmt: str = "PNG") -> list[dict[str, Any]]:
    """``n`` conversations asking the colour of a drawn shape, the colours in turn (balanced).

    The question is always the same, so only the image tells the answer; with ``blank`` every image
    is the same grey square, so nothing does (the control).
    """
    rng = random.Random(seed)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        image = Image.new("RGB", (32, 32), BLANK) if blank else draw_shape(COLOURS[name], rng)
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image, fmt)}},
                                         {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": name},
        ]})
    return rows


def answer_accuracy(model: Any, processor: Any, samples: list[dict[str, Any]]) -> float:
    """Share of ``samples`` whose assistant answer ``model`` gives, greedily, to the user turn, its
    inputs made by ``processor`` from the OpenAI-style messages, as any user would."""
    import torch

    model.eval()
    right = 0
    for sample in samples:
        prompt, answer = sample["messages"][:-1], sample["messages"][-1]["content"]
        inputs = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        right += processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == answer
    return right / len(samples)


def load_vlm(model_dir: Any) -> tuple[Any, Any]:
    """A downloaded model directory as a user loads it: AutoModelForImageTextToText and AutoProcessor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
