"""BFD spill storage: encoded samples held until every length is known, on disk or in memory."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from fastsft.data.rows.encoder import EncodedBatch
from fastsft.kernels import offsets_from_lengths

__all__ = ["HeldSamples", "SpilledSamples"]


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

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def for_rows(self, samples: np.ndarray) -> tuple[EncodedBatch, np.ndarray]:
        """``samples`` read into one compact batch, in that order, and their indices in it."""
        starts = self.offsets[samples]
        lengths = self.offsets[samples + 1] - starts
        offsets = offsets_from_lengths(lengths)
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
        batch = EncodedBatch(buffers[0], buffers[1], offsets, self.full_lengths[samples])
        return batch, np.arange(len(samples))


def _concat_offsets(offsets: list[np.ndarray]) -> np.ndarray:
    """Offsets of batches laid end to end."""
    shifts = offsets_from_lengths(np.asarray([int(o[-1]) for o in offsets], dtype=np.int64))
    return np.concatenate(
        [np.zeros(1, np.int64)] + [o[1:] + shift for o, shift in zip(offsets, shifts[:-1], strict=True)]
    )
