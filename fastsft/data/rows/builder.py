"""Rows in LLaMA-Factory's saved layout: Arrow columns, their types, record-batch chunks, packing.

Unpacked, every sample is a row. Packed, a strategy of ``fastsft.kernels.packing.STRATEGIES``
decides which samples share a row: per preprocessing batch, or over the whole dataset (samples
held in ``HeldSamples``). Every packed row has LLaMA-Factory's layout: padded to cutoff_len + 1
(its collator pads ``input_ids`` but not ``position_ids``, so its rows must share a length), its
media columns (so TRL refuses the rows raw instead of dropping their boundaries) and, with
neat_packing, its ``packing_params``; a strategy that ``mask_padding`` gives plain-packing padding
``attention_mask`` 0, so varlen collation drops it.

A packed row (``position_ids`` restart at every sequence; neat_packing numbers the sequences
in ``attention_mask``; ``P`` is padding)::

    input_ids       a a a a b b c c c P P
    position_ids    0 1 2 3 0 1 0 1 2 0 0
    attention_mask  1 1 1 1 2 2 3 3 3 0 0     (neat_packing; else all 1)
    labels          -100 .. per sample ..  -100 -100
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from fastsft import IGNORE_INDEX
from fastsft.data.accounting import Summary
from fastsft.data.rows.encoder import EncodedBatch
from fastsft.data.rows.spill import HeldSamples, SpilledSamples
from fastsft.kernels import STRATEGIES, Kernels, offsets_from_lengths
from fastsft.kernels.packing import BFD

__all__ = ["MEDIA_COLUMNS", "ROW_CHUNK_TOKENS", "RowBuilder", "empty_table"]

TOKEN_TYPE = pa.list_(pa.int64())
# How `datasets` stores LLaMA-Factory's output (its OptimizedTypedSequence narrows these two
# columns), measured on LLaMA-Factory 0.9.5 + datasets 4.0; neat-packing rows stay all int64.
NARROWED_TYPES = {"input_ids": pa.int32(), "attention_mask": pa.int8()}
ROW_CHUNK_TOKENS = 1 << 20  # packed rows go out in record batches of about this many tokens
NO_MEDIA = 2**32  # LLaMA-Factory's MAX_SU_SEQ_IDX placeholder for "no media in this row"
MEDIA_COLUMNS = ("images", "videos", "audios")


class RowBuilder:
    """Turns encoded batches into record batches of output rows, and counts what it emits."""

    def __init__(
        self,
        kernels: Kernels,
        summary: Summary,
        *,
        packing: bool,
        strategy: str,
        neat_packing: bool,
        cutoff_len: int,
        pad_token_id: int,
        spill_dir: str | None = None,
    ) -> None:
        self.kernels = kernels
        self.summary = summary
        self.strategy = STRATEGIES[strategy] if packing else None
        self.neat_packing = neat_packing
        self.cutoff_len = cutoff_len
        self.pad_token_id = pad_token_id
        if self.strategy is not None:  # LLaMA-Factory pads its rows to one token more
            summary.packing_capacity = cutoff_len + 1
        self._held = HeldSamples(spill_dir)
        # LLaMA-Factory's per-batch rows: the sample lengths, to say what whole-dataset BFD would give.
        self._packed_lengths: list[np.ndarray] | None = (
            [] if self.strategy is not None and self.strategy.per_batch else None
        )

    def add(self, batch: EncodedBatch) -> Iterator[pa.RecordBatch]:
        self.summary.examples_encoded += len(batch)
        self.summary.truncated += int((batch.lengths < batch.full_lengths).sum())
        if self.strategy is not None:
            batch = self._without_too_long(batch)
        if len(batch) == 0:  # a preprocessing batch without valid samples gives no rows, as in LLaMA-Factory
            return
        if self.strategy is None:
            yield self._unpacked(batch)
        elif self.strategy.per_batch:
            if self._packed_lengths is not None:
                self._packed_lengths.append(batch.lengths.copy())
            yield from self._packed(batch)
        else:
            self._held.add(batch)

    def finish(self) -> Iterator[pa.RecordBatch]:
        if len(self._held):
            yield from self._packed(self._held.gather())
        if self._packed_lengths:
            lengths = np.concatenate(self._packed_lengths)
            _, row_bounds = self.kernels.pack(BFD, lengths, self.cutoff_len)
            self.summary.best_fit_rows = len(row_bounds) - 1

    def close(self) -> None:
        """Drop the samples held for whole-dataset packing (and their spill folder)."""
        self._held.close()

    def _without_too_long(self, batch: EncodedBatch) -> EncodedBatch:
        """LLaMA-Factory drops (and logs) encoded samples longer than a packed row; we count them."""
        keep = batch.lengths <= self.cutoff_len
        if keep.all():
            return batch
        self.summary.too_long_dropped += int((~keep).sum())
        return batch.select(np.flatnonzero(keep))

    def _value_type(self, column: str) -> pa.DataType:
        """The Arrow value type LLaMA-Factory's saved output has for ``column``."""
        return pa.int64() if self.neat_packing else NARROWED_TYPES.get(column, pa.int64())

    def _column(self, values: np.ndarray, offsets: np.ndarray, name: str) -> pa.Array:
        return list_column(values, offsets, self._value_type(name))

    def _record(self, columns: dict[str, pa.Array], labels: np.ndarray, sample_tokens: int) -> pa.RecordBatch:
        self.summary.rows_out += len(columns["input_ids"])
        self.summary.tokens += sample_tokens
        # The tokens its rows span (``flatten`` would import pyarrow.compute).
        offsets = columns["input_ids"].offsets
        self.summary.padding_tokens += offsets[-1].as_py() - offsets[0].as_py() - sample_tokens
        self.summary.label_tokens += int((labels != IGNORE_INDEX).sum())
        return pa.RecordBatch.from_pydict(columns)

    def _unpacked(self, batch: EncodedBatch) -> pa.RecordBatch:
        ones = np.ones(len(batch.input_ids), dtype=np.int8)
        columns = {
            "input_ids": self._column(batch.input_ids, batch.offsets, "input_ids"),
            "attention_mask": self._column(ones, batch.offsets, "attention_mask"),
            "labels": self._column(batch.labels, batch.offsets, "labels"),
            **_media_columns(len(batch)),
        }
        return self._record(columns, batch.labels, len(batch.input_ids))

    def _packed(self, samples: EncodedBatch | SpilledSamples) -> Iterator[pa.RecordBatch]:
        """Packed rows, a record batch per chunk of about ``ROW_CHUNK_TOKENS`` tokens."""
        assert self.strategy is not None
        lengths = samples.lengths
        row_length = self.cutoff_len + 1
        order, row_bounds = self.kernels.pack(self.strategy, lengths, self.cutoff_len)
        for first, last in _row_chunks(lengths, order, row_bounds, row_length):
            chunk_bounds = row_bounds[first : last + 1] - row_bounds[first]
            yield self._packed_chunk(
                samples, order[row_bounds[first] : row_bounds[last]], chunk_bounds, row_length
            )

    def _packed_chunk(
        self,
        samples: EncodedBatch | SpilledSamples,
        order: np.ndarray,
        row_bounds: np.ndarray,
        row_length: int,
    ) -> pa.RecordBatch:
        """One record batch of packed rows (its buffers are freed before the next chunk is built)."""
        assert self.strategy is not None
        batch, batch_order = samples.for_rows(order)
        rows = self.kernels.materialize_rows(
            batch.input_ids,
            batch.labels,
            batch.offsets,
            batch_order,
            row_bounds,
            row_length,
            self.pad_token_id,
            self.neat_packing,
        )
        columns = {"input_ids": self._column(rows.input_ids, rows.row_offsets, "input_ids")}
        if self.neat_packing:
            columns["packing_params"] = _packing_params(rows.seq_lens, row_bounds, row_length)
        attention_mask = rows.attention_mask
        if self.strategy.mask_padding and not self.neat_packing:
            attention_mask = _padding_masked(attention_mask, rows.seq_lens, row_bounds, row_length)
        columns["attention_mask"] = self._column(attention_mask, rows.row_offsets, "attention_mask")
        columns["position_ids"] = self._column(rows.position_ids, rows.row_offsets, "position_ids")
        columns["labels"] = self._column(rows.labels, rows.row_offsets, "labels")
        columns.update(_media_columns(len(row_bounds) - 1))
        return self._record(columns, rows.labels, int(rows.seq_lens.sum()))


def list_column(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """An Arrow list column over flat values, without a per-row Python loop.

    ``values`` are wrapped without a copy and cast only when their dtype differs from ``value_type``.
    The list array is laid over the buffers directly (``ListArray.from_arrays`` imports
    ``pyarrow.compute``, 0.04-0.08 s of start-up) and validated.
    """
    offsets = np.ascontiguousarray(offsets, dtype=np.int32)
    column = pa.Array.from_buffers(
        pa.list_(value_type),
        len(offsets) - 1,
        [None, pa.py_buffer(offsets)],
        children=[arrow_array(values, value_type)],
    )
    column.validate()
    return column


def arrow_array(values: np.ndarray, value_type: pa.DataType | None = None) -> pa.Array:
    """A numeric numpy array as an Arrow array over the same memory, cast to ``value_type`` if given.

    ``pa.array`` would do the same but imports pandas on first use (0.8 s of ``fastsft preprocess``).
    Widening casts (int32 to int64) run in numpy, which spares importing ``pyarrow.compute``;
    narrowing ones go through Arrow's checked cast, which raises where numpy would wrap.
    """
    target = values.dtype if value_type is None else np.dtype(value_type.to_pandas_dtype())
    dtype = target if np.can_cast(values.dtype, target, casting="safe") else values.dtype
    values = np.ascontiguousarray(values, dtype=dtype)
    array = pa.Array.from_buffers(pa.from_numpy_dtype(dtype), len(values), [None, pa.py_buffer(values)])
    return array if dtype == target else array.cast(value_type)


def _row_chunks(
    lengths: np.ndarray, order: np.ndarray, row_bounds: np.ndarray, row_length: int
) -> Iterator[tuple[int, int]]:
    """``[first, last)`` row ranges of about ``ROW_CHUNK_TOKENS`` tokens each (at least one row)."""
    n_rows = len(row_bounds) - 1
    if row_length:
        row_tokens = np.full(n_rows, row_length, dtype=np.int64)
    else:  # rows are never empty
        row_tokens = np.add.reduceat(lengths[order], row_bounds[:-1])
    ends = np.cumsum(row_tokens)
    first = 0
    while first < n_rows:
        done = ends[first - 1] if first else 0
        last = max(int(np.searchsorted(ends, done + ROW_CHUNK_TOKENS, side="right")), first + 1)
        yield first, last
        first = last


def _padding_masked(
    attention_mask: np.ndarray, seq_lens: np.ndarray, row_bounds: np.ndarray, row_length: int
) -> np.ndarray:
    """``attention_mask`` of plain-packed rows with 0 on each row's padding (LLaMA-Factory's has 1 there)."""
    used = np.add.reduceat(seq_lens, row_bounds[:-1])  # rows are never empty
    position_in_row = np.tile(np.arange(row_length), len(used))
    masked = attention_mask.copy()
    masked[position_in_row >= np.repeat(used, row_length)] = 0
    return masked


def _media_columns(n: int) -> dict[str, pa.Array]:
    """LLaMA-Factory's empty image/video/audio columns, so the saved layout is the same."""
    return {name: pa.nulls(n) for name in MEDIA_COLUMNS}


def _packing_params(seq_lens: np.ndarray, row_bounds: np.ndarray, row_length: int) -> pa.Array:
    """LLaMA-Factory's neat-packing ``packing_params`` from the kernel's ``seq_lens``.

    Per row: ``sequence_boundaries`` ``[0, end of each sequence..., row_length]``, the media
    placeholders and ``right_padding_length``.
    """
    n_rows = len(row_bounds) - 1
    per_row = np.diff(row_bounds)
    ends = offsets_from_lengths(seq_lens)
    row_of_seq = np.repeat(np.arange(n_rows), per_row)
    list_offsets = offsets_from_lengths(per_row + 2)
    boundaries = np.empty(int(list_offsets[-1]), dtype=np.int64)
    inner = np.ones(len(boundaries), dtype=bool)
    inner[list_offsets[:-1]] = inner[list_offsets[1:] - 1] = False
    boundaries[list_offsets[:-1]] = 0
    boundaries[list_offsets[1:] - 1] = row_length
    boundaries[inner] = ends[1:] - ends[row_bounds[:-1]][row_of_seq]
    no_media = pa.ListArray.from_arrays(
        arrow_array(np.arange(n_rows + 1, dtype=np.int32)),
        arrow_array(np.full(n_rows, NO_MEDIA, dtype=np.int64)),
    )
    used = ends[row_bounds[1:]] - ends[row_bounds[:-1]]
    return pa.StructArray.from_arrays(
        [
            pa.ListArray.from_arrays(arrow_array(list_offsets.astype(np.int32)), arrow_array(boundaries)),
            no_media,
            no_media,
            no_media,
            arrow_array(row_length - used, pa.int64()),
        ],
        names=[
            "sequence_boundaries",
            "image_subseq_ids",
            "video_subseq_ids",
            "audio_subseq_ids",
            "right_padding_length",
        ],
    )


def empty_table(packing: bool) -> pa.Table:
    """The columns of a run that produced no rows."""
    names = (
        ["input_ids", "attention_mask", "position_ids", "labels"]
        if packing
        else ["input_ids", "attention_mask", "labels"]
    )
    empty = list_column(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64), TOKEN_TYPE.value_type)
    return pa.table({name: empty for name in names})
