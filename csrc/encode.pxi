# Supervised input ids and labels: LLaMA-Factory 0.9.5's ``_encode_data_example`` over a whole batch.


cdef inline int64_t _kept_target_len(int64_t source_len, int64_t target_len, int64_t cutoff_len) noexcept nogil:
    """The target length ``infer_seqlen`` keeps; the float arithmetic mirrors Python's exactly."""
    cdef int64_t max_target_len
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        # Python: int(cutoff_len * (target_len / (source_len + target_len))), in doubles.
        max_target_len = <int64_t>(<double>cutoff_len * (<double>target_len / <double>(source_len + target_len)))
    return target_len if target_len < max_target_len else max_target_len


cdef inline int64_t _copy_tokens(int32_t[::1] dst, int64_t at, const int32_t[::1] src, int64_t start,
                                 int64_t count) except -1 nogil:
    """Copy ``src[start:start + count]`` to ``dst[at:]``; returns the position after the copy."""
    cdef int64_t i
    for i in range(count):
        dst[at + i] = src[start + i]
    return at + count


cdef inline int64_t _fill_tokens(int32_t[::1] dst, int64_t at, int32_t value, int64_t count) except -1 nogil:
    """Write ``count`` copies of ``value`` to ``dst[at:]``; returns the position after them."""
    cdef int64_t i
    for i in range(count):
        dst[at + i] = value
    return at + count


def assemble_supervised(token_ids, message_bounds, sample_bounds, int64_t cutoff_len, bint train_on_prompt,
                        bint mask_history, bint efficient_eos, eos_token_id):
    """Build ``input_ids`` and ``labels`` for a batch of samples, exactly as ``encode_pairs`` does.

    ``token_ids`` (int32[N]) holds every message's tokens back to back; message ``m`` is
    ``token_ids[message_bounds[m]:message_bounds[m + 1]]``. Sample ``s`` owns messages
    ``sample_bounds[s] .. sample_bounds[s + 1]``, an even count of (prompt, response) pairs.

    Returns ``(input_ids, labels, offsets, label_offsets)``: int32 flat buffers with int64
    offsets; sample ``s`` is ``input_ids[offsets[s]:offsets[s + 1]]`` and
    ``labels[label_offsets[s]:label_offsets[s + 1]]``. The two offsets differ only through
    LLaMA-Factory's ``efficient_eos`` quirk: a turn other than the first (in consumption order)
    with an empty prompt and ``train_on_prompt`` off gets the one-label source ``[eos]`` for zero
    tokens, so that sample's labels are longer than its input ids.
    """
    cdef const int32_t[::1] tokens = _as_flat(token_ids, np.int32, "token_ids")
    bounds_arr = _as_flat(message_bounds, np.int64, "message_bounds")
    samples_arr = _as_flat(sample_bounds, np.int64, "sample_bounds")
    _check_bounds(bounds_arr, tokens.shape[0], "message_bounds")
    _check_bounds(samples_arr, bounds_arr.shape[0] - 1, "sample_bounds")
    if samples_arr.shape[0] > 1 and (np.diff(samples_arr) % 2).any():
        raise ValueError("every sample must own an even number of messages (prompt, response pairs)")
    cdef int32_t eos = 0
    if efficient_eos:
        if eos_token_id is None:
            raise ValueError("efficient_eos needs an eos_token_id")
        eos = eos_token_id

    cdef const int64_t[::1] bounds = bounds_arr
    cdef const int64_t[::1] samples = samples_arr
    cdef Py_ssize_t n_samples = samples.shape[0] - 1
    kept_arr = np.zeros(bounds.shape[0] - 1, dtype=np.int64)
    cdef int64_t[::1] kept = kept_arr  # tokens kept per message of a consumed turn
    turns_arr = np.zeros(n_samples, dtype=np.int64)
    cdef int64_t[::1] turns_used = turns_arr
    offsets_arr = np.zeros(n_samples + 1, dtype=np.int64)
    label_offsets_arr = np.zeros(n_samples + 1, dtype=np.int64)
    cdef int64_t[::1] offsets = offsets_arr
    cdef int64_t[::1] label_offsets = label_offsets_arr

    cdef Py_ssize_t s
    cdef int64_t n_turns, turn_idx, pair, message, total_length, budget, source_len, target_len, extra_labels
    cdef bint eos_source_label = efficient_eos and not train_on_prompt

    with nogil:  # pass 1: how much of each turn survives truncation, and the output sizes
        for s in range(n_samples):
            n_turns = (samples[s + 1] - samples[s]) // 2
            total_length = 1 if efficient_eos else 0
            extra_labels = 0
            turn_idx = 0
            while turn_idx < n_turns and total_length < cutoff_len:
                pair = n_turns - 1 - turn_idx if mask_history else turn_idx
                message = samples[s] + 2 * pair
                source_len = bounds[message + 1] - bounds[message]
                target_len = bounds[message + 2] - bounds[message + 1]
                budget = cutoff_len - total_length
                target_len = _kept_target_len(source_len, target_len, budget)
                source_len = min(max(budget - target_len, 0), source_len)
                kept[message] = source_len
                kept[message + 1] = target_len
                total_length += source_len + target_len
                if eos_source_label and turn_idx != 0 and source_len == 0:
                    extra_labels += 1
                turn_idx += 1
            turns_used[s] = turn_idx
            offsets[s + 1] = offsets[s] + total_length
            label_offsets[s + 1] = label_offsets[s] + total_length + extra_labels

    input_ids_arr = _pooled_int32(offsets[n_samples])
    labels_arr = _pooled_int32(label_offsets[n_samples])
    cdef int32_t[::1] input_ids = input_ids_arr
    cdef int32_t[::1] labels = labels_arr
    cdef int64_t first_pair, at, label_at

    with nogil:  # pass 2: consumed turns in their original order, then the efficient eos
        for s in range(n_samples):
            n_turns = (samples[s + 1] - samples[s]) // 2
            first_pair = n_turns - turns_used[s] if mask_history else 0
            at = offsets[s]
            label_at = label_offsets[s]
            for pair in range(first_pair, first_pair + turns_used[s]):
                turn_idx = n_turns - 1 - pair if mask_history else pair
                message = samples[s] + 2 * pair
                source_len = kept[message]
                target_len = kept[message + 1]
                if train_on_prompt:
                    label_at = _copy_tokens(labels, label_at, tokens, bounds[message], source_len)
                elif efficient_eos and turn_idx != 0:
                    # LLaMA-Factory: [eos] + [IGNORE] * (source_len - 1), one label even for no tokens.
                    labels[label_at] = eos
                    label_at = _fill_tokens(labels, label_at + 1, IGNORE_INDEX, max(source_len - 1, 0))
                else:
                    label_at = _fill_tokens(labels, label_at, IGNORE_INDEX, source_len)
                if mask_history and turn_idx != 0:
                    label_at = _fill_tokens(labels, label_at, IGNORE_INDEX, target_len)
                else:
                    label_at = _copy_tokens(labels, label_at, tokens, bounds[message + 1], target_len)
                at = _copy_tokens(input_ids, at, tokens, bounds[message], source_len)
                at = _copy_tokens(input_ids, at, tokens, bounds[message + 1], target_len)
            if efficient_eos:
                input_ids[at] = eos
                labels[label_at] = eos

    return input_ids_arr, labels_arr, offsets_arr, label_offsets_arr


def gather_segments(text_ids, text_offsets, segment_texts, special_ids):
    """Every segment's tokens back to back, in segment order.

    ``text_ids`` (int32[T]) holds the tokens of every text, text ``x`` being
    ``text_ids[text_offsets[x]:text_offsets[x + 1]]`` (``text_offsets``: int64[X+1]).
    ``segment_texts`` (int64[S]) gives each segment's text, or -1 for a special token; the
    special tokens take ``special_ids`` (int32[K], K = the count of -1) in order.

    Returns ``(token_ids, segment_lengths)``: int32[N] and int64[S].
    """
    cdef const int32_t[::1] ids = _as_flat(text_ids, np.int32, "text_ids")
    offsets_arr = _as_flat(text_offsets, np.int64, "text_offsets")
    _check_bounds(offsets_arr, ids.shape[0], "text_offsets")
    segments_arr = _as_flat(segment_texts, np.int64, "segment_texts")
    cdef const int32_t[::1] specials = _as_flat(special_ids, np.int32, "special_ids")
    if segments_arr.shape[0] and (segments_arr.min() < -1 or segments_arr.max() >= offsets_arr.shape[0] - 1):
        raise ValueError(f"segment_texts must lie within [-1, {offsets_arr.shape[0] - 1})")
    if np.count_nonzero(segments_arr == -1) != specials.shape[0]:
        raise ValueError("special_ids must hold one id per segment_texts entry of -1")

    cdef const int64_t[::1] offsets = offsets_arr
    cdef const int64_t[::1] segments = segments_arr
    cdef Py_ssize_t n_segments = segments.shape[0]
    lengths_arr = np.empty(n_segments, dtype=np.int64)
    cdef int64_t[::1] lengths = lengths_arr
    cdef Py_ssize_t s
    cdef int64_t text, total = 0
    with nogil:
        for s in range(n_segments):
            text = segments[s]
            lengths[s] = 1 if text < 0 else offsets[text + 1] - offsets[text]
            total += lengths[s]

    out_arr = _pooled_int32(total)
    cdef int32_t[::1] out = out_arr
    cdef int64_t at = 0, special = 0
    with nogil:
        for s in range(n_segments):
            text = segments[s]
            if text < 0:
                out[at] = specials[special]
                special += 1
                at += 1
            else:
                at = _copy_tokens(out, at, ids, offsets[text], lengths[s])
    return out_arr, lengths_arr
