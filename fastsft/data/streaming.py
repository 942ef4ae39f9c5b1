"""``streaming: true``: a split's rows made while training reads them, in LLaMA-Factory 0.9.5's order.

LLaMA-Factory streams a local dataset as ``Dataset.to_iterable_dataset(num_shards=1)`` (one shard
per DataLoader worker; one worker here), concatenates several datasets, shuffles the stream
(``IterableDataset.shuffle(buffer_size, seed)``), cuts ``val_size`` samples off its head
(``take`` / ``skip``) and maps it in batches of ``preprocessing_batch_size`` (packing within each
batch). ``SampleStream`` reproduces that order from ``datasets`` 4.0.0's algorithm, not from the
installed ``datasets``: the datasets' order drawn by ``rng.shuffle`` on a copy of the generator
(or the datasets interleaved, ``_Interleaved``), then the shuffle buffer (``BufferShuffledExamplesIterable``: indices drawn in blocks of 1000 by
``rng.integers(0, buffer_size)``, the rest of the buffer shuffled at the end). Each further pass
(epoch) uses ``datasets``' effective seed.

The rows come from the pipeline's own stages (``fastsft.data.pipeline.PreparedRun.encoder``,
``rows.workers.encoded_batches``, ``rows.builder.RowBuilder``), one preprocessing batch at a
time, so nothing is read before it is needed. ``RowStream.position`` is the state to resume at
any row: the sample stream's state at the start of that row's preprocessing batch (rows read from
the files, the shuffle buffer's samples, the generator's state) and how many of its rows to pass.

Several training processes split a pass by preprocessing batch: process ``rank`` of
``world_size`` encodes and packs batches ``rank``, ``rank + world_size``, ... and only reads past
the others' samples (every process streams the same samples in the same order, so each knows
where every batch starts without asking the others). LLaMA-Factory packs within each batch, so a
process's rows are exactly the rows the single-process stream makes of its batches, and the union
over the processes is the single-process run's rows.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from fastsft.data.accounting import SampleRef, Summary
from fastsft.data.rows.builder import empty_table
from fastsft.data.rows.tokenizing import expected_chars
from fastsft.data.rows.workers import encoded_batches
from fastsft.data.sources.parser import DatasetAttr, iter_rows
from fastsft.data.sources.reading import Batch
from fastsft.errors import ConfigError

__all__ = ["STATE_FORMAT", "RowStream", "SampleStream", "StreamSpec", "epoch_generator"]

STATE_FORMAT = 2
_DRAW_BLOCK = 1000  # datasets draws the buffer's indices in blocks of this many


def epoch_generator(seed: int, epoch: int) -> np.random.Generator:
    """The generator ``datasets`` 4.0.0 shuffles pass ``epoch`` with (``IterableDataset._effective_generator``)."""
    if epoch == 0:
        return np.random.default_rng(seed)
    effective = int(np.random.default_rng(seed).integers(0, 1 << 63)) - epoch
    return np.random.default_rng((1 << 63) + effective if effective < 0 else effective)


@dataclass(frozen=True)
class StreamSpec:
    """One streamed split: its datasets, the shuffle, and the samples cut off its head (``skip``) or kept (``take``)."""

    attrs: list[DatasetAttr]
    dataset_dir: str
    buffer_size: int
    seed: int
    skip: int = 0
    take: int | None = None
    # Mixing several datasets: datasets' stopping strategy (first_exhausted | all_exhausted); None: concat.
    interleave: str | None = None
    interleave_probs: list[float] | None = None


class SampleStream:
    """Raw samples in LLaMA-Factory's streamed order, with a state that resumes it exactly (``state``).

    Yields ``(attr, ref, row)``; ``ref.position`` counts the samples of the shuffled stream.
    """

    def __init__(self, spec: StreamSpec, epoch: int, state: dict[str, Any] | None = None) -> None:
        self.spec = spec
        generator = epoch_generator(spec.seed, epoch)
        self.source: _Concatenated | _Interleaved = (
            _Interleaved(spec, generator) if spec.interleave else _Concatenated(spec, generator)
        )
        self.rng = _copy(generator)
        self.block: list[int] = []
        self.drawn = 0  # indices of ``block`` used
        self.buffer: list[list[Any]] = []  # [dataset number, index in it, row]
        self.emitted = 0  # samples of the shuffled stream so far (those ``skip`` passes included)
        self.tail: int | None = None  # once the datasets are read: the next sample of the shuffled buffer
        if state is not None:
            self._restore(state)
        self.source.start()

    def _next_index(self) -> int:
        if self.drawn == len(self.block):
            self.block = self.rng.integers(0, self.spec.buffer_size, size=_DRAW_BLOCK).tolist()
            self.drawn = 0
        self.drawn += 1
        return self.block[self.drawn - 1]

    def _shuffled(self) -> list[Any] | None:
        """The next sample of the shuffle buffer (``BufferShuffledExamplesIterable.__iter__``), or None at the end."""
        while self.tail is None:
            item = self.source.next()
            if item is None:
                self.rng.shuffle(self.buffer)
                self.tail = 0
                break
            if len(self.buffer) == self.spec.buffer_size:
                i = self._next_index()
                out, self.buffer[i] = self.buffer[i], item
                return out
            self.buffer.append(item)
        if self.tail < len(self.buffer):
            self.tail += 1
            return self.buffer[self.tail - 1]
        return None

    def __iter__(self) -> Iterator[tuple[DatasetAttr, SampleRef, dict[str, Any]]]:
        return self

    def __next__(self) -> tuple[DatasetAttr, SampleRef, dict[str, Any]]:
        while True:
            if self.spec.take is not None and self.emitted >= self.spec.take:
                raise StopIteration
            item = self._shuffled()
            if item is None:
                raise StopIteration
            self.emitted += 1
            if self.emitted > self.spec.skip:
                number, index, row = item
                attr = self.spec.attrs[number]
                return attr, SampleRef(attr.label, index, self.emitted - 1), row

    def state(self) -> dict[str, Any]:
        """Where the stream is: the datasets' positions, the buffer's samples, the generator; JSON-ready."""
        return {
            "source": self.source.state(),
            "emitted": self.emitted,
            "buffer": list(self.buffer),  # the samples themselves are never changed in place
            "tail": self.tail,
            "rng": self.rng.bit_generator.state,
            "block": list(self.block),
            "drawn": self.drawn,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.source.restore(state["source"])
        self.emitted, self.tail = state["emitted"], state["tail"]
        self.buffer = [list(item) for item in state["buffer"]]
        self.rng.bit_generator.state = state["rng"]
        self.block, self.drawn = list(state["block"]), state["drawn"]


def _dataset_rows(spec: StreamSpec, number: int) -> Iterator[list[Any]]:
    for index, row in enumerate(iter_rows(spec.attrs[number], spec.dataset_dir)):
        yield [number, index, row]


class _Concatenated:
    """The datasets one after the other, in an order drawn from the generator (``datasets``'
    ``VerticallyConcatenatedMultiSourcesExamplesIterable.shuffle_data_sources``)."""

    def __init__(self, spec: StreamSpec, generator: np.random.Generator) -> None:
        self.spec = spec
        self.order = list(range(len(spec.attrs)))
        if len(self.order) > 1:
            _copy(generator).shuffle(self.order)
        self.read = 0  # rows read, in ``order``
        self.rows: Iterator[list[Any]] = iter(())

    def start(self) -> None:
        rows = itertools.chain.from_iterable(_dataset_rows(self.spec, number) for number in self.order)
        self.rows = itertools.islice(rows, self.read, None)  # rows before a restored position are parsed only

    def next(self) -> list[Any] | None:
        item = next(self.rows, None)
        self.read += item is not None
        return item

    def state(self) -> Any:
        return self.read

    def restore(self, state: Any) -> None:
        self.read = state


class _Interleaved:
    """``interleave_datasets`` of iterable datasets in ``datasets`` 4.0.0: the datasets take turns
    (``CyclingMultiSourcesExamplesIterable``), or with ``interleave_probs`` each sample's dataset is
    drawn by ``rng.choice`` in blocks of 1000 (``RandomlyCyclingMultiSourcesExamplesIterable``).
    A dataset read to its end starts again; the stream stops once one (``interleave_under``) or
    every (``interleave_over``) dataset has ended, each dataset's next row read one ahead."""

    def __init__(self, spec: StreamSpec, generator: np.random.Generator) -> None:
        self.spec = spec
        count = len(spec.attrs)
        self.rng = _copy(generator)
        self.block: list[int] = []
        self.drawn = 0
        self.turn = 0
        self.taken = [0] * count  # rows read from each dataset since it (re)started
        self.ahead: list[Any] = [None] * count  # each dataset's row read ahead (None: none yet)
        self.exhausted = [False] * count
        self.iterators: list[Iterator[list[Any]]] = []

    def start(self) -> None:
        self.iterators = [
            itertools.islice(_dataset_rows(self.spec, number), taken, None)
            for number, taken in enumerate(self.taken)
        ]

    def _pick(self) -> int:
        if self.spec.interleave_probs is None:
            number, self.turn = self.turn, (self.turn + 1) % len(self.taken)
            return number
        if self.drawn == len(self.block):
            draws = self.rng.choice(len(self.taken), size=_DRAW_BLOCK, p=self.spec.interleave_probs)
            self.block, self.drawn = draws.tolist(), 0
        self.drawn += 1
        return self.block[self.drawn - 1]

    def _fetch(self, number: int) -> Any:
        item = next(self.iterators[number], False)
        self.taken[number] += item is not False
        return item

    def next(self) -> list[Any] | None:
        while True:
            ended = all(self.exhausted) if self.spec.interleave == "all_exhausted" else any(self.exhausted)
            if ended:
                return None
            number = self._pick()
            if self.ahead[number] is None:
                self.ahead[number] = self._fetch(number)
            result = self.ahead[number]
            self.ahead[number] = self._fetch(number)
            if self.ahead[number] is False:  # read to its end: it starts again
                self.exhausted[number] = True
                self.ahead[number] = None
                self.taken[number] = 0
                self.iterators[number] = _dataset_rows(self.spec, number)
            if result is not False:
                return result

    def state(self) -> Any:
        return {
            "taken": list(self.taken),
            "ahead": list(self.ahead),
            "exhausted": list(self.exhausted),
            "turn": self.turn,
            "rng": self.rng.bit_generator.state,
            "block": list(self.block),
            "drawn": self.drawn,
        }

    def restore(self, state: Any) -> None:
        self.taken, self.ahead, self.exhausted = (
            list(state["taken"]),
            list(state["ahead"]),
            list(state["exhausted"]),
        )
        self.turn, self.block, self.drawn = state["turn"], list(state["block"]), state["drawn"]
        self.rng.bit_generator.state = state["rng"]


def _copy(generator: np.random.Generator) -> np.random.Generator:
    copy = np.random.default_rng()
    copy.bit_generator.state = generator.bit_generator.state
    return copy


class RowStream:
    """The rows of a streamed split, made batch by batch as they are read; resumable at any row.

    ``run`` is the run's ``PreparedRun`` (typed loosely: this module sits below the pipeline);
    ``summary`` counts every sample read, dropped or skipped since this object was made.
    """

    def __init__(self, run: Any, spec: StreamSpec) -> None:
        self.run = run
        self.spec = spec
        self.workers = run.args.preprocessing_num_workers or 1  # encoding processes, as in preprocess
        self.summary = Summary()
        self._encoder: Any = None
        # (epoch, first row, preprocessing batch number, stream state) of the batches made so far
        self._snapshots: deque[tuple[int, int, int, dict[str, Any]]] = deque()

    @property
    def columns(self) -> tuple[str, ...]:
        """The token columns of the rows (the row builder's)."""
        return tuple(empty_table(bool(self.run.args.packing)).column_names)

    def describe(self) -> dict[str, Any]:
        """What decides the order: a resumed run must have the same."""
        args = self.run.args
        return {
            "datasets": [attr.label for attr in self.spec.attrs],
            "buffer_size": self.spec.buffer_size,
            "seed": self.spec.seed,
            "skip": self.spec.skip,
            "take": self.spec.take,
            "interleave": self.spec.interleave,
            "interleave_probs": self.spec.interleave_probs,
            "preprocessing_batch_size": args.preprocessing_batch_size,
            "packing": bool(args.packing),
            "neat_packing": bool(args.neat_packing),
            "cutoff_len": args.cutoff_len,
        }

    def rows(
        self, epoch: int, start: dict[str, Any] | None = None, *, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Pass ``epoch``'s rows as ``(row number, {column: values})``, from ``start`` (a ``position``)
        if given; with ``world_size`` > 1, only process ``rank``'s share: the rows of every
        ``world_size``-th preprocessing batch from batch ``rank`` on, numbered within that share."""
        args = self.run.args
        if start is not None:
            self._check(start)
            epoch = start["epoch"]
        stream_state = start["batch"] if start is not None else None
        first_row = start["batch_first_row"] if start is not None else 0
        skip_rows = start["row"] - first_row if start is not None else 0
        batch_number = start["batch_number"] if stream_state is not None else 0
        samples = SampleStream(self.spec, epoch, stream_state)
        if self._encoder is None:  # one per run, chosen for (at least) one pass over the files
            self._encoder = self.run.encoder(expected_chars=expected_chars(args, list(self.spec.attrs)))
        encoder = self._encoder
        summary = self.summary
        summary.encode_path, summary.tokenizer_backend = encoder.encode_path, encoder.text_encoder.name
        builder = self.run.row_builder(encoder, summary)
        pending: deque[tuple[int, dict[str, Any]]] = deque()

        def batches() -> Iterator[Batch]:
            nonlocal batch_number
            while True:
                mine = batch_number % world_size == rank
                state = samples.state() if mine else None
                batch = Batch([], [], [])
                for attr, ref, row in itertools.islice(samples, args.preprocessing_batch_size):
                    batch.rows.append(row)
                    batch.attrs.append(attr)
                    batch.refs.append(ref)
                if not batch.rows:
                    return
                batch_number += 1
                if mine:  # another process's batch is read past, never encoded here
                    summary.examples_in += len(batch.rows)
                    pending.append((batch_number - 1, state))
                    yield batch

        row_number = first_row
        encoded_batches_ = encoded_batches(encoder, batches(), summary, self.workers)
        try:
            while True:
                started = time.perf_counter()  # the producer's own time, not the time training holds it
                encoded = next(encoded_batches_, None)
                if encoded is None:
                    return
                self._snapshots.append((epoch, row_number, *pending.popleft()))
                records = list(builder.add(encoded))
                summary.seconds += time.perf_counter() - started
                for record in records:
                    for row in _split_rows(record, self.columns):
                        if skip_rows:
                            skip_rows -= 1
                        else:
                            yield row_number, row
                        row_number += 1
        finally:
            builder.close()

    def consumed(self, epoch: int, next_row: int) -> None:
        """Training has used every row before ``next_row`` of ``epoch``: forget the states before it."""
        while len(self._snapshots) > 1 and self._snapshots[1][:2] <= (epoch, next_row):
            self._snapshots.popleft()

    def position(self, epoch: int, next_row: int) -> dict[str, Any]:
        """The state to resume at row ``next_row`` of pass ``epoch`` (JSON-ready)."""
        self.consumed(epoch, next_row)
        batch_first_row, batch_number, state = 0, 0, None  # no state: the pass from its start
        for snap_epoch, first_row, number, snapshot in self._snapshots:
            if snap_epoch == epoch and first_row <= next_row:
                batch_first_row, batch_number, state = first_row, number, snapshot
                break
        return {
            "format": STATE_FORMAT,
            "order": self.describe(),
            "epoch": epoch,
            "row": next_row if state is not None else 0,
            "batch_first_row": batch_first_row,
            "batch_number": batch_number,
            "batch": state,
        }

    def _check(self, start: dict[str, Any]) -> None:
        if start.get("format") != STATE_FORMAT:
            raise ConfigError(
                f"the checkpoint's stream position has format {start.get('format')}, not {STATE_FORMAT}"
            )
        if start["order"] != self.describe():
            changed = sorted(k for k, v in self.describe().items() if start["order"].get(k) != v)
            raise ConfigError(
                "cannot resume the stream: the checkpoint's data options differ in "
                + ", ".join(
                    f"{key} ({start['order'].get(key)!r} then, {self.describe()[key]!r} now)"
                    for key in changed
                )
            )


def _split_rows(record: pa.RecordBatch, columns: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
    """The rows of a record batch as numpy arrays (what ``token_format`` gives the collators)."""
    arrays = {}
    for name in columns:
        column = record.column(name)
        arrays[name] = (_view(column.offsets), _view(column.values))
    for i in range(record.num_rows):
        yield {name: values[offsets[i] : offsets[i + 1]] for name, (offsets, values) in arrays.items()}


def _view(array: pa.Array) -> np.ndarray:
    """An integer Arrow array without nulls as a zero-copy numpy view (``to_numpy`` imports pandas:
    a third of a second)."""
    dtype = np.dtype(str(array.type))
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize)
