"""Encoding the batches in order: here (rendering ahead while the tokenizer backend is still being
built, and tokenizing the next batch on a thread while this one is assembled and written), or in a
pool of spawned processes, bounded in flight."""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from fastsft.data.accounting import Summary
from fastsft.data.rows.encoder import EncodedBatch, Encoder, RenderedBatch
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
    """Encode batches here (``_encoded_here``), or in ``workers`` processes keeping at most
    ``2 * workers`` in flight.

    A worker's counters come back with its batch and are merged into ``summary`` whole.
    """
    if workers <= 1:
        yield from _encoded_here(encoder, batches, summary)
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


# Text rendered ahead at most while the tokenizer backend is being built: about a second of reading
# and rendering on the 2-core VM, which the build (1.4-1.9 s) takes anyway.
RENDER_AHEAD_CHARS = 128 * 2**20


def _encoded_here(encoder: Encoder, batches: Iterator[Batch], summary: Summary) -> Iterator[EncodedBatch]:
    """Batches encoded in this process, in order.

    Each batch is tokenized on a thread while the one before it is assembled here and written by
    the caller, and the one after it read and rendered: the compiled tokenizers run without the
    GIL, so on two cores that work overlaps. At most two batches are in flight. An error rendering
    a batch is raised after the batch before it is yielded, as it would be without the overlap.
    Templates with ``efficient_eos`` re-render a batch from its tokens, so they do not overlap.
    """
    rendered_batches = _rendered_in_order(encoder, batches, summary)
    if encoder.template.efficient_eos:
        for rendered in rendered_batches:
            yield encoder.encode_rendered(rendered, summary)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="fastsft-tokenize") as tokenizing:
        pending: tuple[RenderedBatch, Future[tuple[np.ndarray, np.ndarray]]] | None = None
        while True:
            try:
                rendered = next(rendered_batches, None)
            except Exception:
                if pending is not None:
                    yield encoder.encode_rendered(pending[0], summary, pending[1].result())
                raise
            started = (
                None
                if rendered is None
                else (rendered, tokenizing.submit(encoder.tokenize, rendered.segments))
            )
            if pending is not None:
                yield encoder.encode_rendered(pending[0], summary, pending[1].result())
            if started is None:
                return
            pending = started


def _rendered_in_order(
    encoder: Encoder, batches: Iterator[Batch], summary: Summary
) -> Iterator[RenderedBatch]:
    """Batches rendered in order.

    While the tokenizer backend is still being built on its own thread (``ready`` is False),
    batches are read and rendered ahead, up to ``RENDER_AHEAD_CHARS`` of text, so that reading and
    rendering overlap the build instead of waiting for it. An error met ahead is raised in its
    turn, after the batches before it are encoded, as it would be without reading ahead. Templates
    with ``efficient_eos`` find some malformed samples only once tokenized, so they do not render
    ahead (their errors would come out of order).
    """
    ahead: deque[tuple[RenderedBatch, int]] = deque()  # with its characters of text
    ahead_chars = 0
    error: Exception | None = None  # met while rendering ahead: raised once ``ahead`` is spent
    can_render_ahead = not encoder.template.efficient_eos
    while True:
        while (
            can_render_ahead
            and error is None
            and ahead_chars < RENDER_AHEAD_CHARS
            and not encoder.text_encoder.ready
        ):
            try:
                batch = next(batches, None)
                if batch is None:
                    break
                rendered = encoder.render_batch(batch, summary)
            except Exception as met:  # any error: raised in its turn, below
                error = met
                break
            chars = sum(map(len, rendered.segments.texts))
            ahead.append((rendered, chars))
            ahead_chars += chars
        if ahead:
            rendered, chars = ahead.popleft()
            ahead_chars -= chars
        elif error is not None:
            raise error
        else:
            batch = next(batches, None)
            if batch is None:
                return
            rendered = encoder.render_batch(batch, summary)
        yield rendered


def _waiting_on_error(batches: Iterator[Batch], pending: deque[AsyncResult]) -> Iterator[Batch]:
    """``batches``; an error reading one first waits for the batches in flight, as their errors come earlier."""
    try:
        yield from batches
    except FastSFTError:
        for result in pending:
            result.get()
        raise
