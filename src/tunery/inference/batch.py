"""The running batch of one model: its rows' KV cache, left-padded to one common length.

Every row's newest token sits in the last column, so one decode step feeds one token per row and
appends one column to every layer's keys and values. Padding on the left is masked out of attention
and each row keeps its own position ids, so a row computes what it would alone (the same layout
``transformers``' ``generate`` uses for a left-padded batch). Rows join (``extend``: the shorter side
is padded on the left) and leave (``keep``: then columns that are padding for every remaining row are
dropped) between steps.

Joining and trimming need every layer to be a plain growing cache (``DynamicLayer``). Models with
sliding-window or other special layers still batch the rows of one prefill, but a new group waits
until the running one has finished (``mergeable`` is False).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def mergeable(model: Any) -> bool:
    """Whether rows of ``model`` can share a batch (every cache layer a plain ``DynamicLayer``)."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


class DecodeBatch:
    def __init__(self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor):
        self.cache = cache
        self.mask = mask  # [B, L] long: 1 where a real token's keys and values sit
        self.positions = positions  # [B] long: the position id of each row's next token

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @classmethod
    def prefill(cls, model: Any, prompts: list[list[int]], positions: torch.Tensor | None = None,
                **forward: Any) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts (left-padded together); returns their batch and each one's last logits ``[b, V]``.
        ``positions`` (``[axes, n]``, one prompt only) are the prompt's own when they are not 0..n-1; tensors
        in ``forward`` (a vision-language model's image inputs) go to the model's device, floats in its dtype."""
        device = model_device(model)
        forward = {k: _on(v, device, model.dtype) for k, v in forward.items()}
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        following = torch.tensor([len(p) for p in prompts], dtype=torch.long)  # each row's next position
        if positions is not None:
            assert len(prompts) == 1, "prompts with positions of their own prefill alone"
            position_ids, following = positions[:, None, :], positions.max().view(1) + 1
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                    past_key_values=cache, use_cache=True, logits_to_keep=1, **forward)
        return cls(out.past_key_values, mask.to(device), following.to(device)), out.logits[:, -1, :]

    def decode(self, model: Any, tokens: torch.Tensor, **forward: Any) -> torch.Tensor:
        """Feed one token per row (``[B]``); returns the next logits ``[B, V]``."""
        device = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones(self.size, 1, dtype=torch.long, device=device)], dim=1)
        out = model(input_ids=tokens.view(-1, 1).to(device), attention_mask=self.mask,
                    position_ids=self.positions.view(-1, 1), past_key_values=self.cache, use_cache=True, **forward)
        self.cache = out.past_key_values
        self.positions = self.positions + 1
        return out.logits[:, -1, :]

    def repeat(self, rows: list[int]) -> None:
        """Reorder or duplicate rows (``n`` choices share their prompt's prefill)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)

    def keep(self, rows: list[int], trim: bool = True) -> None:
        """Keep only ``rows`` (in that order), then drop columns that are padding in all of them
        (unless ``trim`` is False: special cache layers do not hold one column per position)."""
        self.repeat(rows)
        if not trim:
            return
        real = self.mask.any(dim=0).nonzero()
        first = int(real[0]) if len(real) else self.length
        if first:
            for layer in _layers(self.cache):
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]
            self.mask = self.mask[:, first:]

    def extend(self, other: DecodeBatch) -> None:
        """Append ``other``'s rows after this batch's."""
        width = max(self.length, other.length)
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        self.positions = torch.cat([self.positions, other.positions])


def _on(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)


def _layers(cache: DynamicCache) -> list[Any]:
    return list(cache.layers)  # plain DynamicLayers here (``mergeable``); typed loosely by transformers


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros on the left of dimension ``dim`` (counted from the front) up to ``width``."""
    missing = width - t.shape[dim]
    if not missing:
        return t
    pad = [0, 0] * (t.dim() - dim - 1) + [missing, 0]
    return F.pad(t, pad)
