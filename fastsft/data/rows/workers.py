"""The worker pool: preprocessing batches encoded in spawned processes, in order, bounded in flight."""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastsft.data.accounting import Summary
from fastsft.data.rows.encoder import EncodedBatch, Encoder
from fastsft.data.sources.reading import Batch
from fastsft.errors import FastSFTError

if TYPE_CHECKING:
    from multiprocessing.pool import AsyncResult

__all__ = ["encoded_batches"]

_worker_encoder: Encoder | None = None  # one per worker process, set by its initializer


def _init_worker(encoder: Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder
    # Ctrl-C reaches the whole process group: the parent stops the pool and reports it in one line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_in_worker(batch: Batch) -> tuple[EncodedBatch, Summary]:
    assert _worker_encoder is not None
    part = Summary()
    return _worker_encoder.encode(batch, part), part


def encoded_batches(
    encoder: Encoder, batches: Iterator[Batch], summary: Summary, workers: int
) -> Iterator[EncodedBatch]:
    """Encode batches here, or in ``workers`` processes keeping at most ``2 * workers`` in flight.

    A worker's counters come back with its batch and are merged into ``summary`` whole.
    """
    if workers <= 1:
        for batch in batches:
            yield encoder.encode(batch, summary)
        return

    import multiprocessing as mp

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Each worker tokenizes on one thread: the processes are the parallelism.
    with mp.get_context("spawn").Pool(workers, _init_worker, (encoder.single_threaded(),)) as pool:
        pending: deque[AsyncResult] = deque()

        def merged(result: tuple[EncodedBatch, Summary]) -> EncodedBatch:
            summary.merge(result[1])
            return result[0]

        for batch in _waiting_on_error(batches, pending):
            pending.append(pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) >= 2 * workers:
                yield merged(pending.popleft().get())
        while pending:
            yield merged(pending.popleft().get())


def _waiting_on_error(batches: Iterator[Batch], pending: deque[AsyncResult]) -> Iterator[Batch]:
    """``batches``; an error reading one first waits for the batches in flight, as their errors come earlier."""
    try:
        yield from batches
    except FastSFTError:
        for result in pending:
            result.get()
        raise
