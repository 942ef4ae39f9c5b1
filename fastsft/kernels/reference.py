"""The pure-Python kernels: the compiled kernels' contracts, on the readable references.

Each function has the compiled kernel's flat-buffer signature and returns the same named tuple
with the same dtypes (``fastsft.kernels.types``); it converts the buffers to lists, calls the
line-for-line port of LLaMA-Factory (``fastsft.kernels.supervised`` / ``fastsft.kernels.packing``) and
converts back. The parity tests swap this module for ``fastsft.kernels.compiled`` and nothing
else.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from fastsft import IGNORE_INDEX
from fastsft.kernels.packing import BFD, LLAMAFACTORY, PackingStrategy, rows_from_order
from fastsft.kernels.supervised import encode_pairs, pairs
from fastsft.kernels.types import (
    SCAN_CLOSED,
    SCAN_INVALID,
    SCAN_MORE,
    SLOT_ROLES,
    ArrayScan,
    Packing,
    RenderPlan,
    Rows,
    SegmentBatch,
    Segments,
    Supervised,
    Varlen,
    offsets_from_lengths,
)

__all__ = [
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


def _int32(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32).reshape(-1)


def gather_segments(text_ids: Any, text_offsets: Any, segment_texts: Any, special_ids: Any) -> Segments:
    """Every segment's tokens back to back, in segment order (NumPy: not LLaMA-Factory logic, so
    there is no line-by-line port to call).

    ``text_ids`` (int32[T]) holds the tokens of every text, text ``x`` being
    ``text_ids[text_offsets[x]:text_offsets[x+1]]`` (``text_offsets``: int64[X+1]).
    ``segment_texts`` (int64[S]) gives each segment's text, or -1 for a special token; the
    special tokens take ``special_ids`` (int32[K], K = the count of -1) in order.
    """
    text_ids = np.asarray(text_ids, dtype=np.int32).reshape(-1)
    text_offsets = np.asarray(text_offsets, dtype=np.int64).reshape(-1)
    segment_texts = np.asarray(segment_texts, dtype=np.int64).reshape(-1)
    special_ids = np.asarray(special_ids, dtype=np.int32).reshape(-1)
    n_texts = len(text_offsets) - 1
    if (
        n_texts < 0
        or text_offsets[0] < 0
        or text_offsets[-1] > len(text_ids)
        or (np.diff(text_offsets) < 0).any()
    ):
        raise ValueError(f"text_offsets must be non-decreasing and lie within [0, {len(text_ids)}]")
    if len(segment_texts) and (segment_texts.min() < -1 or segment_texts.max() >= n_texts):
        raise ValueError(f"segment_texts must lie within [-1, {n_texts})")
    is_text = segment_texts >= 0
    if np.count_nonzero(~is_text) != len(special_ids):
        raise ValueError("special_ids must hold one id per segment_texts entry of -1")
    text_index = segment_texts[is_text]
    lengths = np.ones(len(segment_texts), dtype=np.int64)
    lengths[is_text] = text_offsets[text_index + 1] - text_offsets[text_index]
    # Source = text tokens followed by the special ids; each segment reads a contiguous run of it.
    source = np.concatenate([text_ids, special_ids])
    starts = np.empty(len(segment_texts), dtype=np.int64)
    starts[is_text] = text_offsets[text_index]
    starts[~is_text] = len(text_ids) + np.arange(len(special_ids), dtype=np.int64)
    out_starts = offsets_from_lengths(lengths)[:-1]
    positions = np.repeat(starts - out_starts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return Segments(source[positions], lengths)


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
    """``input_ids``/``labels`` of a batch of samples, each exactly as ``encode_pairs`` builds it.

    ``token_ids`` (int32[N]) holds every message's tokens back to back; message ``m`` is
    ``token_ids[message_bounds[m]:message_bounds[m+1]]`` (``message_bounds``: int64[M+1]); sample
    ``s`` owns messages ``sample_bounds[s] .. sample_bounds[s+1]`` (int64[n+1]), an even count
    of (prompt, response) pairs.
    """
    if efficient_eos and eos_token_id is None:
        raise ValueError("efficient_eos needs an eos_token_id")
    tokens = np.asarray(token_ids).tolist()
    bounds = np.asarray(message_bounds).tolist()
    input_ids: list[int] = []
    labels: list[int] = []
    lengths, label_lengths = [], []
    for first, last in itertools.pairwise(np.asarray(sample_bounds).tolist()):
        messages = [tokens[bounds[m] : bounds[m + 1]] for m in range(first, last)]
        ids, labs = encode_pairs(
            pairs(messages),
            cutoff_len=cutoff_len,
            train_on_prompt=train_on_prompt,
            mask_history=mask_history,
            efficient_eos=efficient_eos,
            eos_token_id=eos_token_id,
        )
        input_ids += ids
        labels += labs
        lengths.append(len(ids))
        label_lengths.append(len(labs))
    return Supervised(
        _int32(input_ids),
        _int32(labels),
        offsets_from_lengths(np.asarray(lengths, dtype=np.int64)),
        offsets_from_lengths(np.asarray(label_lengths, dtype=np.int64)),
    )


def _packing(order: list[int], row_bounds: list[int]) -> Packing:
    return Packing(np.asarray(order, dtype=np.int64), np.asarray(row_bounds, dtype=np.int64))


def pack(strategy: PackingStrategy, lengths: Any, capacity: int) -> Packing:
    """``strategy``'s rows over ``lengths`` (int64[n]) of at most ``capacity`` tokens, by its reference packer."""
    return _packing(*strategy.reference(np.asarray(lengths).tolist(), capacity))


def knapsack_llamafactory(lengths: Any, capacity: int) -> Packing:
    """LLaMA-Factory 0.9.5's ``greedy_knapsack`` rows over ``lengths`` (int64[n]); see ``llamafactory_order``."""
    return pack(LLAMAFACTORY, lengths, capacity)


def pack_bfd(lengths: Any, capacity: int) -> Packing:
    """Best-fit-decreasing rows of at most ``capacity`` tokens over ``lengths`` (int64[n])."""
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
    """Samples (int32 buffers, int64[n+1] ``offsets``) copied into the rows ``order``/``row_bounds`` name.

    See ``rows_from_order``: positions restart per sample; mask 1, or the 1-based sample index
    with ``neat_packing``; ``row_length > 0`` pads every row to it, ``0`` leaves rows unpadded.
    """
    bounds = np.asarray(offsets).tolist()
    if len(labels) != len(input_ids):
        raise ValueError("labels and input_ids must have the same length")
    ids, labs = np.asarray(input_ids).tolist(), np.asarray(labels).tolist()
    order_list = np.asarray(order).tolist()
    row_bounds_list = np.asarray(row_bounds).tolist()
    rows = rows_from_order(
        [ids[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)],
        [labs[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)],
        order_list,
        row_bounds_list,
        neat_packing=neat_packing,
        row_length=row_length,
        pad_token_id=pad_token_id,
    )
    if row_length and any(len(row) > row_length for row in rows.get("input_ids", [])):
        raise ValueError(f"a row is longer than row_length {row_length}")

    def flat(name: str) -> np.ndarray:
        return _int32([t for row in rows.get(name, []) for t in row])

    row_lengths = np.asarray([len(row) for row in rows.get("input_ids", [])], dtype=np.int64)
    seq_lens = np.asarray([bounds[i + 1] - bounds[i] for i in order_list], dtype=np.int64)
    return Rows(
        flat("input_ids"),
        flat("labels"),
        flat("attention_mask"),
        flat("position_ids"),
        offsets_from_lengths(row_lengths),
        seq_lens,
    )


def varlen_flatten(
    rows_input_ids: list[np.ndarray],
    rows_labels: list[np.ndarray],
    rows_position_ids: list[np.ndarray] | None = None,
) -> Varlen:
    """Rows flattened into one padding-free stream of sequences.

    A row holds one sequence, or several when its position ids restart at 0. Sequences are
    concatenated; each one's first label becomes -100 so no token learns to predict the start
    of the next sequence; position ids are kept when given, else count from 0 per row.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    cu_seqlens = [0]
    for row, row_ids in enumerate(rows_input_ids):
        ids = np.asarray(row_ids).tolist()
        row_labels = np.asarray(rows_labels[row]).tolist()
        positions = np.asarray(rows_position_ids[row]).tolist() if rows_position_ids is not None else None
        starts = [t for t in range(len(ids)) if t == 0 or (positions is not None and positions[t] == 0)]
        for start, end in zip(starts, [*starts[1:], len(ids)]):
            input_ids += ids[start:end]
            labels += [IGNORE_INDEX, *row_labels[start + 1 : end]]
            position_ids += positions[start:end] if positions is not None else range(end - start)
            cu_seqlens.append(cu_seqlens[-1] + end - start)
    max_seqlen = max((end - start for start, end in itertools.pairwise(cu_seqlens)), default=0)
    return Varlen(
        np.asarray(input_ids, dtype=np.int64),
        np.asarray(labels, dtype=np.int64),
        np.asarray(position_ids, dtype=np.int64),
        np.asarray(cu_seqlens, dtype=np.int32),
        int(max_seqlen),
    )


# scan_json_array's states after SCAN_OPEN (before '['): after '[', after ',', after an element.
_FIRST, _ELEMENT, _SEPARATOR = 1, 2, 3
_JSON_SPACE = b" \t\n\r"


def _object_end(buf: bytes, i: int) -> int:
    """End (exclusive) of the object starting at ``buf[i] == ord("{")``, or -1 when ``buf`` ends first.

    Counts ``{[`` against ``}]`` outside strings, skipping the byte after each backslash inside
    them; whether the object is valid JSON is left to the parser it goes to.
    """
    depth = 0
    n = len(buf)
    while i < n:
        c = buf[i : i + 1]
        if c == b'"':
            i += 1
            while i < n and buf[i : i + 1] != b'"':
                i += 2 if buf[i : i + 1] == b"\\" else 1
            if i >= n:
                return -1
        elif c in (b"{", b"["):
            depth += 1
        elif c in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def scan_json_array(buf: Any, pos: int, state: int) -> ArrayScan:
    """The complete elements of a JSON array found in ``buf`` from ``pos``, in scanner ``state``
    (``SCAN_OPEN`` at the start of a file, else the ``state`` a previous scan returned).

    Elements must be objects: ``spans`` holds each one's ``(start, end)`` byte range, not yet checked
    by a parser. ``status`` says why the scan stopped: ``SCAN_MORE`` (the buffer ended; append
    bytes after ``buf[pos:]`` and scan again from there in ``state``: ``pos`` is an incomplete
    element's start, or the end), ``SCAN_CLOSED`` (the closing ``]`` ends just before ``pos``) or
    ``SCAN_INVALID`` (``buf[pos]`` is not JSON whitespace or what the grammar allows there:
    ``[``, an object, ``,`` or ``]``). The streaming JSON array reader is built on it.
    """
    buf = bytes(buf)
    if not 0 <= pos <= len(buf) or not 0 <= state <= _SEPARATOR:
        raise ValueError(f"scan_json_array: pos {pos} or state {state} out of range")
    spans: list[tuple[int, int]] = []
    i = pos
    while i < len(buf):
        c = buf[i : i + 1]
        if c in _JSON_SPACE:
            i += 1
        elif state == 0:
            if c != b"[":
                return ArrayScan(spans, i, state, SCAN_INVALID)
            state, i = _FIRST, i + 1
        elif state == _SEPARATOR:
            if c == b",":
                state, i = _ELEMENT, i + 1
            elif c == b"]":
                return ArrayScan(spans, i + 1, state, SCAN_CLOSED)
            else:
                return ArrayScan(spans, i, state, SCAN_INVALID)
        elif c == b"{":
            end = _object_end(buf, i)
            if end < 0:
                break
            spans.append((i, end))
            state, i = _SEPARATOR, end
        elif c == b"]" and state == _FIRST:
            return ArrayScan(spans, i + 1, state, SCAN_CLOSED)
        else:
            return ArrayScan(spans, i, state, SCAN_INVALID)
    return ArrayScan(spans, i, state, SCAN_MORE)


_USER = SLOT_ROLES.index("user")


def render_row(row: Any, plan: RenderPlan, out: SegmentBatch) -> bool:
    """Append ``row``'s segments to ``out`` and return True, or append nothing and return False.

    The result equals ``convert(row, attr)`` then ``Template.render`` (laid out by
    ``SegmentBatch.add``) for every row it takes; it takes a ShareGPT row only when that path
    would give a conversation without tools whose every role and the system text have plain
    slots in ``plan``, and leaves every other row (anything dropped, malformed, with tools or
    media, of a type it does not expect) to that path, which says why.
    """
    if row.__class__ is not dict:
        return False
    messages = row.get(plan.messages)
    if messages.__class__ is not list:
        return False
    offset, system = 0, None
    if plan.system_tag is not None and messages:
        first = messages[0]
        if first.__class__ is not dict or plan.role_tag not in first:
            return False
        if first[plan.role_tag] == plan.system_tag:
            if plan.content_tag not in first:
                return False
            offset, system = 1, first[plan.content_tag]
    if offset == 0 and plan.system_column is not None:
        system = row.get(plan.system_column)
    count = len(messages) - offset
    if count == 0 or count % 2:
        return False
    if plan.kto_tag is not None and row.get(plan.kto_tag).__class__ is bool:
        return False
    if any(row.get(column) for column in plan.media_columns):
        return False
    if plan.tools_column is not None and row.get(plan.tools_column):
        return False
    if not system:
        system = plan.default_system
    elif system.__class__ is not str:
        return False
    if system and plan.system_parts is None:
        return False

    sizes = (len(out.texts), len(out.segment_texts), len(out.special_ids), len(out.message_segments))
    for turn in range(count):
        message = messages[offset + turn]
        if message.__class__ is not dict:
            break
        role = message.get(plan.role_tag)
        content = message.get(plan.content_tag)
        if role.__class__ is not str or content.__class__ is not str:
            break
        code = (plan.response_roles if turn % 2 else plan.prompt_roles).get(role)
        if code is None:
            break
        parts = plan.role_parts[code]
        if parts is None:
            break
        before = len(out.segment_texts)
        if turn == 0:
            _emit(plan.prefix, "", None, out)
            if system:
                assert plan.system_parts is not None
                _emit(plan.system_parts, system, None, out)
        _emit(parts, content, str(turn // 2) if code == _USER else None, out)
        out.message_segments.append(len(out.segment_texts) - before)
    else:
        out.sample_messages.append(count)
        return True
    texts, segment_texts, special_ids, message_segments = sizes
    del out.texts[texts:], out.segment_texts[segment_texts:], out.special_ids[special_ids:]
    del out.message_segments[message_segments:]
    return False


def _emit(parts: tuple[Any, ...], content: str, idx: str | None, out: SegmentBatch) -> None:
    """``parts`` with ``{{content}}`` (then ``{{idx}}``) filled, as ``_CompiledSlots.segments``; empty text is left out."""
    for part in parts:
        if part.__class__ is tuple:
            text = part[0].replace("{{content}}", content, 1)
            if idx is not None:
                text = text.replace("{{idx}}", idx, 1)
            if not text:
                continue
            part = text
        if part.__class__ is str:
            out.segment_texts.append(len(out.texts))
            out.texts.append(part)
        else:
            out.segment_texts.append(-1)
            out.special_ids.append(part)
