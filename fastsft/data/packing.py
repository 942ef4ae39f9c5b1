"""Sequence packing: which samples share a row, and the rows themselves.

A packer returns ``(order, row_bounds)``: row ``r`` holds samples
``order[row_bounds[r]:row_bounds[r+1]]`` in that order. ``llamafactory_order`` reproduces
LLaMA-Factory 0.9.5's ``greedy_knapsack`` assignment (per preprocessing batch);
``best_fit_decreasing`` packs a whole dataset tighter. ``rows_from_order`` builds the rows.
These are the readable references; ``fastsft._core`` has compiled equivalents checked against them.
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


def llamafactory_order(lengths: Sequence[int], capacity: int) -> tuple[list[int], list[int]]:
    """LLaMA-Factory's rows: its knapsack bins, and among equal lengths the latest sample first.

    (LLaMA-Factory maps each packed length back to a sample with ``length2indexes[length].pop()``.)
    """
    length_to_indexes: dict[int, list[int]] = defaultdict(list)
    for index, length in enumerate(lengths):
        length_to_indexes[length].append(index)
    order: list[int] = []
    row_bounds = [0]
    for knapsack in greedy_knapsack(lengths, capacity):
        order += [length_to_indexes[length].pop() for length in knapsack]
        row_bounds.append(len(order))
    return order, row_bounds


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


def rows_from_order(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    order: Sequence[int],
    row_bounds: Sequence[int],
    *,
    neat_packing: bool,
    row_length: int = 0,
    pad_token_id: int = 0,
) -> dict[str, list[list[int]]]:
    """Packed rows with ``position_ids`` restarting at every sequence.

    The attention mask is 1, or with ``neat_packing`` the 1-based index of the sequence in its
    row. With ``row_length > 0`` rows are padded to it as LLaMA-Factory does (pad id, position 0,
    label -100, mask 0 if neat else 1); ``row_length = 0`` leaves rows unpadded.
    """
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
        pad_length = max(row_length - len(row_ids), 0)
        row_ids += [pad_token_id] * pad_length
        row_pos += [0] * pad_length
        row_labels += [IGNORE_INDEX] * pad_length
        row_mask += [0 if neat_packing else 1] * pad_length
        rows["input_ids"].append(row_ids)
        rows["attention_mask"].append(row_mask)
        rows["position_ids"].append(row_pos)
        rows["labels"].append(row_labels)
    return dict(rows)


def pack_llamafactory(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    cutoff_len: int,
    pad_token_id: int,
    neat_packing: bool,
) -> dict[str, list[list[int]]]:
    """One preprocessing batch packed exactly as LLaMA-Factory does, rows ``cutoff_len + 1`` long.

    ``cutoff_len`` is LLaMA-Factory's ``data_args.cutoff_len`` after its ``-1`` for packing.
    Samples longer than ``cutoff_len`` must already be removed (LLaMA-Factory drops them).
    """
    order, row_bounds = llamafactory_order([len(ids) for ids in input_ids], cutoff_len)
    return rows_from_order(
        input_ids,
        labels,
        order,
        row_bounds,
        neat_packing=neat_packing,
        row_length=cutoff_len + 1,
        pad_token_id=pad_token_id,
    )
