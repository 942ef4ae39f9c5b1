"""The SFT data pipeline: datasets → conversations → token ids → (packed) rows → ``datasets.Dataset``.

Rows stream through in preprocessing batches of ``preprocessing_batch_size`` raw samples, the
same batches LLaMA-Factory's ``dataset.map(batched=True)`` sees, so its per-batch packing is
reproduced exactly. Each batch is encoded by the pure-Python reference path or by the compiled
path (one batched tokenizer call + one kernel call), then turned into Arrow columns.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import time
import types
import typing
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from fastsft import IGNORE_INDEX
from fastsft.backend import Backend, resolve_backend
from fastsft.data import encode as encode_mod
from fastsft.data import packing as packing_mod
from fastsft.data.formats import Conversation, Dropped, convert
from fastsft.data.registry import DatasetAttr, iter_rows, resolve_datasets
from fastsft.data.templates import SpecialTokens, Template, fix_tokenizer, get_template
from fastsft.errors import ConfigError, DataError, FastSFTError, describe_type

if TYPE_CHECKING:
    from multiprocessing.pool import AsyncResult

# LLaMA-Factory labels an empty later-turn prompt with one eos under efficient_eos, which makes
# `labels` longer than `input_ids`; no collator can use such a sample, so it is reported instead.
LABELS_LONGER_THAN_INPUTS = (
    "labels would be longer than input_ids (LLaMA-Factory's efficient_eos quirk on an empty prompt)"
)
PackingStrategy = Literal["llamafactory", "bfd"]

TOKEN_TYPE = pa.list_(pa.int64())
# How `datasets` stores LLaMA-Factory's output (its OptimizedTypedSequence narrows these two
# columns), measured on LLaMA-Factory 0.9.5 + datasets 4.0; neat-packing rows stay all int64.
NARROWED_TYPES = {"input_ids": pa.int32(), "attention_mask": pa.int8()}


@dataclass
class DataArgs:
    """Data options, named as in LLaMA-Factory's ``DataArguments`` where one exists."""

    dataset: str | list[str]
    dataset_dir: str = "data"
    template: str | None = None
    cutoff_len: int = 2048
    train_on_prompt: bool = False
    mask_history: bool = False
    packing: bool | None = None
    neat_packing: bool = False
    tool_format: str | None = None
    default_system: str | None = None
    enable_thinking: bool | None = True
    preserve_thinking: bool = False
    max_samples: int | None = None
    preprocessing_batch_size: int = 1000
    # fastsft's own options
    packing_strategy: PackingStrategy = "llamafactory"
    backend: Backend | None = None
    tokenizer_backend: str | None = None  # auto | hf | fast; None reads $FASTSFT_TOKENIZER
    strict: bool = False
    skip_malformed: bool = False

    def __post_init__(self) -> None:
        for name, hint in typing.get_type_hints(DataArgs).items():
            value = getattr(self, name)
            if not _has_type(value, hint):  # a YAML config can hold anything
                raise ConfigError(f"`{name}` must be {describe_type(hint)}, got {value!r}")
        if self.template is None:
            raise ConfigError("`template` is required (e.g. template: qwen)")
        if self.mask_history and self.train_on_prompt:
            raise ConfigError("`mask_history` is incompatible with `train_on_prompt` (as in LLaMA-Factory)")
        if self.cutoff_len < 1:
            raise ConfigError(f"`cutoff_len` must be at least 1, got {self.cutoff_len}")
        if self.preprocessing_batch_size < 1:
            raise ConfigError("`preprocessing_batch_size` must be at least 1")
        if self.neat_packing:
            self.packing = True
        self.backend = resolve_backend(self.backend)

    @property
    def effective_cutoff_len(self) -> int:
        """LLaMA-Factory lowers ``cutoff_len`` by one when packing; rows are then ``cutoff_len`` long."""
        return self.cutoff_len - 1 if self.packing else self.cutoff_len


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the option type ``hint`` (scalars, ``Literal``, ``list``, unions)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, typing.get_args(hint)[0]) for v in value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass
class SampleRef:
    dataset: str
    index: int
    position: int  # among the samples of all datasets, to tell which came first

    def __str__(self) -> str:
        return f"dataset {self.dataset}, sample #{self.index}"


@dataclass
class Summary:
    """What a pipeline run did; printed by ``fastsft preprocess``."""

    examples_in: int = 0
    examples_encoded: int = 0
    rows_out: int = 0
    dropped: int = 0
    first_dropped: str | None = None
    malformed_skipped: int = 0
    first_malformed: str | None = None
    first_malformed_position: int | None = field(default=None, repr=False)
    too_long_dropped: int = 0
    truncated: int = 0
    tokens: int = 0
    label_tokens: int = 0
    padding_tokens: int = 0
    packing_capacity: int = 0  # tokens a packed row may hold; 0 when not packing
    seconds: float = 0.0
    backend: str = ""
    tokenizer_backend: str = ""
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def record_drop(self, ref: SampleRef, reason: str) -> None:
        self.dropped += 1
        key = reason.split(":")[0]
        self.drop_reasons[key] = self.drop_reasons.get(key, 0) + 1
        if self.first_dropped is None:
            self.first_dropped = f"{ref}: {reason}"

    def handle_malformed(self, error: DataError, ref: SampleRef, skip: bool) -> None:
        """Raise a malformed-sample error located at ``ref``, or count it when the user asked to skip such samples."""
        located = error.located(dataset=ref.dataset, index=ref.index)
        if not skip:
            raise located
        self.malformed_skipped += 1
        self._note_malformed(str(located), ref.position)

    def merge_malformed(self, part: Summary) -> None:
        """Add a worker's malformed samples; the first is the earliest sample, whichever process met it."""
        self.malformed_skipped += part.malformed_skipped
        if part.first_malformed is not None and part.first_malformed_position is not None:
            self._note_malformed(part.first_malformed, part.first_malformed_position)

    def _note_malformed(self, message: str, position: int) -> None:
        if self.first_malformed_position is None or position < self.first_malformed_position:
            self.first_malformed, self.first_malformed_position = message, position

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        rate = self.examples_in / self.seconds if self.seconds else float("inf")
        token_rate = self.tokens / self.seconds if self.seconds else float("inf")
        out = [
            f"examples in: {self.examples_in}  encoded: {self.examples_encoded}  rows out: {self.rows_out}",
            f"dropped: {self.dropped}" + (f" (first: {self.first_dropped})" if self.first_dropped else ""),
        ]
        if self.malformed_skipped:
            out.append(f"malformed, skipped: {self.malformed_skipped} (first: {self.first_malformed})")
        if self.too_long_dropped:
            out.append(f"longer than a packed row, dropped: {self.too_long_dropped}")
        out += [
            f"truncated to cutoff_len: {self.truncated}",
            f"tokens: {self.tokens}  label tokens: {self.label_tokens}  padding tokens: {self.padding_tokens}",
        ]
        if self.packing_capacity and self.rows_out:
            fill = self.tokens / (self.rows_out * self.packing_capacity)
            out.append(f"packed rows: {self.rows_out} of {self.packing_capacity} tokens, {fill:.1%} filled")
        out += [
            f"time: {self.seconds:.2f} s  {rate:,.0f} examples/s  {token_rate:,.0f} tokens/s"
            f"  (encode: {self.backend}, tokenizer: {self.tokenizer_backend})",
        ]
        return out


@dataclass
class EncodedBatch:
    """Flat encoded samples of one preprocessing batch (sample ``i`` is ``[offsets[i], offsets[i+1])``)."""

    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    full_lengths: np.ndarray  # untruncated lengths, to count truncation

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def for_rows(self, samples: np.ndarray) -> tuple[EncodedBatch, np.ndarray]:
        """The batch packed rows read ``samples`` from, and their indices in it: this one, as given."""
        return self, samples

    @classmethod
    def from_lists(cls, pairs: list[tuple[list[int], list[int]]], full_lengths: list[int]) -> EncodedBatch:
        lengths = np.fromiter((len(ids) for ids, _ in pairs), dtype=np.int64, count=len(pairs))
        offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        input_ids = np.fromiter((t for ids, _ in pairs for t in ids), dtype=np.int32, count=int(offsets[-1]))
        labels = np.fromiter((t for _, lab in pairs for t in lab), dtype=np.int32)
        return cls(input_ids, labels, offsets, np.asarray(full_lengths, dtype=np.int64))


class Encoder:
    """Turns conversations into ``input_ids``/``labels`` with one template, tokenizer and option set."""

    def __init__(self, args: DataArgs, tokenizer: Any, tokenizer_backend: Any = None) -> None:
        self.args = args
        self.tokenizer = tokenizer
        self.template: Template = get_template(
            args.template,
            tool_format=args.tool_format,
            default_system=args.default_system,
            enable_thinking=args.enable_thinking,
            preserve_thinking=args.preserve_thinking,
            train_on_prompt=args.train_on_prompt,
        )
        fix_tokenizer(self.template, tokenizer)
        self.specials = SpecialTokens.from_tokenizer(tokenizer)
        self.discarding_history_cot = args.mask_history and not self.template.preserve_thinking
        self.cutoff_len = args.effective_cutoff_len
        self.tokenizer_backend = tokenizer_backend
        if args.backend == "compiled" and tokenizer_backend is None:
            from fastsft.tokenization import load_backend

            self.tokenizer_backend = load_backend(tokenizer, args.tokenizer_backend)

    @property
    def tokenizer_backend_name(self) -> str:
        return self.tokenizer_backend.name if self.tokenizer_backend is not None else "hf (per string)"

    def render(self, conv: Conversation) -> list[list[int | str]]:
        return self.template.render(
            conv.messages,
            conv.system,
            conv.tools,
            self.specials,
            discarding_history_cot=self.discarding_history_cot,
        )

    def encode_one(self, conv: Conversation, trace: list | None = None) -> tuple[list[int], list[int], int]:
        """Reference path for one conversation: (input_ids, labels, untruncated length)."""
        messages = self.template.encode_messages(
            self.tokenizer,
            conv.messages,
            conv.system,
            conv.tools,
            discarding_history_cot=self.discarding_history_cot,
            specials=self.specials,
        )
        pairs = [(messages[i], messages[i + 1]) for i in range(0, len(messages), 2)]
        input_ids, labels = encode_mod.encode_pairs(
            pairs,
            cutoff_len=self.cutoff_len,
            train_on_prompt=self.args.train_on_prompt,
            mask_history=self.args.mask_history,
            efficient_eos=self.template.efficient_eos,
            eos_token_id=self.tokenizer.eos_token_id,
            trace=trace,
        )
        full = sum(len(m) for m in messages) + (1 if self.template.efficient_eos else 0)
        return input_ids, labels, full

    def encode(self, convs: list[Conversation], refs: list[SampleRef], summary: Summary) -> EncodedBatch:
        """Encode a batch; a sample the template rejects is raised, or counted and skipped."""
        if self.args.backend == "python":
            results = []
            for conv, ref in zip(convs, refs):
                try:
                    input_ids, labels, full = self.encode_one(conv)
                    if len(labels) != len(input_ids):
                        raise DataError(LABELS_LONGER_THAN_INPUTS)
                    results.append((input_ids, labels, full))
                except DataError as err:
                    summary.handle_malformed(in_dataset_terms(err, conv), ref, self.args.skip_malformed)
            return EncodedBatch.from_lists(
                [(ids, lab) for ids, lab, _ in results], [f for _, _, f in results]
            )

        rendered, kept = [], []
        for conv, ref in zip(convs, refs):
            try:
                rendered.append(self.render(conv))
                kept.append(ref)
            except DataError as err:
                summary.handle_malformed(in_dataset_terms(err, conv), ref, self.args.skip_malformed)
        encoded, label_offsets = self._encode_rendered(rendered)
        mismatched = np.flatnonzero(label_offsets != encoded.offsets)
        if len(mismatched) == 0:
            return encoded
        bad = set(np.flatnonzero(np.diff(label_offsets) != np.diff(encoded.offsets)).tolist())
        for index in sorted(bad):
            summary.handle_malformed(
                DataError(LABELS_LONGER_THAN_INPUTS), kept[index], self.args.skip_malformed
            )
        return self._encode_rendered([r for i, r in enumerate(rendered) if i not in bad])[0]

    def _encode_rendered(
        self, rendered_batch: list[list[list[int | str]]]
    ) -> tuple[EncodedBatch, np.ndarray]:
        """Compiled path: one batched tokenizer call, then one kernel call for the whole batch."""
        from fastsft import _kernels

        texts: list[str] = []
        seg_text_index: list[int] = []  # index into texts, or -1 for a special id
        special_ids: list[int] = []
        message_seg_counts: list[int] = []
        sample_message_counts: list[int] = []
        for rendered in rendered_batch:
            sample_message_counts.append(len(rendered))
            for segments in rendered:
                message_seg_counts.append(len(segments))
                for seg in segments:
                    if isinstance(seg, str):
                        seg_text_index.append(len(texts))
                        texts.append(seg)
                    else:
                        seg_text_index.append(-1)
                        special_ids.append(seg)

        text_ids, text_offsets = self.tokenizer_backend.encode_batch_flat(texts)
        token_ids, seg_lengths = _gather_segments(
            text_ids,
            text_offsets,
            np.asarray(seg_text_index, dtype=np.int64),
            np.asarray(special_ids, np.int32),
        )
        seg_cum = _cumsum0(seg_lengths)
        message_bounds = seg_cum[_cumsum0(np.asarray(message_seg_counts, dtype=np.int64))]
        sample_bounds = _cumsum0(np.asarray(sample_message_counts, dtype=np.int64))
        input_ids, labels, offsets, label_offsets = _kernels.assemble_supervised(
            token_ids,
            message_bounds,
            sample_bounds,
            self.cutoff_len,
            self.args.train_on_prompt,
            self.args.mask_history,
            self.template.efficient_eos,
            -1 if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id,
        )
        full_lengths = np.diff(message_bounds[sample_bounds]) + (1 if self.template.efficient_eos else 0)
        return EncodedBatch(input_ids, labels, offsets, full_lengths), label_offsets


_TEMPLATE_FIELD = re.compile(r"^messages\[(\d+)\]\.content")


def in_dataset_terms(err: DataError, conv: Conversation) -> DataError:
    """A template error with its field named as in the dataset row.

    Templates see unified messages (``messages[i].content``); the converter recorded where each
    message's content came from (e.g. ``conversations[3].value``).
    """
    match = _TEMPLATE_FIELD.match(err.field or "")
    if not match or int(match.group(1)) >= len(conv.fields):
        return err
    field = conv.fields[int(match.group(1))] + err.field[match.end() :]
    return DataError(err.reason, dataset=err.dataset, index=err.index, field=field, line=err.line)


def _cumsum0(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


def _gather_segments(
    text_ids: np.ndarray, text_offsets: np.ndarray, seg_text_index: np.ndarray, special_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lay out every segment's tokens in order: tokenized text or a single special id."""
    is_text = seg_text_index >= 0
    text_idx = seg_text_index[is_text]
    seg_lengths = np.ones(len(seg_text_index), dtype=np.int64)
    seg_lengths[is_text] = text_offsets[text_idx + 1] - text_offsets[text_idx]
    # Source = text tokens followed by the special ids; each segment reads a contiguous run of it.
    source = np.concatenate([text_ids.astype(np.int32, copy=False), special_ids])
    seg_starts = np.empty(len(seg_text_index), dtype=np.int64)
    seg_starts[is_text] = text_offsets[text_idx]
    seg_starts[~is_text] = len(text_ids) + np.arange(int((~is_text).sum()), dtype=np.int64)
    out_starts = _cumsum0(seg_lengths)[:-1]
    positions = np.repeat(seg_starts - out_starts, seg_lengths) + np.arange(
        int(seg_lengths.sum()), dtype=np.int64
    )
    return source[positions], seg_lengths


def iter_samples(
    attrs: list[DatasetAttr], args: DataArgs
) -> Iterator[tuple[DatasetAttr, SampleRef, dict[str, Any]]]:
    """Raw rows of every dataset in order, each with where it came from."""
    positions = itertools.count()
    for attr in attrs:
        for index, row in enumerate(iter_rows(attr, args.dataset_dir, max_samples=args.max_samples)):
            yield attr, SampleRef(attr.name, index, next(positions)), row


def iter_batches(
    args: DataArgs, attrs: list[DatasetAttr], summary: Summary
) -> Iterator[tuple[list[Conversation], list[SampleRef]]]:
    """Preprocessing batches of valid conversations; invalid rows are counted (or raised)."""
    convs: list[Conversation] = []
    refs: list[SampleRef] = []
    raw_in_batch = 0
    for attr, ref, row in iter_samples(attrs, args):
        summary.examples_in += 1
        raw_in_batch += 1
        try:
            result = convert(row, attr)
        except DataError as err:
            summary.handle_malformed(err, ref, args.skip_malformed)
            result = None
        if isinstance(result, Dropped):
            if args.strict:
                raise DataError(result.reason, dataset=ref.dataset, index=ref.index)
            summary.record_drop(ref, result.reason)
        elif result is not None:
            convs.append(result)
            refs.append(ref)
        if raw_in_batch == args.preprocessing_batch_size:
            yield convs, refs
            convs, refs, raw_in_batch = [], [], 0
    if raw_in_batch:
        yield convs, refs


def _list_column(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """An Arrow list column over flat values, without a per-row Python loop.

    ``values`` are wrapped without a copy and cast only when their dtype differs from ``value_type``.
    """
    flat = pa.array(values)
    if flat.type != value_type:
        flat = flat.cast(value_type)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)


class RowBuilder:
    """Turns encoded batches into output rows: unpacked, LLaMA-Factory-packed per batch, or BFD over all."""

    def __init__(
        self, args: DataArgs, pad_token_id: int, summary: Summary, spill_dir: str | None = None
    ) -> None:
        self.args = args
        self.pad_token_id = pad_token_id
        self.summary = summary
        self.cutoff_len = args.effective_cutoff_len
        if args.packing:  # LLaMA-Factory pads its rows to one token more
            summary.packing_capacity = self.cutoff_len + (args.packing_strategy == "llamafactory")
        self._held = HeldSamples(spill_dir)  # BFD packs the whole dataset at the end

    def add(self, batch: EncodedBatch) -> Iterator[pa.RecordBatch]:
        self._count(batch)
        if self.args.packing:
            batch = self._without_too_long(batch)
        if len(batch) == 0:  # a preprocessing batch without valid samples gives no rows, as in LLaMA-Factory
            return
        if not self.args.packing:
            yield self._unpacked(batch)
        elif self.args.packing_strategy == "llamafactory":
            yield from self._packed(batch, "llamafactory")
        else:
            self._held.add(batch)

    def finish(self) -> Iterator[pa.RecordBatch]:
        if len(self._held):
            yield from self._packed(self._held.gather(), "bfd")

    def close(self) -> None:
        """Drop the samples held for BFD packing (and their spill folder); ``build_dataset`` always calls it."""
        self._held.close()

    def _count(self, batch: EncodedBatch) -> None:
        lengths = np.diff(batch.offsets)
        self.summary.examples_encoded += len(batch)
        self.summary.truncated += int((lengths < batch.full_lengths).sum())

    def _without_too_long(self, batch: EncodedBatch) -> EncodedBatch:
        """LLaMA-Factory drops (and logs) encoded samples longer than a packed row; we count them."""
        lengths = np.diff(batch.offsets)
        keep = lengths <= self.cutoff_len
        if keep.all():
            return batch
        self.summary.too_long_dropped += int((~keep).sum())
        return _select(batch, np.flatnonzero(keep))

    def _record(
        self, columns: dict[str, pa.Array], label_values: np.ndarray, sample_tokens: int
    ) -> pa.RecordBatch:
        row_tokens = len(columns["input_ids"].flatten())
        self.summary.rows_out += len(columns["input_ids"])
        self.summary.tokens += sample_tokens
        self.summary.padding_tokens += row_tokens - sample_tokens
        self.summary.label_tokens += int((label_values != IGNORE_INDEX).sum())
        return pa.RecordBatch.from_pydict(columns)

    def _value_type(self, column: str) -> pa.DataType:
        """The Arrow value type LLaMA-Factory's saved output has for ``column``."""
        return pa.int64() if self.args.neat_packing else NARROWED_TYPES.get(column, pa.int64())

    def _unpacked(self, batch: EncodedBatch) -> pa.RecordBatch:
        ones = np.ones(len(batch.input_ids), dtype=np.int8)
        columns = {
            "input_ids": _list_column(batch.input_ids, batch.offsets, self._value_type("input_ids")),
            "attention_mask": _list_column(ones, batch.offsets, self._value_type("attention_mask")),
            "labels": _list_column(batch.labels, batch.offsets, self._value_type("labels")),
            **_media_columns(len(batch)),
        }
        return self._record(columns, batch.labels, len(batch.input_ids))

    def _packed(self, samples: EncodedBatch | SpilledSamples, strategy: str) -> Iterator[pa.RecordBatch]:
        """Packed rows, a record batch per chunk of rows; LLaMA-Factory's strategy also gets its
        ``packing_params`` and media columns."""
        lengths = np.diff(samples.offsets)
        row_length = self.cutoff_len + 1 if strategy == "llamafactory" else 0
        if self.args.backend == "python":
            order, row_bounds = (
                packing_mod.llamafactory_order(lengths.tolist(), self.cutoff_len)
                if strategy == "llamafactory"
                else packing_mod.best_fit_decreasing(lengths.tolist(), self.cutoff_len)
            )
        else:
            from fastsft import _kernels

            pack = _kernels.knapsack_llamafactory if strategy == "llamafactory" else _kernels.pack_bfd
            order, row_bounds = pack(lengths, self.cutoff_len)
        order, row_bounds = np.asarray(order, dtype=np.int64), np.asarray(row_bounds, dtype=np.int64)
        for first, last in _row_chunks(lengths, order, row_bounds, row_length):
            chunk_order = order[row_bounds[first] : row_bounds[last]]
            chunk_bounds = row_bounds[first : last + 1] - row_bounds[first]
            batch, batch_order = samples.for_rows(chunk_order)
            tokens, label_values = self._rows(batch, batch_order, chunk_bounds, row_length)
            columns = {"input_ids": tokens["input_ids"]}
            if strategy == "llamafactory" and self.args.neat_packing:
                columns["packing_params"] = _packing_params(lengths, chunk_order, chunk_bounds, row_length)
            columns.update(tokens)
            if strategy == "llamafactory":
                columns.update(_media_columns(last - first))
            yield self._record(columns, label_values, int(lengths[chunk_order].sum()))

    def _rows(
        self, batch: EncodedBatch, order: np.ndarray, row_bounds: np.ndarray, row_length: int
    ) -> tuple[dict[str, pa.Array], np.ndarray]:
        """Token columns of the rows ``order``/``row_bounds`` describe, and their flat labels."""
        if self.args.backend == "python":
            spans = [(int(batch.offsets[i]), int(batch.offsets[i + 1])) for i in order]
            rows = packing_mod.rows_from_order(
                [batch.input_ids[a:b].tolist() for a, b in spans],
                [batch.labels[a:b].tolist() for a, b in spans],
                range(len(order)),
                row_bounds.tolist(),
                neat_packing=self.args.neat_packing,
                row_length=row_length,
                pad_token_id=self.pad_token_id,
            )
            tokens = {
                name: pa.array(values, type=pa.list_(self._value_type(name))) for name, values in rows.items()
            }
            return tokens, np.fromiter((t for row in rows["labels"] for t in row), dtype=np.int64)
        from fastsft import _kernels

        ids, label_values, mask, positions, row_offsets, _ = _kernels.materialize_rows(
            batch.input_ids,
            batch.labels,
            batch.offsets,
            order,
            row_bounds,
            row_length,
            self.pad_token_id,
            self.args.neat_packing,
        )
        flat = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": label_values}
        tokens = {
            name: _list_column(values, row_offsets, self._value_type(name)) for name, values in flat.items()
        }
        return tokens, label_values


ROW_CHUNK_TOKENS = 1 << 20  # packed rows go out in record batches of about this many tokens


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


def _media_columns(n: int) -> dict[str, pa.Array]:
    """LLaMA-Factory's empty image/video/audio columns, so the saved layout is the same."""
    return {name: pa.nulls(n) for name in ("images", "videos", "audios")}


NO_MEDIA = [2**32]  # LLaMA-Factory's MAX_SU_SEQ_IDX placeholder for "no media in this row"


def _packing_params(
    lengths: np.ndarray, order: np.ndarray, row_bounds: np.ndarray, row_length: int
) -> pa.Array:
    """LLaMA-Factory's neat-packing ``packing_params``: sequence boundaries incl. the padding."""
    params = []
    for begin, end in itertools.pairwise(np.asarray(row_bounds).tolist()):
        boundaries = [0, *np.cumsum(lengths[order[begin:end]]).tolist()]
        padding = row_length - boundaries[-1]
        params.append(
            {
                "sequence_boundaries": [*boundaries, row_length],
                "image_subseq_ids": NO_MEDIA,
                "video_subseq_ids": NO_MEDIA,
                "audio_subseq_ids": NO_MEDIA,
                "right_padding_length": padding,
            }
        )
    return pa.array(params)


def _select(batch: EncodedBatch, keep: np.ndarray) -> EncodedBatch:
    starts, ends = batch.offsets[keep], batch.offsets[keep + 1]
    lengths = ends - starts
    offsets = _cumsum0(lengths)
    positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
    return EncodedBatch(
        batch.input_ids[positions], batch.labels[positions], offsets, batch.full_lengths[keep]
    )


class HeldSamples:
    """Encoded samples that BFD packs once every length is known.

    With a ``spill_dir`` their token buffers are appended to two files in a temporary folder
    there, so memory holds only offsets and lengths (16 bytes a sample); without one they stay
    in memory.
    """

    def __init__(self, spill_dir: str | None) -> None:
        self._offsets: list[np.ndarray] = []
        self._full_lengths: list[np.ndarray] = []
        self._tokens: list[tuple[np.ndarray, np.ndarray]] = []  # in memory: (input_ids, labels) per batch
        self._folder = (
            tempfile.TemporaryDirectory(dir=spill_dir, prefix=".fastsft-bfd-", ignore_cleanup_errors=True)
            if spill_dir
            else None
        )

    def __len__(self) -> int:
        return sum(len(offsets) - 1 for offsets in self._offsets)

    def _paths(self) -> tuple[str, str]:
        assert self._folder is not None
        return os.path.join(self._folder.name, "input_ids"), os.path.join(self._folder.name, "labels")

    def add(self, batch: EncodedBatch) -> None:
        self._offsets.append(batch.offsets)
        self._full_lengths.append(batch.full_lengths)
        if self._folder is None:
            self._tokens.append((batch.input_ids, batch.labels))
            return
        for path, values in zip(self._paths(), (batch.input_ids, batch.labels), strict=True):
            with open(path, "ab") as file:
                file.write(np.ascontiguousarray(values, dtype=np.int32).data)

    def gather(self) -> EncodedBatch | SpilledSamples:
        """All held samples: one batch in memory, or their spill files and offsets."""
        offsets = _concat_offsets(self._offsets)
        full_lengths = np.concatenate(self._full_lengths)
        if self._folder is not None:
            return SpilledSamples(self._paths(), offsets, full_lengths)
        input_ids = np.concatenate([ids for ids, _ in self._tokens])
        labels = np.concatenate([labels for _, labels in self._tokens])
        return EncodedBatch(input_ids, labels, offsets, full_lengths)

    def close(self) -> None:
        """Drop the samples and delete the spill folder."""
        self._offsets, self._full_lengths, self._tokens = [], [], []
        if self._folder is not None:
            self._folder.cleanup()


@dataclass
class SpilledSamples:
    """Encoded samples whose tokens are in two int32 files (input ids, labels); offsets in memory."""

    paths: tuple[str, str]
    offsets: np.ndarray
    full_lengths: np.ndarray

    def for_rows(self, samples: np.ndarray) -> tuple[EncodedBatch, np.ndarray]:
        """``samples`` read into one compact batch, in that order, and their indices in it."""
        starts = self.offsets[samples]
        lengths = self.offsets[samples + 1] - starts
        offsets = _cumsum0(lengths)
        buffers = []
        for path in self.paths:
            values = np.empty(int(offsets[-1]), dtype=np.int32)
            view = memoryview(values).cast("B")
            with open(path, "rb", buffering=0) as file:
                for start, at, end in zip(
                    (4 * starts).tolist(), (4 * offsets[:-1]).tolist(), (4 * offsets[1:]).tolist()
                ):
                    file.seek(start)
                    if file.readinto(view[at:end]) != end - at:
                        raise OSError(f"spill file {path} is shorter than the samples written to it")
            buffers.append(values)
        return EncodedBatch(buffers[0], buffers[1], offsets, self.full_lengths[samples]), np.arange(
            len(samples)
        )


def _concat_offsets(offsets: list[np.ndarray]) -> np.ndarray:
    """Offsets of batches laid end to end."""
    shifts = _cumsum0(np.asarray([int(o[-1]) for o in offsets], dtype=np.int64))
    return np.concatenate(
        [np.zeros(1, np.int64)] + [o[1:] + shift for o, shift in zip(offsets, shifts[:-1], strict=True)]
    )


def build_dataset(
    args: DataArgs,
    tokenizer: Any,
    *,
    cache_file: str | None = None,
    progress: bool = False,
    workers: int = 1,
) -> tuple[Any, Summary]:
    """Run the pipeline; returns a ``datasets.Dataset`` with LLaMA-Factory's columns and a ``Summary``.

    The tokenizer is fixed in place exactly as LLaMA-Factory does (eos, pad, stop words). With
    ``cache_file`` the rows stream to that Arrow file and the dataset is memory-mapped from it, so
    memory does not grow with the dataset (BFD packing, which needs every length first, keeps 16
    bytes a sample and spills the tokens to a temporary folder beside ``cache_file``).
    ``workers > 1`` encodes batches in that many processes, in order, with a bounded queue.
    """
    import datasets
    from datasets.arrow_writer import ArrowWriter

    start = time.perf_counter()
    summary = Summary(backend=args.backend or "")
    encoder = Encoder(args, tokenizer)
    summary.tokenizer_backend = encoder.tokenizer_backend_name
    attrs = resolve_datasets(args.dataset, args.dataset_dir)
    spill_dir = os.path.dirname(os.path.abspath(cache_file)) if cache_file else None
    rows = RowBuilder(args, tokenizer.pad_token_id, summary, spill_dir)
    bar = _progress_bar(progress)

    def record_batches() -> Iterator[pa.RecordBatch]:
        for encoded in _encoded_batches(args, encoder, iter_batches(args, attrs, summary), summary, workers):
            yield from rows.add(encoded)
            bar.update(summary.examples_in - bar.n)
        yield from rows.finish()

    try:
        if cache_file is None:
            batches = list(record_batches())
            table = pa.Table.from_batches(batches) if batches else _empty_table(args)
            # A random fingerprint: `datasets` would otherwise hash every token to name an in-memory table.
            fingerprint = uuid.uuid4().hex
            dataset = datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=fingerprint)
        else:
            with ArrowWriter(path=cache_file) as writer:
                wrote = False
                for batch in record_batches():
                    writer.write_table(pa.Table.from_batches([batch]))
                    wrote = True
                if not wrote:
                    writer.write_table(_empty_table(args))
                writer.finalize()
            dataset = datasets.Dataset.from_file(cache_file)
    finally:
        rows.close()
    bar.close()
    summary.seconds = time.perf_counter() - start
    if summary.examples_encoded == 0:
        raise DataError(
            "no valid samples"
            + (f" ({summary.dropped} dropped; first: {summary.first_dropped})" if summary.dropped else ""),
            dataset=",".join(a.name for a in attrs),
        )
    return dataset, summary


def build_to_disk(
    args: DataArgs,
    tokenizer: Any,
    output: str | os.PathLike[str],
    *,
    progress: bool = False,
    workers: int = 1,
) -> Summary:
    """``build_dataset`` saved as ``DatasetDict({"train": ...})`` at ``output``, atomically.

    Rows stream to a cache file in a temporary folder beside ``output`` (so memory stays flat),
    ``save_to_disk`` writes there too, and a rename puts the result in place: a crash or a bad
    sample never leaves a half-written dataset, and an existing ``output`` is replaced only then.
    """
    import datasets

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        dataset, summary = build_dataset(
            args, tokenizer, cache_file=str(workdir / "rows.arrow"), progress=progress, workers=workers
        )
        staged = workdir / "dataset"
        bars_were_disabled = datasets.are_progress_bars_disabled()
        if not progress:
            datasets.disable_progress_bars()  # save_to_disk has no switch of its own
        try:
            datasets.DatasetDict({"train": dataset}).save_to_disk(str(staged))
        finally:
            if not bars_were_disabled:
                datasets.enable_progress_bars()
        if output.exists():
            os.replace(output, workdir / "previous")
        os.replace(staged, output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


_worker_encoder: Encoder | None = None


def _init_worker(args: DataArgs, tokenizer: Any, tokenizer_backend: Any) -> None:
    """Reuse the parent's checked tokenizer backend, single-threaded: the processes are the parallelism."""
    global _worker_encoder
    _worker_encoder = Encoder(args, tokenizer, tokenizer_backend.single_threaded())


def _encode_in_worker(convs: list[Conversation], refs: list[SampleRef]) -> tuple[EncodedBatch, Summary]:
    part = Summary()
    assert _worker_encoder is not None
    return _worker_encoder.encode(convs, refs, part), part


def _encoded_batches(
    args: DataArgs,
    encoder: Encoder,
    batches: Iterator[tuple[list[Conversation], list[SampleRef]]],
    summary: Summary,
    workers: int,
) -> Iterator[EncodedBatch]:
    """Encode batches here, or in ``workers`` processes keeping at most ``2 * workers`` in flight."""
    if workers <= 1:
        for convs, refs in batches:
            yield encoder.encode(convs, refs, summary)
        return

    import multiprocessing as mp
    from collections import deque

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with mp.get_context("spawn").Pool(
        workers, _init_worker, (args, encoder.tokenizer, encoder.tokenizer_backend)
    ) as pool:
        pending: deque = deque()
        for convs, refs in _waiting_on_error(batches, pending):
            pending.append(pool.apply_async(_encode_in_worker, (convs, refs)))
            if len(pending) >= 2 * workers:
                yield _merge_worker_result(pending.popleft().get(), summary)
        while pending:
            yield _merge_worker_result(pending.popleft().get(), summary)


def _waiting_on_error(
    batches: Iterator[tuple[list[Conversation], list[SampleRef]]], pending: Collection[AsyncResult]
) -> Iterator[tuple[list[Conversation], list[SampleRef]]]:
    """``batches``; an error reading one first waits for the batches in flight, as their errors come earlier."""
    try:
        yield from batches
    except FastSFTError:
        for result in pending:
            result.get()
        raise


def _merge_worker_result(result: tuple[EncodedBatch, Summary], summary: Summary) -> EncodedBatch:
    encoded, part = result
    summary.merge_malformed(part)
    return encoded


def _empty_table(args: DataArgs) -> pa.Table:
    names = (
        ["input_ids", "attention_mask", "position_ids", "labels"]
        if args.packing
        else ["input_ids", "attention_mask", "labels"]
    )
    return pa.table({name: pa.array([], type=TOKEN_TYPE) for name in names})


class _NoBar:
    n = 0

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(desc="Encoding", unit=" samples", smoothing=0.1)
