"""Group examples into rows and rows into batches, deterministically from a seed.

With packing, examples are packed best-fit-decreasing into rows of at most ``capacity`` tokens
(few rows, little padding); each row keeps its examples apart (see ``collate.py``). Without
packing, each example is its own row and batches are formed from rows of similar length so that
little padding is needed. Either way the row order is shuffled per epoch from ``seed + epoch``.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

Row = list[int]  # indices of examples
Batch = list[Row]


def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[Row]:
    """Best-fit decreasing: longest first, each into the fullest row it still fits in.

    Every length must be ``<= capacity``. Rows are returned in creation order, each row's
    examples longest first; the result depends only on ``lengths``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[Row] = []
    free: list[tuple[int, int]] = []  # (space left, row index), ascending
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"example {i} has {size} tokens, more than the row capacity {capacity}")
        at = bisect.bisect_left(free, (size, -1))
        if at == len(free):
            rows.append([i])
            space, row = capacity - size, len(rows) - 1
        else:
            space, row = free.pop(at)
            rows[row].append(i)
            space -= size
        if space > 0:
            bisect.insort(free, (space, row))
    return rows


def epoch_batches(
    lengths: Sequence[int],
    *,
    batch_size: int,
    capacity: int,
    packing: bool,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[Batch]:
    """The batches of one epoch. Same arguments, same batches."""
    rng = random.Random(seed * 1_000_003 + epoch)
    if packing:
        rows = pack_best_fit(lengths, capacity)
        if shuffle:
            rng.shuffle(rows)
        return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    # Length bucketing: sort within windows of many batches, so batches hold similar lengths but
    # the epoch is still shuffled; then shuffle the batches.
    window = batch_size * 64
    batches: list[Batch] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend([[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


def count_rows(lengths: Sequence[int], capacity: int, packing: bool) -> int:
    return len(pack_best_fit(lengths, capacity)) if packing else len(lengths)
