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
import uuid
from pathlib import Path
from types import TracebackType

import pyarrow as pa

__all__ = ["DATA_FILE", "ArrowStreamFile", "write_dataset_dict", "write_split_metadata"]

DATA_FILE = "data-00000-of-00001.arrow"


class ArrowStreamFile:
    """An Arrow IPC stream file (the format of ``datasets``' cache and saved files), written batch by batch.

    Every batch must have the first one's schema. Closing a file that got no batch writes
    ``empty``'s schema and no rows.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        """Append ``batch``."""
        if self._writer is None:
            self._open(batch.schema)
        assert self._writer is not None
        self._writer.write_batch(batch)

    def close(self, empty: pa.Schema) -> None:
        """Finish the stream (with schema ``empty`` when nothing was written)."""
        if self._writer is None:
            self._open(empty)
        self._finish()

    def _open(self, schema: pa.Schema) -> None:
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)

    def _finish(self) -> None:
        try:
            if self._writer is not None:
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
