"""Images in datasets: base64 data URLs, decoded and checked once, the same way at upload and in training.

Together's multimodal samples carry images as OpenAI-style content parts in user messages,
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``, with at most
``MAX_IMAGES_PER_SAMPLE`` images of at most ``MAX_IMAGE_BYTES`` each, in JPEG, PNG or WebP.
``image_bytes`` checks a URL and returns the decoded file; ``open_image`` decodes it to RGB
pixels. Both raise ``ImageInvalid`` with a message that completes "<json path> ..." (the caller
adds the line and the path).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Any

MAX_IMAGES_PER_SAMPLE = 10
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MEDIA_TYPES: tuple[str, ...] = ("image/jpeg", "image/jpg", "image/png", "image/webp")
FORMATS = frozenset({"JPEG", "PNG", "WEBP"})  # what the bytes must really be, whatever the URL says
# Pillow's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): a 10 MiB file can claim billions
# of pixels, which would exhaust memory when decoded.
MAX_PIXELS = 89_478_485
# A base64 payload longer than this decodes to more than MAX_IMAGE_BYTES: refuse before decoding.
_MAX_PAYLOAD_CHARS = 4 * (-(-MAX_IMAGE_BYTES // 3))


class ImageInvalid(ValueError):
    """An image that cannot be used: ``problem`` completes "<json path> ...", ``value`` is what was found."""

    def __init__(self, problem: str, value: Any):
        super().__init__(problem)
        self.problem = problem
        self.value = value


def image_bytes(url: str) -> bytes:
    """The image file held by a ``data:image/<jpeg|png|webp>;base64,...`` URL, at most 10 MiB."""
    header, comma, payload = url.partition(",")
    media_type = header[5:].removesuffix(";base64") if header.startswith("data:") else ""
    if not comma or not header.endswith(";base64") or media_type not in MEDIA_TYPES:
        raise ImageInvalid("must be a base64 data URL (data:image/png|jpeg|webp;base64,...)", url)
    if len(payload) > _MAX_PAYLOAD_CHARS + 4:
        raise ImageInvalid(f"must hold an image of at most {MAX_IMAGE_BYTES // (1024 * 1024)} MiB",
                           f"{len(payload) * 3 // 4} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInvalid("must hold valid base64 after the comma", payload) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageInvalid(f"must hold an image of at most {MAX_IMAGE_BYTES // (1024 * 1024)} MiB",
                           f"{len(data)} bytes")
    return data


def open_image(data: bytes) -> Any:
    """Decode an image file to an RGB ``PIL.Image``; refuse other formats, bombs and broken files."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_PIXELS and twice that; make it refuse there too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise ImageInvalid("must be a JPEG, PNG or WebP image", f"a {image.format} image")
            image.load()
    except ImageInvalid:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageInvalid(f"must have at most {MAX_PIXELS} pixels",
                           f"{pixels.group(1)} pixels" if pixels else str(exc)) from None
    except UnidentifiedImageError:
        raise ImageInvalid("must be a decodable image", f"{len(data)} bytes that are no image file") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageInvalid("must be a decodable image", f"{len(data)} bytes that fail to decode ({exc})") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image_url(url: str) -> Any:
    """``open_image(image_bytes(url))``: what training feeds the model's processor."""
    return open_image(image_bytes(url))

