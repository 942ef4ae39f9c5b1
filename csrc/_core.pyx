# cython: language_level=3
"""fastsft's compiled kernels: flat-buffer loops for encoding, packing and collation.

Every kernel but one takes and returns flat NumPy buffers (int32 tokens, int64 offsets) and runs
its loops without the GIL; ``render_row`` (``render.pxi``) reads a row's dicts and strings, with
the GIL. Kernels raise ``ValueError`` for structurally invalid input; callers that know the
dataset and sample turn that into a located ``fastsft.errors.DataError``.
``fastsft.kernels.compiled`` is the only module that imports this one.
"""

from libc.stdint cimport int32_t, int64_t

import numpy as np
import pyarrow as pa

cdef extern from *:
    """
    #ifdef FASTSFT_DEBUG_KERNELS
    #define FASTSFT_BOUNDS_CHECKED 1
    #else
    #define FASTSFT_BOUNDS_CHECKED 0
    #endif
    """
    const int FASTSFT_BOUNDS_CHECKED

#: True when built with ``FASTSFT_DEBUG_KERNELS=1``: every buffer index is checked.
BOUNDS_CHECKED = bool(FASTSFT_BOUNDS_CHECKED)

cdef int32_t IGNORE_INDEX = -100


def _as_flat(obj, dtype, str name):
    """``obj`` as a contiguous 1-D array of ``dtype``; integer inputs of other widths are range-checked."""
    arr = np.asarray(obj)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == dtype:
        return np.ascontiguousarray(arr)
    if arr.size == 0:
        return np.empty(0, dtype=dtype)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    info = np.iinfo(dtype)
    if arr.min() < info.min or arr.max() > info.max:
        raise ValueError(f"{name} has values outside the {np.dtype(dtype).name} range")
    return arr.astype(dtype)


def _pooled_int32(int64_t n):
    """An uninitialised int32[n] array in Arrow's memory pool, for token outputs.

    A batch's outputs are freed once written; the pool hands the same pages to the next batch,
    where ``np.empty`` would fault in freshly zeroed pages on every call (half the kernel's time
    at these sizes). Arrow columns then wrap the array without a copy.
    """
    return np.frombuffer(pa.allocate_buffer(n * 4), dtype=np.int32)


def _check_bounds(bounds, int64_t limit, str name):
    """Raise unless ``bounds`` is non-empty, non-decreasing and within ``[0, limit]``."""
    if bounds.shape[0] == 0:
        raise ValueError(f"{name} must have at least one entry")
    if bounds[0] < 0 or bounds[bounds.shape[0] - 1] > limit:
        raise ValueError(f"{name} must lie within [0, {limit}]")
    if bounds.shape[0] > 1 and (np.diff(bounds) < 0).any():
        raise ValueError(f"{name} must be non-decreasing")


include "encode.pxi"
include "pack.pxi"
include "collate.pxi"
include "scan.pxi"
include "render.pxi"
include "bpe.pxi"
