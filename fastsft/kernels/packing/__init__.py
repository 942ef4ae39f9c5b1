"""Packing strategies: which samples share a row, one module per strategy, one table.

A packer answers ``(order, row_bounds)``; ``materialize_rows`` (reference: ``rows_from_order``)
lays the rows out, positions restarting at every sequence (``P`` is padding to LLaMA-Factory's
row length; ``neat_packing`` numbers the sequences in ``attention_mask``)::

    lengths         [4, 2, 3]            capacity 10
    order           [0, 2, 1]            row_bounds [0, 3]
    input_ids       a a a a c c c b b P P
    position_ids    0 1 2 3 0 1 2 0 1 0 0
    attention_mask  1 1 1 1 2 2 2 3 3 0 0     (neat_packing; else 1, and 1 on padding unless the
                                              strategy masks it)

Adding a strategy: a module here with its reference packer and a ``PackingStrategy``, its compiled
packer in ``csrc/pack.pxi`` (declared in ``fastsft/_core.pyi``), and one line in ``STRATEGIES``.
"""

from __future__ import annotations

from fastsft.kernels.packing.bfd import BFD, best_fit_decreasing
from fastsft.kernels.packing.llamafactory import (
    LLAMAFACTORY,
    greedy_knapsack,
    llamafactory_batch_sizes,
    llamafactory_order,
    pack_llamafactory,
)
from fastsft.kernels.packing.rows import rows_from_order
from fastsft.kernels.packing.strategy import PackingStrategy, ReferencePacker

__all__ = [
    "BFD",
    "LLAMAFACTORY",
    "STRATEGIES",
    "PackingStrategy",
    "ReferencePacker",
    "best_fit_decreasing",
    "greedy_knapsack",
    "llamafactory_batch_sizes",
    "llamafactory_order",
    "pack_llamafactory",
    "rows_from_order",
]

STRATEGIES: dict[str, PackingStrategy] = {strategy.name: strategy for strategy in (LLAMAFACTORY, BFD)}
"""Every packing strategy by its option value; the `packing_strategy` choices come from here."""
