"""``streaming: true`` in ``fastsft train``: the streamed training split as the ``Trainer`` reads it.

``StreamedTrainSet`` is a torch ``IterableDataset`` over ``fastsft.data.streaming.RowStream``
(rows made while training reads them, in LLaMA-Factory's streamed order) or over a saved
``tokenized_path`` read in order (LLaMA-Factory's ``to_iterable_dataset()``). Every collated
batch carries the stream position after its last row (``STREAM_POSITION``); ``SFTTrainer``
takes it off in ``training_step``, so the position is that of the rows training used, whatever
the DataLoader fetched ahead, and each checkpoint records it in ``STREAM_STATE``. A resumed run
starts the stream there: the shuffle buffer, generator and file position are restored and at
most one preprocessing batch is encoded again; the ``Trainer`` skips no batch (``ignore_data_skip``).

Under ``torchrun`` each process trains its own share and makes it itself: every
``world_size``-th preprocessing batch of the stream (every ``world_size``-th row of a saved
split), so no process encodes another's rows and none waits for another's data. Its DataLoader
is its own (``SFTTrainer.get_train_dataloader``: accelerate neither dispatches from process 0 nor
shards it again). A process's share runs from one pass into the next without ending: the shares
differ in rows, and a pass that ended on one process and not on another would leave the
processes with different step counts; so every process trains ``max_steps`` steps, each sample
once per pass of its share. Each process writes its own position into a checkpoint
(``state_file``); resuming needs as many processes as the checkpoint's run had.
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

__all__ = [
    "STREAM_POSITION",
    "STREAM_STATE",
    "PositionCollator",
    "StreamReport",
    "StreamedTrainSet",
    "save_position",
    "state_file",
]

STREAM_POSITION = "fastsft_stream_position"
STREAM_STATE = "fastsft_stream_state.json"


class StreamedTrainSet(torch.utils.data.IterableDataset):
    """This process's training rows; yields ``((pass, row number), row)``.

    ``source`` is a ``RowStream``, or a saved split (a ``datasets.Dataset`` in the numpy format)
    read in order. One process: one pass per ``__iter__``, as LLaMA-Factory's ``Trainer`` sees a
    stream end. Several (``world_size`` > 1): process ``rank``'s share, pass after pass, never ending.
    """

    def __init__(self, source: Any, rank: int = 0, world_size: int = 1) -> None:
        self.source = source
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._start: dict[str, Any] | None = None

    @property
    def column_names(self) -> list[str]:
        if isinstance(self.source, RowStream):
            return list(self.source.columns)
        return list(self.source.column_names)

    def resume(self, checkpoint: str) -> None:
        """Start where ``checkpoint``'s training stopped (this process's ``state_file``)."""
        first = Path(checkpoint) / STREAM_STATE  # every streamed checkpoint has process 0's
        if not first.is_file():
            raise ConfigError(
                f"{checkpoint} has no {STREAM_STATE}: it was not saved by a `streaming: true` run, so "
                "the stream position to resume at is unknown"
            )
        saved_size = json.loads(first.read_text(encoding="utf-8"))["world_size"]
        if saved_size != self.world_size:
            raise ConfigError(
                f"cannot resume the stream of {checkpoint}: it was trained by {_processes(saved_size)} "
                f"and this run has {_processes(self.world_size)}; each process's share of the stream and "
                f"its position depend on the count, so resume with {_processes(saved_size)}"
            )
        path = Path(checkpoint) / state_file(self.rank)
        if not path.is_file():
            raise ConfigError(
                f"{checkpoint} has no {path.name}: process {self.rank}'s stream position is lost"
            )
        self._start = json.loads(path.read_text(encoding="utf-8"))
        self.epoch = self._start["epoch"]

    def __iter__(self) -> Iterator[tuple[tuple[int, int], dict[str, np.ndarray]]]:
        epoch, start = self.epoch, self._start
        self.epoch, self._start = epoch + 1, None
        if self.world_size == 1:
            yield from self._pass(epoch, start)
            return
        while True:
            produced = False
            for item in self._pass(epoch, start):
                produced = True
                yield item
            if not produced and start is None:
                raise ConfigError(self._empty_share(epoch))
            epoch, start = epoch + 1, None

    def _pass(
        self, epoch: int, start: dict[str, Any] | None
    ) -> Iterator[tuple[tuple[int, int], dict[str, np.ndarray]]]:
        """This process's rows of pass ``epoch`` (from ``start``), tagged ``(pass, next row)``."""
        if isinstance(self.source, RowStream):
            rows = self.source.rows(epoch, start, rank=self.rank, world_size=self.world_size)
        else:
            first = start["row"] if start is not None else 0
            rows = (
                (i, self.source[i])
                for i in range(first, len(self.source))
                if i % self.world_size == self.rank
            )
        for number, row in rows:
            yield (epoch, number + 1), row

    def _empty_share(self, epoch: int) -> str:
        where = f"process {self.rank} of {self.world_size} has no rows to train in pass {epoch}"
        if isinstance(self.source, RowStream):
            size = self.source.run.args.preprocessing_batch_size
            return (
                f"{where}: the processes take turns by preprocessing batch ({size} samples), and the "
                "stream has fewer batches than processes, or every sample of this one's was dropped; "
                "lower preprocessing_batch_size"
            )
        return f"{where}: the saved split has {len(self.source)} rows, fewer than the processes"

    def position(self, used: tuple[int, int]) -> dict[str, Any]:
        """The JSON state to resume after the rows up to ``used`` (pass, next row)."""
        epoch, next_row = used
        if isinstance(self.source, RowStream):
            state = self.source.position(epoch, next_row)
        else:
            state = {"epoch": epoch, "row": next_row}
        return {**state, "world_size": self.world_size}

    def consumed(self, used: tuple[int, int]) -> None:
        if isinstance(self.source, RowStream):
            self.source.consumed(*used)


def state_file(rank: int) -> str:
    """The file of process ``rank``'s stream position in a checkpoint (process 0's: ``STREAM_STATE``)."""
    return STREAM_STATE if rank == 0 else f"fastsft_stream_state_rank{rank}.json"


def _processes(count: int) -> str:
    return f"{count} process{'es' if count > 1 else ''}"


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
    """The stream's counts (read, dropped, skipped as malformed) said when training ends; with
    several processes, each says its own share's."""

    def __init__(self, stream: RowStream, say: Any, rank: int = 0, world_size: int = 1) -> None:
        self.stream = stream
        self.say = say
        self.prefix = "streamed" if world_size == 1 else f"streamed, process {rank} of {world_size}"

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero or args.world_size > 1:
            for line in self.stream.summary.lines():
                self.say(f"{self.prefix}: {line}")


def save_position(folder: Path, train_set: StreamedTrainSet, used: tuple[int, int] | None) -> None:
    """Write this process's stream position after the rows training used into checkpoint ``folder``."""
    state = train_set.position(used or (0, 0))  # a checkpoint follows a step, so ``used`` is set
    folder.mkdir(exist_ok=True)  # its parent, the partial folder, exists on every process by now
    (folder / state_file(train_set.rank)).write_text(json.dumps(state), encoding="utf-8")
