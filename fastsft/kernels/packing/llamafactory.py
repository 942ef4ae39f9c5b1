"""LLaMA-Factory 0.9.5's packing: its ``greedy_knapsack`` per preprocessing batch, rows padded.

Port of ``llamafactory/data/processor/supervised.py``'s ``PackedSupervisedDatasetProcessor`` and
``data_utils.greedy_knapsack``; ``fastsft._core.knapsack_llamafactory`` is the compiled packer.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence

from fastsft.kernels.packing.rows import rows_from_order
from fastsft.kernels.packing.strategy import PackingStrategy

__all__ = [
    "LLAMAFACTORY",
    "greedy_knapsack",
    "llamafactory_batch_sizes",
    "llamafactory_order",
    "pack_llamafactory",
]


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


def llamafactory_batch_sizes(samples: int, num_proc: int | None, batch_size: int) -> list[int]:
    """The sizes of LLaMA-Factory's preprocessing batches over a split of ``samples`` samples, in order.

    LLaMA-Factory packs each batch on its own, and ``datasets``' ``map(num_proc=N)`` (N is its
    ``preprocessing_num_workers``, at most ``samples``) first cuts the split into N contiguous
    shards (``Dataset.shard(contiguous=True)``: the first ``samples % N`` one sample longer), each
    then cut into batches of ``batch_size``. So its packed rows depend on that key.
    """
    shards = max(1, min(num_proc or 1, samples))
    base, longer = divmod(samples, shards)
    sizes: list[int] = []
    for shard in range(shards):
        size = base + (1 if shard < longer else 0)
        sizes += [batch_size] * (size // batch_size) + ([size % batch_size] if size % batch_size else [])
    return sizes


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


LLAMAFACTORY = PackingStrategy(
    name="llamafactory",
    per_batch=True,
    mask_padding=False,
    reference=llamafactory_order,
    kernel="knapsack_llamafactory",
)
