"""Reading: raw rows of every dataset, converted to conversations, in preprocessing batches.

Batches hold ``batch_size`` raw samples, the batches LLaMA-Factory's ``dataset.map(batched=True)``
sees, so its per-batch packing can be reproduced. Rows LLaMA-Factory drops and malformed rows
are handed to the ``SamplePolicy`` (counted, or raised) and left out of the batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from fastsft.data.accounting import SamplePolicy, SampleRef, Summary
from fastsft.data.formats import Conversation, Dropped, convert
from fastsft.data.registry import DatasetAttr, iter_rows
from fastsft.errors import DataError

__all__ = ["Batch", "iter_batches", "iter_samples"]

Batch = tuple[list[Conversation], list[SampleRef]]


def iter_samples(
    attrs: list[DatasetAttr], dataset_dir: str, max_samples: int | None
) -> Iterator[tuple[DatasetAttr, SampleRef, dict[str, Any]]]:
    """Raw rows of every dataset in order, each with where it came from."""
    positions = itertools.count()
    for attr in attrs:
        for index, row in enumerate(iter_rows(attr, dataset_dir, max_samples=max_samples)):
            yield attr, SampleRef(attr.name, index, next(positions)), row


def iter_batches(
    attrs: list[DatasetAttr],
    dataset_dir: str,
    *,
    max_samples: int | None,
    batch_size: int,
    policy: SamplePolicy,
    summary: Summary,
) -> Iterator[Batch]:
    """Preprocessing batches of valid conversations; invalid rows go to ``policy``."""
    convs: list[Conversation] = []
    refs: list[SampleRef] = []
    raw_in_batch = 0
    for attr, ref, row in iter_samples(attrs, dataset_dir, max_samples):
        summary.examples_in += 1
        raw_in_batch += 1
        try:
            result = convert(row, attr)
        except DataError as err:
            policy.malformed(err, ref, summary)
            result = None
        if isinstance(result, Dropped):
            policy.dropped(result.reason, ref, summary)
        elif result is not None:
            convs.append(result)
            refs.append(ref)
        if raw_in_batch == batch_size:
            yield convs, refs
            convs, refs, raw_in_batch = [], [], 0
    if raw_in_batch:
        yield convs, refs
