"""Runs ``fastsft preprocess`` paused at one point of its work, for ``tests/test_faults.py``.

Usage: ``python tests/fault_driver.py POINT READY_FILE ARGV...``. When the run reaches POINT it
writes its pid to READY_FILE and waits until ``READY_FILE.go`` exists (the test signals or kills
it meanwhile). Points:

* ``encode``: after the first batch's rows are written, before the second batch;
* ``save``: after the staged dataset was written whole, before the swap;
* ``swap``: inside the swap, after a previous output was moved aside (signals are held there);
* ``swapped``: inside the swap, after the new output was renamed into place, before the previous
  one is marked obsolete (signals are held there);
* ``cleanup``: after the swap, as the temporary folder (holding the replaced output) is removed;
* ``enospc`` / ``erofs``: no pause; the second row batch write / the lock file fails with that error.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from typing import Any


def pause(ready: Path) -> None:
    ready.write_text(str(os.getpid()), encoding="utf-8")
    go = ready.with_name(ready.name + ".go")
    while not go.exists():
        time.sleep(0.01)


def install(point: str, ready: Path) -> None:
    from fastsft import safe_output as output
    from fastsft.data import pipeline
    from fastsft.data.rows import builder as rows
    from fastsft.data.store.disk_layout import ArrowStreamFile

    if point == "encode":
        original_add = rows.RowBuilder.add
        calls = {"n": 0}

        def add(self: Any, encoded: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                pause(ready)
            return original_add(self, encoded)

        rows.RowBuilder.add = add
    elif point == "save":
        original_save = pipeline.write_dataset_dict

        def write_dataset_dict(*args: Any, **kwargs: Any) -> None:
            original_save(*args, **kwargs)
            pause(ready)

        pipeline.write_dataset_dict = write_dataset_dict
    elif point == "swap":
        original_rename = output.rename_noreplace

        def rename_noreplace(source: Path, target: Path) -> None:
            if source.name == "dataset":
                pause(ready)
            original_rename(source, target)

        output.rename_noreplace = rename_noreplace
    elif point == "swapped":
        original_rename = output.rename_noreplace

        def rename_noreplace(source: Path, target: Path) -> None:
            original_rename(source, target)
            if source.name == "dataset":
                pause(ready)

        output.rename_noreplace = rename_noreplace
    elif point == "cleanup":
        import shutil

        original_rmtree = shutil.rmtree

        def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
            workdir = next((p for p in (Path(path), *Path(path).parents) if ".tmp-" in p.name), None)
            if (
                workdir is not None
                and (workdir / "owner.json").exists()
                and not (workdir / "dataset").exists()
            ):
                shutil.rmtree = original_rmtree  # pause once
                pause(ready)
            original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif point == "enospc":
        original_write = ArrowStreamFile.write
        calls = {"n": 0}

        def write(self: Any, *args: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            original_write(self, *args, **kwargs)

        ArrowStreamFile.write = write
    elif point == "erofs":

        def output_lock(path: Path, **kwargs: Any) -> Any:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path.parent / f".{path.name}.lock"))

        output.output_lock = output_lock
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    install(sys.argv[1], Path(sys.argv[2]))
    from fastsft.cli import main

    sys.exit(main(sys.argv[3:]))
