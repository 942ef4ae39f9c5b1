# Packing: LLaMA-Factory's greedy knapsack, best-fit-decreasing, and row materialisation.

from cython.operator cimport dereference as deref
from libc.stdint cimport uint64_t
from libcpp.set cimport set as cpp_set
from libcpp.utility cimport pair

cdef extern from *:
    """
    static inline int64_t fastsft_lowest_bit(uint64_t word) { return __builtin_ctzll(word); }
    static inline int64_t fastsft_highest_bit(uint64_t word) { return 63 - __builtin_clzll(word); }
    """
    int64_t fastsft_lowest_bit(uint64_t word) noexcept nogil
    int64_t fastsft_highest_bit(uint64_t word) noexcept nogil


def _packing_lengths(lengths, int64_t capacity):
    """``lengths`` as int64, checked to lie within ``[0, capacity]``."""
    arr = _as_flat(lengths, np.int64, "lengths")
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    if arr.shape[0] and arr.min() < 0:
        raise ValueError("lengths must be >= 0")
    if arr.shape[0] and arr.max() > capacity:
        raise ValueError(
            f"a length of {arr.max()} exceeds the capacity {capacity}; truncate or drop such samples before packing"
        )
    return arr


def _length_slots(lengths_arr, int64_t capacity):
    """Number the possible lengths: ``(slot_lengths, slot_of, dense)``.

    Dense (the capacity is small next to the sample count): every length 0..capacity is a slot,
    so a length is its own slot and nothing needs sorting. Sparse: the slots are the distinct
    lengths, ascending (one O(n log n) sort).
    """
    if capacity <= 8 * lengths_arr.shape[0] + 4096:
        return np.arange(capacity + 1, dtype=np.int64), lengths_arr, True
    slot_lengths, slot_of = np.unique(lengths_arr, return_inverse=True)
    return slot_lengths.astype(np.int64), slot_of.reshape(-1).astype(np.int64), False


cdef int _link_slots(const int64_t[::1] slot_of, int64_t[::1] head, int64_t[::1] next_in_slot,
                     bint highest_first) except -1 nogil:
    """Thread every sample onto its slot's list (``head`` starts all -1): ``head[slot]`` is the
    first sample, ``next_in_slot[i]`` the one after ``i``; highest or lowest index first."""
    cdef Py_ssize_t n = slot_of.shape[0], k, i
    for k in range(n):
        i = k if highest_first else n - 1 - k
        next_in_slot[i] = head[slot_of[i]]
        head[slot_of[i]] = i
    return 0


cdef inline int64_t _upper_bound(const int64_t[::1] sorted_values, int64_t value) except -1 nogil:
    """Number of entries of ascending ``sorted_values`` that are <= ``value`` (``bisect_right``)."""
    cdef int64_t lo = 0, hi = sorted_values.shape[0], mid
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_values[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _bitmap_levels(int64_t n_values):
    """Word offsets of a 64-ary bitmap over ``n_values`` values: level 0 has a bit per value,
    each level above a bit per word of the level below, the top level one word."""
    cdef int64_t words = (n_values + 63) // 64
    level_words = [words]
    while words > 1:
        words = (words + 63) // 64
        level_words.append(words)
    return np.concatenate([[0], np.cumsum(level_words)]).astype(np.int64)


cdef inline int _bitmap_set(uint64_t[::1] bits, const int64_t[::1] levels, int64_t value) except -1 nogil:
    """Mark ``value`` present, and its word in every level above that was empty."""
    cdef Py_ssize_t level
    cdef int64_t word
    cdef bint was_empty
    for level in range(levels.shape[0] - 1):
        word = levels[level] + (value >> 6)
        was_empty = bits[word] == 0
        bits[word] |= (<uint64_t>1) << (value & 63)
        if not was_empty:
            break
        value >>= 6
    return 0


cdef inline int _bitmap_clear(uint64_t[::1] bits, const int64_t[::1] levels, int64_t value) except -1 nogil:
    """Mark ``value`` absent, and its word in every level above that became empty."""
    cdef Py_ssize_t level
    cdef int64_t word
    for level in range(levels.shape[0] - 1):
        word = levels[level] + (value >> 6)
        bits[word] &= ~((<uint64_t>1) << (value & 63))
        if bits[word] != 0:
            break
        value >>= 6
    return 0


cdef inline int64_t _bitmap_next(const uint64_t[::1] bits, const int64_t[::1] levels, int64_t value) except -2 nogil:
    """The smallest set value >= ``value``, or -1."""
    cdef Py_ssize_t level = 0
    cdef uint64_t word
    while True:  # climb until a word has a set bit at or after the position
        if level == levels.shape[0] - 1 or (value >> 6) >= levels[level + 1] - levels[level]:
            return -1
        word = bits[levels[level] + (value >> 6)] & (~(<uint64_t>0) << (value & 63))
        if word != 0:
            break
        value = (value >> 6) + 1
        level += 1
    value = ((value >> 6) << 6) + fastsft_lowest_bit(word)
    while level > 0:  # descend along the lowest set bits
        level -= 1
        value = (value << 6) + fastsft_lowest_bit(bits[levels[level] + value])
    return value


cdef inline int64_t _bitmap_prev(const uint64_t[::1] bits, const int64_t[::1] levels, int64_t value) except -2 nogil:
    """The largest set value <= ``value``, or -1."""
    cdef Py_ssize_t level = 0
    cdef uint64_t word
    while True:  # climb until a word has a set bit at or before the position (the top level is one word)
        if value < 0:
            return -1
        word = bits[levels[level] + (value >> 6)] & (~(<uint64_t>0) >> (63 - (value & 63)))
        if word != 0:
            break
        value = (value >> 6) - 1
        level += 1
    value = ((value >> 6) << 6) + fastsft_highest_bit(word)
    while level > 0:  # descend along the highest set bits
        level -= 1
        value = (value << 6) + fastsft_highest_bit(bits[levels[level] + value])
    return value


def knapsack_llamafactory(lengths, int64_t capacity):
    """LLaMA-Factory 0.9.5's packing assignment, in O(n log n).

    Rows are filled like ``greedy_knapsack`` (each row repeatedly takes the largest remaining
    length that still fits) and samples of equal length are handed out like its
    ``length2indexes[length].pop()`` (the highest remaining index first). Returns
    ``(order, row_bounds)``: row ``r`` holds samples ``order[row_bounds[r]:row_bounds[r + 1]]``
    in the order LLaMA-Factory appends them. Lengths must lie within ``[0, capacity]``.

    A 64-ary bitmap over the length slots that still have samples answers "longest length
    <= remaining" in O(log_64 slots), replacing LLaMA-Factory's O(n) list pops.
    """
    lengths_arr = _packing_lengths(lengths, capacity)
    cdef Py_ssize_t n = lengths_arr.shape[0]
    slot_lengths_arr, slot_of_arr, dense_slots = _length_slots(lengths_arr, capacity)
    cdef const int64_t[::1] slot_lengths = slot_lengths_arr
    cdef const int64_t[::1] slot_of = slot_of_arr
    cdef Py_ssize_t n_slots = slot_lengths.shape[0]
    # Each slot's unplaced samples, highest index first (LLaMA-Factory's pop()).
    cdef int64_t[::1] head = np.full(n_slots, -1, dtype=np.int64)
    cdef int64_t[::1] next_in_slot = np.empty(n, dtype=np.int64)
    levels_arr = _bitmap_levels(n_slots)
    cdef const int64_t[::1] levels = levels_arr
    cdef uint64_t[::1] has_samples = np.zeros(levels[levels.shape[0] - 1], dtype=np.uint64)
    order_arr = np.empty(n, dtype=np.int64)
    row_bounds_arr = np.zeros(n + 1, dtype=np.int64)
    cdef int64_t[::1] order = order_arr
    cdef int64_t[::1] row_bounds = row_bounds_arr
    cdef bint dense = dense_slots
    cdef int64_t placed = 0, rows = 0, remaining, slot, sample

    with nogil:
        _link_slots(slot_of, head, next_in_slot, True)
        for slot in range(n_slots):
            if head[slot] >= 0:
                _bitmap_set(has_samples, levels, slot)
        while placed < n:
            remaining = capacity
            while True:  # the longest unplaced sample that fits, the highest index among equals
                slot = _bitmap_prev(
                    has_samples, levels, remaining if dense else _upper_bound(slot_lengths, remaining) - 1
                )
                if slot < 0:
                    break
                sample = head[slot]
                head[slot] = next_in_slot[sample]
                order[placed] = sample
                placed += 1
                remaining -= slot_lengths[slot]
                if head[slot] < 0:
                    _bitmap_clear(has_samples, levels, slot)
            rows += 1
            row_bounds[rows] = placed
    return order_arr, row_bounds_arr[: rows + 1].copy()


cdef inline int64_t _heap_meld(int64_t[::1] child, int64_t[::1] sibling, int64_t a, int64_t b) except -2 nogil:
    """Meld two pairing heaps of rows (roots ``a`` and ``b``, -1 for empty); the lower row is the root."""
    if a < 0:
        return b
    if b < 0:
        return a
    if b < a:
        a, b = b, a
    sibling[b] = child[a]
    child[a] = b
    return a


cdef inline int64_t _heap_pop(int64_t[::1] child, int64_t[::1] sibling, int64_t root) except -2 nogil:
    """Remove ``root`` from its pairing heap; returns the new root (two-pass pairing of its children)."""
    cdef int64_t first = child[root], a, b, melded = -1, stack = -1
    child[root] = -1
    while first >= 0:  # meld the children two by two, stacking the results
        a = first
        b = sibling[a]
        first = sibling[b] if b >= 0 else -1
        sibling[a] = -1
        if b >= 0:
            sibling[b] = -1
        a = _heap_meld(child, sibling, a, b)
        sibling[a] = stack
        stack = a
    while stack >= 0:  # meld the stack into one heap
        a = stack
        stack = sibling[a]
        sibling[a] = -1
        melded = _heap_meld(child, sibling, melded, a)
    return melded


def _best_fit_rows(const int64_t[::1] sorted_items, const int64_t[::1] lengths, int64_t capacity, bint dense):
    """Place samples (in ``sorted_items`` order) best-fit; returns ``(row_of, rows)`` with
    ``row_of[t]`` the row of the t-th placed sample.

    Dense: a 64-ary bitmap finds the least remaining space that fits in O(log_64 capacity) and a
    pairing heap per remaining space yields its lowest row. Sparse: an ordered set of
    (remaining space, row) pairs does both.
    """
    cdef Py_ssize_t n = sorted_items.shape[0]
    row_of_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] row_of = row_of_arr
    cdef int64_t rows = 0, t, length, row, remaining, space
    # Dense: the bitmap of remaining spaces some row has, and per space a heap of its rows.
    levels_arr = _bitmap_levels(capacity + 1) if dense else np.zeros(2, dtype=np.int64)
    cdef const int64_t[::1] levels = levels_arr
    cdef uint64_t[::1] bits = np.zeros(levels[levels.shape[0] - 1], dtype=np.uint64)
    cdef int64_t[::1] heap_of_space = np.full(capacity + 1 if dense else 0, -1, dtype=np.int64)
    cdef int64_t[::1] child = np.full(n, -1, dtype=np.int64)
    cdef int64_t[::1] sibling = np.full(n, -1, dtype=np.int64)
    # Sparse: the ordered set of (remaining space, row).
    cdef cpp_set[pair[int64_t, int64_t]] open_rows
    cdef cpp_set[pair[int64_t, int64_t]].iterator best

    with nogil:
        for t in range(n):
            length = lengths[sorted_items[t]]
            if dense:
                space = _bitmap_next(bits, levels, length)
                if space < 0:
                    row = rows
                    rows += 1
                    remaining = capacity - length
                else:
                    row = heap_of_space[space]
                    heap_of_space[space] = _heap_pop(child, sibling, row)
                    if heap_of_space[space] < 0:
                        _bitmap_clear(bits, levels, space)
                    remaining = space - length
                if remaining > 0:
                    if heap_of_space[remaining] < 0:
                        _bitmap_set(bits, levels, remaining)
                    heap_of_space[remaining] = _heap_meld(child, sibling, heap_of_space[remaining], row)
            else:
                best = open_rows.lower_bound(pair[int64_t, int64_t](length, -1))
                if best == open_rows.end():
                    row = rows
                    rows += 1
                    remaining = capacity - length
                else:
                    row = deref(best).second
                    remaining = deref(best).first - length
                    open_rows.erase(best)
                if remaining > 0:
                    open_rows.insert(pair[int64_t, int64_t](remaining, row))
            row_of[t] = row
    return row_of_arr, rows


def pack_bfd(lengths, int64_t capacity):
    """Best-fit-decreasing packing of all ``lengths`` into rows of ``capacity`` tokens, O(n log n).

    Samples go in decreasing length (ties: lower index first); each goes to the open row with the
    least remaining space that fits it (ties: the row opened first), else to a new row; a row
    closes when it is full. Equals ``fastsft.data.packing.best_fit_decreasing``. Returns
    ``(order, row_bounds)`` like ``knapsack_llamafactory``: rows in the order they were opened,
    samples within a row in the order they were placed. Lengths above ``capacity`` raise
    ``ValueError``: truncate or drop those samples first.
    """
    lengths_arr = _packing_lengths(lengths, capacity)
    cdef Py_ssize_t n = lengths_arr.shape[0]
    slot_lengths_arr, slot_of_arr, dense = _length_slots(lengths_arr, capacity)
    cdef const int64_t[::1] slot_of = slot_of_arr
    cdef Py_ssize_t n_slots = slot_lengths_arr.shape[0]
    cdef int64_t[::1] head = np.full(n_slots, -1, dtype=np.int64)
    cdef int64_t[::1] next_in_slot = np.empty(n, dtype=np.int64)
    sorted_items_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] sorted_items = sorted_items_arr
    cdef int64_t t = 0, row, sample, slot
    with nogil:  # longest first, ties by index: slots from the top, each lowest index first
        _link_slots(slot_of, head, next_in_slot, False)
        for slot in range(n_slots - 1, -1, -1):
            sample = head[slot]
            while sample >= 0:
                sorted_items[t] = sample
                t += 1
                sample = next_in_slot[sample]
    row_of_arr, n_rows = _best_fit_rows(sorted_items, lengths_arr, capacity, dense)
    cdef const int64_t[::1] row_of = row_of_arr
    cdef int64_t rows = n_rows
    # Counting sort by row keeps the placement order within each row.
    row_bounds_arr = np.zeros(rows + 1, dtype=np.int64)
    cdef int64_t[::1] row_bounds = row_bounds_arr
    order_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] order = order_arr
    cdef int64_t[::1] cursor = np.empty(rows, dtype=np.int64)
    with nogil:
        for t in range(n):
            row_bounds[row_of[t] + 1] += 1
        for row in range(rows):
            row_bounds[row + 1] += row_bounds[row]
            cursor[row] = row_bounds[row]
        for t in range(n):
            order[cursor[row_of[t]]] = sorted_items[t]
            cursor[row_of[t]] += 1
    return order_arr, row_bounds_arr


def materialize_rows(input_ids, labels, offsets, order, row_bounds, int64_t row_length, int32_t pad_token_id,
                     bint neat_packing):
    """Copy samples into packed rows: row ``r`` holds samples ``order[row_bounds[r]:row_bounds[r + 1]]``.

    Position ids restart at 0 for every sample; the attention mask is 1, or with
    ``neat_packing`` the 1-based index of the sample within its row. With ``row_length > 0``
    every row is padded to exactly that length (pad token, label -100, position 0, mask 0 when
    ``neat_packing`` else 1) — LLaMA-Factory's packed rows for ``row_length = cutoff_len + 1``;
    with ``row_length == 0`` rows are as long as their content.

    Returns ``(row_input_ids, row_labels, row_attention_mask, row_position_ids, row_offsets,
    seq_lens)``: int32 flat buffers, row ``r`` spanning ``row_offsets[r]:row_offsets[r + 1]``,
    and ``seq_lens`` (int64, aligned with ``order``) the length of each packed sample, so row
    ``r``'s sequence lengths are ``seq_lens[row_bounds[r]:row_bounds[r + 1]]`` (padding excluded).
    """
    cdef const int32_t[::1] ids = _as_flat(input_ids, np.int32, "input_ids")
    cdef const int32_t[::1] labs = _as_flat(labels, np.int32, "labels")
    if labs.shape[0] != ids.shape[0]:
        raise ValueError("labels must be as long as input_ids (samples hit by the efficient_eos quirk cannot be packed)")
    offsets_arr = _as_flat(offsets, np.int64, "offsets")
    _check_bounds(offsets_arr, ids.shape[0], "offsets")
    cdef Py_ssize_t n_samples = offsets_arr.shape[0] - 1
    order_arr = _as_flat(order, np.int64, "order")
    if order_arr.shape[0] and (order_arr.min() < 0 or order_arr.max() >= n_samples):
        raise ValueError(f"order must index samples in [0, {n_samples})")
    row_bounds_arr = _as_flat(row_bounds, np.int64, "row_bounds")
    _check_bounds(row_bounds_arr, order_arr.shape[0], "row_bounds")
    if row_length < 0:
        raise ValueError(f"row_length must be >= 0, got {row_length}")

    cdef const int64_t[::1] sample_offsets = offsets_arr
    cdef const int64_t[::1] picked = order_arr
    cdef const int64_t[::1] bounds = row_bounds_arr
    cdef Py_ssize_t n_rows = bounds.shape[0] - 1
    row_offsets_arr = np.zeros(n_rows + 1, dtype=np.int64)
    cdef int64_t[::1] row_offsets = row_offsets_arr
    seq_lens_arr = np.zeros(order_arr.shape[0], dtype=np.int64)
    cdef int64_t[::1] seq_lens = seq_lens_arr
    cdef Py_ssize_t row
    cdef int64_t k, content, sample, longest = 0

    with nogil:  # pass 1: row lengths
        for row in range(n_rows):
            content = 0
            for k in range(bounds[row], bounds[row + 1]):
                sample = picked[k]
                seq_lens[k] = sample_offsets[sample + 1] - sample_offsets[sample]
                content += seq_lens[k]
            if content > longest:
                longest = content
            row_offsets[row + 1] = row_offsets[row] + (row_length if row_length > 0 else content)
    if row_length > 0 and longest > row_length:
        raise ValueError(f"a row holds {longest} tokens, more than row_length {row_length}")

    cdef int64_t total = row_offsets[n_rows]
    out_ids_arr = _pooled_int32(total)
    out_labels_arr = _pooled_int32(total)
    out_mask_arr = _pooled_int32(total)
    out_pos_arr = _pooled_int32(total)
    cdef int32_t[::1] out_ids = out_ids_arr
    cdef int32_t[::1] out_labels = out_labels_arr
    cdef int32_t[::1] out_mask = out_mask_arr
    cdef int32_t[::1] out_pos = out_pos_arr
    cdef int64_t at, i, start, padding
    cdef int32_t pad_mask = 0 if neat_packing else 1

    with nogil:  # pass 2: copy samples, then pad
        for row in range(n_rows):
            at = row_offsets[row]
            for k in range(bounds[row], bounds[row + 1]):
                start = sample_offsets[picked[k]]
                _copy_tokens(out_ids, at, ids, start, seq_lens[k])
                _copy_tokens(out_labels, at, labs, start, seq_lens[k])
                _fill_tokens(out_mask, at, <int32_t>(k - bounds[row] + 1) if neat_packing else 1, seq_lens[k])
                for i in range(seq_lens[k]):
                    out_pos[at + i] = <int32_t>i
                at += seq_lens[k]
            padding = row_offsets[row + 1] - at
            _fill_tokens(out_ids, at, pad_token_id, padding)
            _fill_tokens(out_labels, at, IGNORE_INDEX, padding)
            _fill_tokens(out_mask, at, pad_mask, padding)
            _fill_tokens(out_pos, at, 0, padding)

    return out_ids_arr, out_labels_arr, out_mask_arr, out_pos_arr, row_offsets_arr, seq_lens_arr
