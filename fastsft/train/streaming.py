"""``streaming: true`` in ``fastsft train``: the streamed training split as the ``Trainer`` reads it.

``StreamedTrainSet`` is a torch ``IterableDataset`` over ``fastsft.data.streaming.RowStream``
(rows made while training reads them, in LLaMA-Factory's streamed order) or over a saved
``tokenized_path`` read in order (LLaMA-Factory's ``to_iterable_dataset()``). Every collated
batch carries the stream position after its last row (``STREAM_POSITION``); ``SFTTrainer``
takes it off in ``training_step``, so the position is that of the rows training used, whatever
the DataLoader fetched ahead, and each checkpoint records it in ``STREAM_STATE``. A resumed run
starts the stream there: the shuffle buffer, generator and file position are restored and at
most one preprocessing batch is encoded again; the ``Trainer`` skips no batch (``ignore_data_skip``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from fastsft.data.streaming import RowStream
from fastsft.errors import ConfigError

__all__ = ["STREAM_POSITION", "STREAM_STATE", "PositionCollator", "StreamReport", "StreamedTrainSet"]

STREAM_POSITION = "fastsft_stream_position"
STREAM_STATE = "fastsft_stream_state.json"


class StreamedTrainSet(torch.utils.data.IterableDataset):
    """The training rows, one pass per ``__iter__``; yields ``((pass, row number), row)``.

    ``source`` is a ``RowStream``, or a saved split (a ``datasets.Dataset`` in the numpy format)
    read in order.
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self.epoch = 0
        self._start: dict[str, Any] | None = None

    @property
    def column_names(self) -> list[str]:
        if isinstance(self.source, RowStream):
            return list(self.source.columns)
        return list(self.source.column_names)

    def resume(self, checkpoint: str) -> None:
        """Start where ``checkpoint``'s training stopped (its ``STREAM_STATE``)."""
        path = Path(checkpoint) / STREAM_STATE
        if not path.is_file():
            raise ConfigError(
                f"{checkpoint} has no {STREAM_STATE}: it was not saved by a `streaming: true` run, so "
                "the stream position to resume at is unknown"
            )
        self._start = json.loads(path.read_text(encoding="utf-8"))
        self.epoch = self._start["epoch"]

    def __iter__(self) -> Iterator[tuple[tuple[int, int], dict[str, np.ndarray]]]:
        epoch, start = self.epoch, self._start
        self.epoch, self._start = epoch + 1, None
        if isinstance(self.source, RowStream):
            rows = self.source.rows(epoch, start)
        else:
            first = start["row"] if start is not None else 0
            rows = ((i, self.source[i]) for i in range(first, len(self.source)))
        for number, row in rows:
            yield (epoch, number + 1), row

    def position(self, used: tuple[int, int]) -> dict[str, Any]:
        """The JSON state to resume after the rows up to ``used`` (pass, next row)."""
        epoch, next_row = used
        if isinstance(self.source, RowStream):
            return self.source.position(epoch, next_row)
        return {"epoch": epoch, "row": next_row}

    def consumed(self, used: tuple[int, int]) -> None:
        if isinstance(self.source, RowStream):
            self.source.consumed(*used)


class PositionCollator:
    """The run's collator over ``StreamedTrainSet`` items, the batch's stream position under
    ``STREAM_POSITION``; evaluation rows (plain) go to the collator as they are."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        if not isinstance(items[0], tuple):  # evaluation rows: no stream position
            return self.collator(items)
        batch = self.collator([row for _, row in items])
        batch[STREAM_POSITION] = items[-1][0]
        return batch


class StreamReport(TrainerCallback):
    """The stream's counts (read, dropped, skipped as malformed) said when training ends."""

    def __init__(self, stream: RowStream, say: Any) -> None:
        self.stream = stream
        self.say = say

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            for line in self.stream.summary.lines():
                self.say(f"streamed: {line}")


def save_position(folder: Path, train_set: StreamedTrainSet, used: tuple[int, int] | None) -> None:
    """Write the stream position after the rows training used into checkpoint ``folder``."""
    state = train_set.position(used or (0, 0))  # a checkpoint follows a step, so ``used`` is set
    (folder / STREAM_STATE).write_text(json.dumps(state), encoding="utf-8")
