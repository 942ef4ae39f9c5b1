"""``datasets.DatasetDict.save_to_disk``'s layout, written with pyarrow alone.

``fastsft preprocess`` streams its rows straight into the files ``load_from_disk`` reads (so
LLaMA-Factory's ``tokenized_path`` and ``fastsft train`` load them), without importing ``datasets``
(half a second) and without the copy ``save_to_disk`` would make of every row::

    output/
    ├── dataset_dict.json               {"splits": ["train", "validation"]}
    ├── train/
    │   ├── data-00000-of-00001.arrow   Arrow IPC stream: the record batches, in order
    │   ├── dataset_info.json           features null: datasets infers them from the Arrow schema
    │   └── state.json                  the data file, a fingerprint, no format
    └── validation/ ...

Leaving the features to inference makes the output readable by every ``datasets`` version that
can hold its types (``List`` and ``Sequence`` features are spelt differently in 3.x and 4.x).
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from pathlib import Path
from types import TracebackType

import pyarrow as pa

__all__ = ["DATA_FILE", "ArrowStreamFile", "write_dataset_dict", "write_split_metadata"]

DATA_FILE = "data-00000-of-00001.arrow"


class ArrowStreamFile:
    """An Arrow IPC stream file (the format of ``datasets``' cache and saved files), written batch by batch.

    Every batch must have the first one's schema. Closing a file that got no batch writes
    ``empty``'s schema and no rows. Batches are written in order on a background thread (pyarrow
    releases the GIL while it writes), so the caller encodes the next batch meanwhile; at most
    ``IN_FLIGHT`` wait their turn. An error writing one is raised by the next ``write``, or by
    ``close``.
    """

    IN_FLIGHT = 2

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=self.IN_FLIGHT)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        """Append ``batch`` (written on the background thread)."""
        self._raise_error()
        if self._writer is None:
            self._open(batch.schema)
            self._thread = threading.Thread(target=self._write_queued, name="arrow-writer", daemon=True)
            self._thread.start()
        self._queue.put(batch)

    def close(self, empty: pa.Schema) -> None:
        """Finish the stream (with schema ``empty`` when nothing was written); raises a write's error."""
        if self._writer is None:
            self._open(empty)
        self._finish()
        self._raise_error()

    def _write_queued(self) -> None:
        """The background thread: write the queued batches until ``None``; after an error, drop them."""
        while (batch := self._queue.get()) is not None:
            if self._error is None:
                assert self._writer is not None
                try:
                    self._writer.write_batch(batch)
                except BaseException as error:  # raised in the caller's thread, by write or close
                    self._error = error

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _open(self, schema: pa.Schema) -> None:
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)

    def _finish(self) -> None:
        """Wait for the queued batches, then close the writer (unless a write failed) and the file."""
        try:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
            if self._writer is not None and self._error is None:
                self._writer.close()
        finally:
            if self._sink is not None:
                self._sink.close()
            self._writer = self._sink = None

    def __enter__(self) -> ArrowStreamFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is not None:  # an unfinished stream; the caller discards the folder
            self._finish()


def write_split_metadata(split_dir: Path) -> None:
    """``state.json`` and ``dataset_info.json`` beside ``split_dir``'s ``DATA_FILE``."""
    state = {
        "_data_files": [{"filename": DATA_FILE}],
        "_fingerprint": uuid.uuid4().hex[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    info = {"citation": "", "description": "", "features": None, "homepage": "", "license": ""}
    _write_json(split_dir / "state.json", state)
    _write_json(split_dir / "dataset_info.json", info)


def write_dataset_dict(folder: Path, splits: list[str]) -> None:
    """``dataset_dict.json`` naming ``splits`` (each a folder written with ``write_split_metadata``)."""
    _write_json(folder / "dataset_dict.json", {"splits": splits})


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True), encoding="utf-8")
