"""How packed rows keep their examples apart in attention, without an ``L × L`` mask for long rows.

Two ways, chosen per batch by ``attention_for``:

- a 4-D additive mask ``[B, 1, L, L]`` (``collate.attention_bias``), given to PyTorch's SDPA. Its
  memory and work grow with the square of the row width, whatever the examples' lengths;
- *segments*: each example's queries, keys and values are gathered out of the rows, examples of
  similar length are stacked into one batch per length bucket (padded at the end, which causal
  attention never lets a real query see), and SDPA runs with ``is_causal=True`` and no mask; the
  outputs are put back in place. Work grows with the examples' own lengths, and padding costs
  nothing.

Measured on the 2-core CPU box (LoRA step, 2 048 tokens in 8 rows of 256, or fewer wider rows):
the mask is faster up to 512-token rows (gathering costs more than it saves), segments are
faster beyond (1.75x a whole small-llama step at 2 048-token rows, 2.6x tiny-llama's).

Models are loaded with ``attn_implementation=PACKED`` (see ``model.load_causal_lm``), registered
here with transformers: with ``packed_segments=`` among the forward's keyword arguments attention runs
per segment; otherwise it is transformers' own SDPA attention with whatever mask it is given: a
4-D mask as it is, a 2-D padding mask made 4-D as for ``"sdpa"``. No mask means plain causal
attention over the whole row: unlike ``"sdpa"``, position ids that restart mid-row are *not*
taken as packing (that would build the ``L × L`` mask this module avoids), so packed rows must
come with segments or a 4-D mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tunery.training.data.collate import Batch, attention_bias

PACKED = "tunery_packed"
MASK_MAX_WIDTH = 512  # rows up to this many tokens use the 4-D mask; wider ones use segments
BUCKET = 64  # segment lengths are rounded up to a multiple of this to share one SDPA call


@dataclass(frozen=True)
class Segments:
    """Where each example lies in a batch of rows, as gather/scatter indices over the flattened
    ``[B * L]`` token positions.

    ``buckets[i] = (index, count, length)``: ``count`` segments padded to ``length`` tokens; ``index``
    (``count * length`` entries) names the token each slot holds (padding slots repeat the
    segment's last token). ``inverse[t]`` is the slot, over all buckets concatenated, holding token
    ``t``; row padding points one past the last slot (a zero row).
    """

    buckets: tuple[tuple[torch.Tensor, int, int], ...]
    inverse: torch.Tensor

    def to(self, device: torch.device) -> Segments:
        return Segments(tuple((i.to(device), c, n) for i, c, n in self.buckets), self.inverse.to(device))


def attention_for(batch: Batch, dtype: torch.dtype) -> torch.Tensor | Segments:
    """What keeps ``batch``'s examples apart: a 4-D mask in ``dtype`` for narrow rows on CPU, else
    segments (on CUDA always: causal SDPA without a mask runs its flash or memory-efficient kernels,
    which an ``L x L`` mask rules out or makes pay for the mask). A batch with image blocks (tokens that
    see each other both ways, see ``collate``) always takes the mask: causal kernels cannot express them."""
    width = batch.input_ids.shape[1]
    blocked = batch.blocks is not None and bool((batch.blocks >= 0).any())
    if blocked or (width <= MASK_MAX_WIDTH and batch.input_ids.device.type == "cpu"):
        return attention_bias(batch.segment_ids, dtype, batch.blocks)
    return segments(batch.lengths, width).to(batch.input_ids.device)


def segments(rows: Sequence[Sequence[int]], width: int) -> Segments:
    """The segments of rows whose examples have these lengths (in order), in rows ``width`` wide."""
    by_length: dict[int, list[tuple[int, int]]] = {}
    for b, lengths in enumerate(rows):
        at = b * width
        for n in lengths:
            by_length.setdefault(-(-n // BUCKET) * BUCKET, []).append((at, n))
            at += n
    slots = 0
    inverse = torch.full((len(rows) * width,), -1, dtype=torch.long)
    buckets = []
    for length, spans in sorted(by_length.items()):
        index = torch.empty(len(spans), length, dtype=torch.long)
        for k, (start, n) in enumerate(spans):
            index[k, :n] = torch.arange(start, start + n)
            index[k, n:] = start + n - 1
            inverse[start : start + n] = torch.arange(slots + k * length, slots + k * length + n)
        buckets.append((index.flatten(), len(spans), length))
        slots += len(spans) * length
    inverse[inverse < 0] = slots
    return Segments(tuple(buckets), inverse)


def segmented_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segs: Segments,
                        scaling: float | None, dropout: float) -> torch.Tensor:
    """Causal attention within each segment. Takes ``[B, H, L, D]`` (keys and values may have fewer
    heads: grouped-query attention); returns ``[B, L, H, D]``, as transformers' attention functions do."""
    batch, heads, width, dim = query.shape
    flat = [t.transpose(1, 2).reshape(batch * width, t.shape[1], dim) for t in (query, key, value)]
    gqa = key.shape[1] != heads
    outs = []
    for index, count, length in segs.buckets:
        q, k, v = (t.index_select(0, index).view(count, length, t.shape[1], dim).transpose(1, 2) for t in flat)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                             enable_gqa=gqa)
        outs.append(out.transpose(1, 2).reshape(count * length, heads, dim))
    outs.append(query.new_zeros(1, heads, dim))  # what row padding gets
    return torch.cat(outs).index_select(0, segs.inverse).view(batch, width, heads, dim)


def packed_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             packed_segments: Segments | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; see the module docstring."""
    if packed_segments is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return segmented_attention(query, key, value, packed_segments, scaling, dropout), None


def packed_mask(*, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """transformers' mask-function signature: ``"sdpa"``'s mask for a 2-D padding mask, else none."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make ``PACKED`` a valid ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED, packed_attention_forward)
    AttentionMaskInterface.register(PACKED, packed_mask)
