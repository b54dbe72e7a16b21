"""Turn rows of examples into tensors, keeping every example to itself.

A row holds one example (padded batches) or several (packed batches). Each example gets
``position_ids`` from 0 and a *segment id*; the attention bias lets a token see only earlier
tokens of its own segment (a block-diagonal causal mask), so packed examples never attend to one
another. Padding is one more segment whose targets are ignored.

Targets are pre-shifted per example: ``targets[t]`` is the label of token ``t + 1`` when that token
belongs to the same example, else ``-100`` — so the last token of one example is never trained to
predict the first token of the next, and the loss is a plain token-level cross-entropy.

Examples with images (see ``images.py``) bring them along: ``images.encode`` turns the batch's
images, in the order of their tokens (row by row), into the model's image inputs (``vision``). For a
model that places image tokens by its own rules, each example gets them on its own: three-axis
positions (``position_ids`` is then ``[3, B, L]``) and image blocks whose tokens see each other
(``blocks``, which ``attention_bias`` honours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tunery.training.data.render import IGNORE, Example, ExampleImage


class ImageInputs(Protocol):
    """``images.ImageInputs``: the model's image inputs, and its rules for one example's image tokens."""

    def encode(self, images: Sequence[ExampleImage]) -> dict[str, torch.Tensor]: ...

    def positions(self, input_ids: Sequence[int], image_grids: torch.Tensor | None) -> torch.Tensor | None: ...

    def blocks(self, input_ids: Sequence[int]) -> torch.Tensor | None: ...


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] long
    position_ids: torch.Tensor  # [B, L] long, or [3, B, L] for three-axis (M-RoPE) positions
    segment_ids: torch.Tensor  # [B, L] long; padding is its own segment
    targets: torch.Tensor  # [B, L] long, IGNORE where not trained
    num_tokens: int  # real (non-padding) tokens
    num_targets: int  # trained targets
    lengths: tuple[tuple[int, ...], ...] = ()  # per row, its examples' lengths in order
    vision: dict[str, torch.Tensor] = field(default_factory=dict)  # image inputs (pixel_values …), if any
    blocks: torch.Tensor | None = None  # [B, L] long: image block of each token, -1 for none (see images.py)

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.segment_ids.to(device),
            self.targets.to(device),
            self.num_tokens,
            self.num_targets,
            self.lengths,
            {key: value.to(device) for key, value in self.vision.items()},
            None if self.blocks is None else self.blocks.to(device),
        )


def collate(rows: Sequence[Sequence[Example]], pad_id: int, images: ImageInputs | None = None) -> Batch:
    width = max(sum(len(e) for e in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    targets = torch.full(shape, IGNORE, dtype=torch.long)
    num_tokens = 0
    for b, row in enumerate(rows):
        at = 0
        for s, example in enumerate(row):
            n = len(example)
            input_ids[b, at : at + n] = torch.tensor(example.input_ids)
            position_ids[b, at : at + n] = torch.arange(n)
            segment_ids[b, at : at + n] = s
            targets[b, at : at + n - 1] = torch.tensor(example.labels[1:])
            at += n
        num_tokens += at
        position_ids[b, at:] = torch.arange(width - at)
        segment_ids[b, at:] = len(row)
    num_targets = int((targets != IGNORE).sum())
    lengths = tuple(tuple(len(e) for e in row) for row in rows)
    pictures = [image for row in rows for example in row for image in example.images]
    if pictures and images is None:
        raise ValueError("these examples have images; collate them with their model's ImageInputs")
    if images is None:
        return Batch(input_ids, position_ids, segment_ids, targets, num_tokens, num_targets, lengths)
    vision = images.encode(pictures)
    position_ids, blocks = _image_rules(rows, images, vision.get("image_grid_thw"), position_ids)
    return Batch(input_ids, position_ids, segment_ids, targets, num_tokens, num_targets, lengths, vision, blocks)


def _image_rules(rows: Sequence[Sequence[Example]], images: ImageInputs, grids: torch.Tensor | None,
                 plain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each example's own positions and image blocks, laid out in the rows (padding keeps ``plain``'s
    positions on every axis and no block)."""
    positions: torch.Tensor | None = None
    blocks: torch.Tensor | None = None
    first_image = 0
    for b, row in enumerate(rows):
        at = 0
        for example in row:
            n, count = len(example), len(example.images)
            own = images.positions(example.input_ids, grids[first_image : first_image + count]
                                   if grids is not None and count else None)
            if own is not None:
                if positions is None:
                    positions = plain[None].repeat(own.shape[0], 1, 1)
                positions[:, b, at : at + n] = own
            block = images.blocks(example.input_ids)
            if block is not None:
                if blocks is None:
                    blocks = torch.full(plain.shape, -1, dtype=torch.long)
                blocks[b, at : at + n] = block
            first_image += count
            at += n
    return (plain if positions is None else positions), blocks


def attention_bias(segment_ids: torch.Tensor, dtype: torch.dtype, blocks: torch.Tensor | None = None) -> torch.Tensor:
    """The additive 4-D mask ``[B, 1, L, L]``: 0 where query ``i`` may see key ``j``, else the dtype's minimum.

    ``j`` is visible from ``i`` when both are in the same segment and ``j <= i``, or both are in the
    same image block (``blocks``, -1 for none). Transformers models take such a mask as is (eager and
    SDPA attention alike).
    """
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    if blocks is not None:
        causal = causal | ((blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = (same & causal)[:, None, :, :]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)
