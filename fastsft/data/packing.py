"""Sequence packing.

``greedy_knapsack`` and ``pack_llamafactory`` are the readable reference: a port of
LLaMA-Factory 0.9.5's ``PackedSupervisedDatasetProcessor`` (knapsack per preprocessing batch,
rows padded to ``cutoff_len + 1``). The compiled packers in ``fastsft._core`` are checked
against them.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Sequence

from fastsft import IGNORE_INDEX


def greedy_knapsack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """LLaMA-Factory's knapsack: fill each bin by repeatedly taking the largest length that fits."""
    numbers = sorted(lengths)
    knapsacks = []
    while numbers:
        current = []
        remaining = capacity
        while True:
            index = bisect.bisect(numbers, remaining) - 1
            if index < 0:
                break
            remaining -= numbers[index]
            current.append(numbers.pop(index))
        knapsacks.append(current)
    return knapsacks


def pack_llamafactory(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    cutoff_len: int,
    pad_token_id: int,
    neat_packing: bool,
) -> dict[str, list[list[int]]]:
    """Pack one preprocessing batch exactly as LLaMA-Factory does.

    ``cutoff_len`` is LLaMA-Factory's ``data_args.cutoff_len`` after its ``-1`` for packing;
    rows are ``cutoff_len + 1`` long. Samples longer than ``cutoff_len`` must already be removed.
    Among equal lengths the most recently seen sample is taken first (LLaMA-Factory's ``pop()``).
    """
    lengths = [len(ids) for ids in input_ids]
    length_to_indexes: dict[int, list[int]] = defaultdict(list)
    for index, length in enumerate(lengths):
        length_to_indexes[length].append(index)

    rows: dict[str, list[list[int]]] = defaultdict(list)
    for knapsack in greedy_knapsack(lengths, cutoff_len):
        row_ids: list[int] = []
        row_mask: list[int] = []
        row_pos: list[int] = []
        row_labels: list[int] = []
        boundaries = [0]
        for seq_idx, length in enumerate(knapsack):
            index = length_to_indexes[length].pop()
            row_ids += input_ids[index]
            row_pos += range(length)
            row_labels += labels[index]
            row_mask += [seq_idx + 1 if neat_packing else 1] * length
            boundaries.append(boundaries[-1] + length)

        pad_length = cutoff_len + 1 - len(row_ids)
        row_ids += [pad_token_id] * pad_length
        row_pos += [0] * pad_length
        row_labels += [IGNORE_INDEX] * pad_length
        row_mask += [0 if neat_packing else 1] * pad_length
        boundaries.append(boundaries[-1] + pad_length)

        rows["input_ids"].append(row_ids)
        rows["attention_mask"].append(row_mask)
        rows["position_ids"].append(row_pos)
        rows["labels"].append(row_labels)
        if neat_packing:
            rows["sequence_boundaries"].append(boundaries)
    return dict(rows)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> tuple[list[int], list[int]]:
    """Best-fit-decreasing bins: ``(order, row_bounds)``, row ``r`` holds ``order[row_bounds[r]:row_bounds[r+1]]``.

    Items go longest first (ties: lower index first) into the open bin with the least room that
    still fits (ties: the bin opened first); a new bin opens when none fits. Deterministic.
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
    row_bounds = [0]
    for row in bins:
        row_bounds.append(row_bounds[-1] + len(row))
    return order, row_bounds


def rows_from_order(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    order: Sequence[int],
    row_bounds: Sequence[int],
    *,
    neat_packing: bool,
) -> dict[str, list[list[int]]]:
    """Unpadded packed rows; ``position_ids`` restart at every sequence, as varlen attention needs."""
    rows: dict[str, list[list[int]]] = defaultdict(list)
    for start, end in itertools.pairwise(row_bounds):
        row_ids: list[int] = []
        row_mask: list[int] = []
        row_pos: list[int] = []
        row_labels: list[int] = []
        for seq_idx, index in enumerate(order[start:end]):
            length = len(input_ids[index])
            row_ids += input_ids[index]
            row_labels += labels[index]
            row_pos += range(length)
            row_mask += [seq_idx + 1 if neat_packing else 1] * length
        rows["input_ids"].append(row_ids)
        rows["attention_mask"].append(row_mask)
        rows["position_ids"].append(row_pos)
        rows["labels"].append(row_labels)
    return dict(rows)
