"""What a packing strategy is: its name, when it packs, how its rows are laid out, and its two packers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["PackingStrategy", "ReferencePacker"]

ReferencePacker = Callable[[Sequence[int], int], tuple[list[int], list[int]]]
"""``(lengths, capacity) -> (order, row_bounds)``: row ``r`` holds samples ``order[row_bounds[r]:row_bounds[r+1]]``."""


@dataclass(frozen=True)
class PackingStrategy:
    """One way of packing samples into rows (an entry of ``fastsft.kernels.packing.STRATEGIES``).

    ``reference`` is the readable pure-Python packer; ``kernel`` names the compiled packer in
    ``fastsft._core`` with the same contract (int64 lengths in, int64 ``order`` and ``row_bounds``
    out), declared in ``fastsft/_core.pyi``. The two are checked equal by the parity tests.
    """

    name: str  # the value of the `packing_strategy` option
    per_batch: bool  # packs each preprocessing batch; else the whole dataset once every length is known
    mask_padding: bool  # plain packing's padding gets attention_mask 0 (LLaMA-Factory's has 1)
    reference: ReferencePacker
    kernel: str
