"""``Kernels``: the one typed interface the reference and the compiled kernels both satisfy.

Each function takes flat NumPy buffers (int32 tokens, int64 offsets) and returns a named tuple of
``fastsft.kernels.types`` with the same dtypes; ``fastsft.kernels.reference`` documents every
contract. The modules are checked against this protocol by mypy (``tests/test_typing.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fastsft.kernels.packing import PackingStrategy
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

__all__ = ["Kernels"]


class Kernels(Protocol):
    """The kernel functions, as ``fastsft.kernels.select_kernels`` returns them."""

    def gather_segments(
        self, text_ids: Any, text_offsets: Any, segment_texts: Any, special_ids: Any
    ) -> Segments: ...

    def assemble_supervised(
        self,
        token_ids: Any,
        message_bounds: Any,
        sample_bounds: Any,
        cutoff_len: int,
        train_on_prompt: bool,
        mask_history: bool,
        efficient_eos: bool,
        eos_token_id: int | None,
    ) -> Supervised: ...

    def pack(self, strategy: PackingStrategy, lengths: Any, capacity: int) -> Packing: ...

    def materialize_rows(
        self,
        input_ids: Any,
        labels: Any,
        offsets: Any,
        order: Any,
        row_bounds: Any,
        row_length: int,
        pad_token_id: int,
        neat_packing: bool,
    ) -> Rows: ...

    def varlen_flatten(
        self,
        rows_input_ids: list[np.ndarray],
        rows_labels: list[np.ndarray],
        rows_position_ids: list[np.ndarray] | None = None,
    ) -> Varlen: ...

    def scan_json_array(self, buf: Any, pos: int, state: int) -> ArrayScan: ...

    def render_row(self, row: Any, plan: RenderPlan, out: SegmentBatch) -> bool: ...
