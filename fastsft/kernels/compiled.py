"""The compiled kernels of ``fastsft._core`` with named results; the only module that imports it.

There is no silent pure-Python fallback: a missing or stale extension is an error that says how
to build it, so a slow path never hides behind a fast one.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from fastsft.errors import FastSFTError
from fastsft.kernels.packing import BFD, LLAMAFACTORY, STRATEGIES, PackingStrategy
from fastsft.kernels.types import (
    ArrayScan,
    Packing,
    RenderPlan,
    Rows,
    SegmentBatch,
    Segments,
    Supervised,
    Varlen,
)

__all__ = [
    "BOUNDS_CHECKED",
    "KernelsNotBuiltError",
    "assemble_supervised",
    "gather_segments",
    "knapsack_llamafactory",
    "materialize_rows",
    "pack",
    "pack_bfd",
    "render_row",
    "scan_json_array",
    "varlen_flatten",
]


class KernelsNotBuiltError(FastSFTError, ImportError):
    """The compiled extension ``fastsft._core`` is missing or out of date."""


try:
    _core = importlib.import_module("fastsft._core")
except ImportError as error:
    raise KernelsNotBuiltError(
        f"fastsft's compiled kernels (fastsft._core) are not built or out of date ({error}); "
        "build them with `pip install -e .` or `python setup.py build_ext --inplace` in the fastsft checkout"
    ) from error

BOUNDS_CHECKED: bool = _core.BOUNDS_CHECKED

_PACKERS = {name: getattr(_core, strategy.kernel) for name, strategy in STRATEGIES.items()}


def gather_segments(text_ids: Any, text_offsets: Any, segment_texts: Any, special_ids: Any) -> Segments:
    """See ``fastsft.kernels.reference.gather_segments``."""
    return Segments(*_core.gather_segments(text_ids, text_offsets, segment_texts, special_ids))


def assemble_supervised(
    token_ids: Any,
    message_bounds: Any,
    sample_bounds: Any,
    cutoff_len: int,
    train_on_prompt: bool,
    mask_history: bool,
    efficient_eos: bool,
    eos_token_id: int | None,
) -> Supervised:
    """See ``fastsft.kernels.reference.assemble_supervised`` (same contract)."""
    return Supervised(
        *_core.assemble_supervised(
            token_ids,
            message_bounds,
            sample_bounds,
            cutoff_len,
            train_on_prompt,
            mask_history,
            efficient_eos,
            eos_token_id,
        )
    )


def pack(strategy: PackingStrategy, lengths: Any, capacity: int) -> Packing:
    """See ``fastsft.kernels.reference.pack``: ``strategy``'s compiled packer (``strategy.kernel``)."""
    return Packing(*_PACKERS[strategy.name](lengths, capacity))


def knapsack_llamafactory(lengths: Any, capacity: int) -> Packing:
    """See ``fastsft.kernels.reference.knapsack_llamafactory``."""
    return pack(LLAMAFACTORY, lengths, capacity)


def pack_bfd(lengths: Any, capacity: int) -> Packing:
    """See ``fastsft.kernels.reference.pack_bfd``."""
    return pack(BFD, lengths, capacity)


def materialize_rows(
    input_ids: Any,
    labels: Any,
    offsets: Any,
    order: Any,
    row_bounds: Any,
    row_length: int,
    pad_token_id: int,
    neat_packing: bool,
) -> Rows:
    """See ``fastsft.kernels.reference.materialize_rows``."""
    return Rows(
        *_core.materialize_rows(
            input_ids, labels, offsets, order, row_bounds, row_length, pad_token_id, neat_packing
        )
    )


def varlen_flatten(
    rows_input_ids: list[np.ndarray],
    rows_labels: list[np.ndarray],
    rows_position_ids: list[np.ndarray] | None = None,
) -> Varlen:
    """See ``fastsft.kernels.reference.varlen_flatten``."""
    return Varlen(*_core.varlen_flatten(rows_input_ids, rows_labels, rows_position_ids))


def scan_json_array(buf: Any, pos: int, state: int) -> ArrayScan:
    """See ``fastsft.kernels.reference.scan_json_array``."""
    return ArrayScan(*_core.scan_json_array(buf, pos, state))


def render_row(row: Any, plan: RenderPlan, out: SegmentBatch) -> bool:
    """See ``fastsft.kernels.reference.render_row``."""
    return bool(_core.render_row(row, plan, out))
