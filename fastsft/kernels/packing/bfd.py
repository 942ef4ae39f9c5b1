"""Best-fit-decreasing packing over the whole dataset: denser rows, their padding masked for varlen collation.

``fastsft._core.pack_bfd`` is the compiled packer.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

from fastsft.kernels.packing.strategy import PackingStrategy

__all__ = ["BFD", "best_fit_decreasing"]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> tuple[list[int], list[int]]:
    """Best-fit-decreasing bins over all samples, deterministic.

    Items go longest first (ties: lower index first) into the open bin with the least room that
    still fits (ties: the bin opened first); a new bin opens when none fits.
    """
    if any(length > capacity for length in lengths):
        raise ValueError(f"every length must be at most the capacity {capacity}")
    items = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (remaining room, bin index), sorted
    bins: list[list[int]] = []
    for item in items:
        length = lengths[item]
        pos = bisect.bisect_left(free, (length, -1))
        if pos < len(free):
            room, bin_index = free.pop(pos)
        else:
            room, bin_index = capacity, len(bins)
            bins.append([])
        bins[bin_index].append(item)
        if room - length > 0:
            bisect.insort(free, (room - length, bin_index))
    order = [item for row in bins for item in row]
    return order, [0, *itertools.accumulate(len(row) for row in bins)]


BFD = PackingStrategy(
    name="bfd",
    per_batch=False,
    mask_padding=True,
    reference=best_fit_decreasing,
    kernel="pack_bfd",
)
