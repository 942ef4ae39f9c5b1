"""Reading: raw rows of every dataset, in preprocessing batches, or one by one converted to conversations.

Batches hold ``batch_size`` raw samples, the batches LLaMA-Factory's ``dataset.map(batched=True)``
sees, so its per-batch packing can be reproduced. They are converted (or rendered straight from
the raw rows) by ``fastsft.data.rows.encoder``, which hands rows LLaMA-Factory drops and
malformed rows to the ``SamplePolicy``.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from fastsft.data.accounting import SampleRef, Summary
from fastsft.data.sources.converter import Conversation, Dropped, convert
from fastsft.data.sources.parser import DatasetAttr, iter_rows
from fastsft.errors import DataError

__all__ = ["Batch", "iter_batches", "iter_converted", "iter_samples"]


class Batch(NamedTuple):
    """One preprocessing batch of raw samples: row ``i`` came from dataset ``attrs[i]`` at ``refs[i]``."""

    rows: list[dict[str, Any]]
    attrs: list[DatasetAttr]
    refs: list[SampleRef]


def iter_samples(
    attrs: list[DatasetAttr],
    dataset_dir: str,
    max_samples: int | None,
    order: np.ndarray | None = None,
    lengths: list[int] | None = None,
) -> Iterator[tuple[DatasetAttr, SampleRef, dict[str, Any]]]:
    """Raw rows of every dataset in turn, or in ``order`` (indices into the concatenation of the
    datasets, which have ``lengths`` rows), each with where it came from.

    A dataset whose rows ``order`` visits in increasing order is streamed; one visited out of
    order (a ``val_size`` split, oversampling) is held in memory, each row pickled.
    """
    positions = itertools.count()
    if order is None:
        for attr in attrs:
            for index, row in enumerate(iter_rows(attr, dataset_dir, max_samples=max_samples)):
                yield attr, SampleRef(attr.name, index, next(positions)), row
        return
    if lengths is None or len(lengths) != len(attrs):
        raise ValueError("an order needs the row count of every dataset")
    counts = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(counts)
    sources = np.searchsorted(ends, order, side="right")
    indices = order - (ends - counts)[sources]
    readers = [
        _RowReader(
            attr, dataset_dir, max_samples, increasing=bool(np.all(np.diff(indices[sources == k]) > 0))
        )
        for k, attr in enumerate(attrs)
    ]
    for source, index in zip(sources.tolist(), indices.tolist()):
        attr = attrs[source]
        yield attr, SampleRef(attr.name, index, next(positions)), readers[source].row(index)


class _RowReader:
    """Rows of one dataset by index: a stream while indices only grow, else every row held, pickled."""

    def __init__(
        self, attr: DatasetAttr, dataset_dir: str, max_samples: int | None, *, increasing: bool
    ) -> None:
        self.rows = iter_rows(attr, dataset_dir, max_samples=max_samples)
        self.next_index = 0
        self.held = None if increasing else [pickle.dumps(row, 5) for row in self.rows]

    def row(self, index: int) -> dict[str, Any]:
        if self.held is not None:
            return pickle.loads(self.held[index])
        for _ in range(index - self.next_index):  # rows the order leaves out
            next(self.rows)
        self.next_index = index + 1
        return next(self.rows)


def iter_converted(
    attrs: list[DatasetAttr],
    dataset_dir: str,
    max_samples: int | None,
    order: np.ndarray | None = None,
    lengths: list[int] | None = None,
    *,
    system_as_written: bool = False,
) -> Iterator[tuple[SampleRef, Conversation | Dropped | DataError]]:
    """Every sample (see ``iter_samples``) converted: a ``Conversation``, a ``Dropped`` (a row
    LLaMA-Factory drops), or the ``DataError`` of a malformed row (``system_as_written``: see ``convert``)."""
    for attr, ref, row in iter_samples(attrs, dataset_dir, max_samples, order, lengths):
        try:
            yield ref, convert(row, attr, system_as_written=system_as_written)
        except DataError as err:
            yield ref, err


def iter_batches(
    attrs: list[DatasetAttr],
    dataset_dir: str,
    *,
    max_samples: int | None,
    batch_size: int,
    summary: Summary,
    order: np.ndarray | None = None,
    lengths: list[int] | None = None,
    batch_sizes: list[int] | None = None,
) -> Iterator[Batch]:
    """Preprocessing batches of ``batch_size`` raw samples (rows in ``order``, see ``iter_samples``),
    each counted in ``summary.examples_in``; ``batch_sizes``, when given, are the sizes of the
    first batches (LLaMA-Factory's, ``fastsft.kernels.packing.llamafactory_batch_sizes``)."""
    sizes = iter(batch_sizes or ())
    size = next(sizes, batch_size)
    batch = Batch([], [], [])
    for attr, ref, row in iter_samples(attrs, dataset_dir, max_samples, order, lengths):
        summary.examples_in += 1
        batch.rows.append(row)
        batch.attrs.append(attr)
        batch.refs.append(ref)
        if len(batch.rows) == size:
            yield batch
            batch = Batch([], [], [])
            size = next(sizes, batch_size)
    if batch.rows:
        yield batch
