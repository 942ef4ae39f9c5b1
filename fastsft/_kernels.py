"""The compiled kernels of ``fastsft._core``, re-exported; the only module that imports it.

There is no silent pure-Python fallback: a missing or stale extension is an error that says how
to build it, so a slow path never hides behind a fast one.
"""

from __future__ import annotations

from fastsft.errors import FastSFTError


class KernelsNotBuiltError(FastSFTError, ImportError):
    """The compiled extension ``fastsft._core`` is missing or out of date."""


try:
    from fastsft._core import (
        BOUNDS_CHECKED,
        assemble_supervised,
        knapsack_llamafactory,
        materialize_rows,
        pack_bfd,
        varlen_flatten,
    )
except ImportError as error:
    raise KernelsNotBuiltError(
        f"fastsft's compiled kernels (fastsft._core) are not built or out of date ({error}); "
        "build them with `pip install -e .` or `python setup.py build_ext --inplace` in the fastsft checkout"
    ) from error

__all__ = [
    "BOUNDS_CHECKED",
    "KernelsNotBuiltError",
    "assemble_supervised",
    "knapsack_llamafactory",
    "materialize_rows",
    "pack_bfd",
    "varlen_flatten",
]
