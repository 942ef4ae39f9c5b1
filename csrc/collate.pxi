# Collation: padding-free (varlen) batches for flash-attention style kernels.


def _concat_rows(rows, str name):
    """Concatenate 1-D integer rows (arrays or lists) into one int64 array, once."""
    arrays = [row if isinstance(row, np.ndarray) else np.asarray(row, dtype=np.int64) for row in rows]
    for i, arr in enumerate(arrays):
        if arr.ndim != 1:
            raise ValueError(f"{name}[{i}] must be 1-D, got shape {arr.shape}")
    return np.concatenate(arrays, dtype=np.int64, casting="same_kind")


def varlen_flatten(rows_input_ids, rows_labels, rows_position_ids=None):
    """Flatten rows into one padding-free sequence stream.

    Each row is one sequence when ``rows_position_ids`` is None (positions then count from 0 per
    row); otherwise a new sequence starts at the start of every row and at every position id 0.
    The first label of every sequence becomes -100 (no prediction across a sequence boundary).
    Empty rows contribute no sequence.

    Returns ``(input_ids, labels, position_ids, cu_seqlens, max_seqlen)``: int64 arrays of the
    total length, int32 cumulative sequence starts (``S + 1`` entries) and the longest sequence.
    """
    cdef Py_ssize_t n_rows = len(rows_input_ids)
    if len(rows_labels) != n_rows or (rows_position_ids is not None and len(rows_position_ids) != n_rows):
        raise ValueError("rows_input_ids, rows_labels and rows_position_ids must have the same number of rows")
    row_lengths_arr = np.empty(n_rows, dtype=np.int64)
    cdef int64_t[::1] row_lengths = row_lengths_arr
    cdef Py_ssize_t r
    for r in range(n_rows):
        row_lengths[r] = len(rows_input_ids[r])
        if len(rows_labels[r]) != row_lengths[r] or (
            rows_position_ids is not None and len(rows_position_ids[r]) != row_lengths[r]
        ):
            raise ValueError(f"row {r}: input_ids, labels and position_ids must have the same length")
    if n_rows == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy(), np.zeros(1, dtype=np.int32), 0

    input_ids_arr = _concat_rows(rows_input_ids, "rows_input_ids")
    labels_arr = _concat_rows(rows_labels, "rows_labels")
    cdef int64_t total = input_ids_arr.shape[0]
    if total != row_lengths_arr.sum():
        raise ValueError("rows_input_ids rows must be 1-D")
    if total >= 2**31:
        raise ValueError(f"{total} tokens overflow int32 cu_seqlens")
    cdef bint given_positions = rows_position_ids is not None
    position_ids_arr = (
        _concat_rows(rows_position_ids, "rows_position_ids") if given_positions else np.empty(total, dtype=np.int64)
    )
    cdef int64_t[::1] labels = labels_arr
    cdef int64_t[::1] position_ids = position_ids_arr
    cu_seqlens_arr = np.empty(total + 1, dtype=np.int32)
    cdef int32_t[::1] cu_seqlens = cu_seqlens_arr
    cdef int64_t at = 0, i, n_seqs = 0, start = 0, longest = 0

    with nogil:
        cu_seqlens[0] = 0
        for r in range(n_rows):
            for i in range(row_lengths[r]):
                if not given_positions:
                    position_ids[at] = i
                if i == 0 or position_ids[at] == 0:
                    if at > start:
                        longest = max(longest, at - start)
                        n_seqs += 1
                        cu_seqlens[n_seqs] = <int32_t>at
                    start = at
                    labels[at] = IGNORE_INDEX
                at += 1
        if at > start:
            longest = max(longest, at - start)
            n_seqs += 1
            cu_seqlens[n_seqs] = <int32_t>at

    return input_ids_arr, labels_arr, position_ids_arr, cu_seqlens_arr[: n_seqs + 1].copy(), int(longest)
