"""Checkpoints that are complete or absent: atomic publishing, integrity checks, resume selection, rotation.

A checkpoint is written into ``output_dir/.checkpoint-N.partial/checkpoint-N`` (every rank's
files, then a barrier), given the marker ``fastsft_checkpoint.json`` (each file's size), and only
then renamed to ``output_dir/checkpoint-N``. So a ``checkpoint-N`` folder that fastsft wrote is
complete; a killed save leaves only a ``.partial`` folder, which the next run removes (it holds
an owner file, so it is known to be fastsft's). A checkpoint damaged later (a truncated or
deleted file) is refused by ``checkpoint_problem`` in one line naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastsft.errors import FastSFTError
from fastsft.safe_output import os_error_line, rename_noreplace, write_json_atomically

__all__ = [
    "CHECKPOINT_MARKER",
    "CHECKPOINT_NAME",
    "PARTIAL_OWNER",
    "PREFIX",
    "TRAINER_STATE",
    "CheckpointError",
    "checkpoint_problem",
    "checkpoint_state",
    "checkpoints",
    "is_fastsft_checkpoint",
    "mark_checkpoint",
    "mark_partial",
    "newest_intact",
    "partial_folder",
    "publish_checkpoint",
    "remove_partials",
    "rotate_checkpoints",
    "save_error_line",
    "select_resume",
]

PREFIX = "checkpoint"
CHECKPOINT_MARKER = "fastsft_checkpoint.json"
PARTIAL_OWNER = "fastsft_partial.json"  # in a .checkpoint-N.partial folder: whose it is
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_NAME = re.compile(r"^\.checkpoint-(\d+)\.partial$")
SPACE_HINT = "a checkpoint needs the space of the model and optimizer states free in output_dir"
# A full model's weights, or a LoRA adapter's (finetuning_type: lora saves only the adapter).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


class CheckpointError(FastSFTError):
    """A checkpoint that cannot be resumed from (missing or damaged file), or one that could not be written."""


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` folder of ``output_dir`` as ``(N, path)``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir() and not path.is_symlink():
            found.append((int(match.group(1)), path))
    return sorted(found)


def is_fastsft_checkpoint(path: Path) -> bool:
    """Whether fastsft published ``path`` (it holds the checkpoint marker)."""
    return (path / CHECKPOINT_MARKER).is_file()


def partial_folder(output_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before it is published (the same path on every rank)."""
    return output_dir / f".checkpoint-{step}.partial"


def mark_partial(folder: Path) -> None:
    """Mark a partial folder as fastsft's (with this process's pid), so a later run may remove it."""
    write_json_atomically(folder / PARTIAL_OWNER, {"pid": os.getpid()})


def save_error_line(err: BaseException, target: Path, partial: Path) -> str:
    """A failed checkpoint save as one line: the checkpoint, the cause, and a hint (full disk, read-only,
    permissions). safetensors and torch report a full disk without an ``errno``; the free space tells."""
    if isinstance(err, OSError) and err.errno is not None:
        line = os_error_line(err, f"save {target}", what="output_dir", space_hint=SPACE_HINT)
        return f"{line}; the previous checkpoints are kept"
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "No space left" in cause or "code: 28" in cause or _nearly_full(partial.parent):
        cause = f"{os.strerror(errno.ENOSPC)} ({SPACE_HINT}; {cause})"
    return f"cannot save {target}: {cause}; the previous checkpoints are kept"


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def mark_checkpoint(folder: Path, step: int, *, model_only: bool) -> None:
    """Record every file's size in ``folder``'s marker, written last: the checkpoint is complete
    (``model_only``: saved with ``save_only_model``, no optimizer, scheduler or RNG state)."""
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != CHECKPOINT_MARKER
    }
    write_json_atomically(
        folder / CHECKPOINT_MARKER, {"step": step, "model_only": model_only, "files": files}
    )


def publish_checkpoint(folder: Path, target: Path) -> None:
    """Rename the complete checkpoint ``folder`` to ``target``; a folder already there that fastsft
    wrote (the same step saved again after a resume from an older one) is replaced, anything else is not."""
    if os.path.lexists(target):
        if not is_fastsft_checkpoint(target):
            raise CheckpointError(
                f"cannot publish {target}: a folder that fastsft did not write is in the way; move it elsewhere"
            )
        aside = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
        rename_noreplace(folder, target)
        shutil.rmtree(aside, ignore_errors=True)
        return
    rename_noreplace(folder, target)


def remove_partials(output_dir: Path, notice: Callable[[str], None]) -> None:
    """Remove the ``.checkpoint-N.partial`` folders a killed save left in ``output_dir`` (the caller
    holds the output lock, so no run is writing them); one without fastsft's owner file is named and kept."""
    if not output_dir.is_dir():
        return
    for path in sorted(output_dir.iterdir()):
        if not PARTIAL_NAME.match(path.name) and not path.name.endswith(".replaced"):
            continue
        if path.name.endswith(".replaced") and not is_fastsft_checkpoint(path):
            continue
        if PARTIAL_NAME.match(path.name) and not (path / PARTIAL_OWNER).is_file():
            notice(f"left {path} in place: fastsft did not write it")
            continue
        shutil.rmtree(path, ignore_errors=True)
        notice(f"removed {path}, an unfinished checkpoint save of an interrupted run")


def checkpoint_state(path: Path) -> dict[str, Any]:
    """The checkpoint's ``trainer_state.json`` (assumes ``checkpoint_problem`` found none)."""
    return json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (naming the file), or ``None`` when it is intact.

    A fastsft checkpoint is checked against its marker (every file present, at its recorded size);
    any checkpoint must hold the trainer state (valid JSON), model weights, and, unless it was
    saved with ``save_only_model``, the optimizer, scheduler and RNG states (DeepSpeed: its
    ``global_step*`` folder); ``.pt``/``.pth``/``.bin`` files must be whole zip archives and
    ``.safetensors`` files as long as their header says.
    """
    if not path.is_dir():
        return f"{path} is not a folder"
    marker = path / CHECKPOINT_MARKER
    model_only = False
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
            files, model_only = dict(recorded["files"]), bool(recorded["model_only"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"{marker} is damaged"
        for name, size in files.items():
            file = path / name
            if not file.is_file():
                return f"{file} is missing"
            if file.stat().st_size != size:
                return f"{file} is damaged ({file.stat().st_size} bytes, {size} when saved)"
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        return f"{state_file} is missing (not a checkpoint folder?)"
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{state_file} is damaged ({str(err).splitlines()[0]})"
    deepspeed = _deepspeed_folder(path)
    if not any((path / name).is_file() for name in WEIGHT_FILES) and deepspeed is None:
        return f"{path} holds no model weights ({' or '.join(WEIGHT_FILES)})"
    if not model_only and deepspeed is None:  # DeepSpeed keeps these in its global_step folder
        for name in ("optimizer.pt", "scheduler.pt"):
            if not (path / name).is_file():
                return f"{path / name} is missing"
    if not model_only and not any(path.glob("rng_state*.pth")):
        return f"{path / 'rng_state.pth'} is missing"
    for file in sorted(path.rglob("*")):
        problem = _file_problem(file)
        if problem:
            return f"{file} is damaged ({problem})"
    return None


def _deepspeed_folder(path: Path) -> Path | None:
    latest = path / "latest"
    if not latest.is_file():
        return None
    folder = path / latest.read_text(encoding="utf-8").strip()
    return folder if folder.is_dir() else None


def _file_problem(file: Path) -> str | None:
    """A structural check that reads only a file's header or directory: truncation shows."""
    if not file.is_file():
        return None
    if file.suffix in (".pt", ".pth", ".bin"):
        try:
            with zipfile.ZipFile(file) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as err:
            return f"not a whole torch file: {err}"
    elif file.suffix == ".safetensors":
        with open(file, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "truncated"
            (header_size,) = struct.unpack("<Q", head)
            try:
                header = json.loads(handle.read(header_size))
            except ValueError:
                return "its header is unreadable"
        end = max(
            (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0
        )
        if file.stat().st_size < 8 + header_size + end:
            return f"truncated: {file.stat().st_size} bytes of {8 + header_size + end}"
    return None


def newest_intact(output_dir: Path, below: int | None = None) -> Path | None:
    """The newest checkpoint of ``output_dir`` (older than step ``below``, if given) that is intact."""
    for step, path in reversed(checkpoints(output_dir)):
        if (below is None or step < below) and checkpoint_problem(path) is None:
            return path
    return None


def select_resume(output_dir: Path, explicit: Path | None = None) -> Path | None:
    """The checkpoint to resume from: ``explicit``, else the newest in ``output_dir``; refused with one
    line naming the damaged file and the newest intact checkpoint when it is not intact."""
    if explicit is not None:
        chosen = explicit
    else:
        found = checkpoints(output_dir)
        if not found:
            return None
        chosen = found[-1][1]
    problem = checkpoint_problem(chosen)
    if problem is None:
        return chosen
    match = CHECKPOINT_NAME.match(chosen.name)
    intact = newest_intact(chosen.parent, int(match.group(1)) if match else None)
    advice = (
        f"the newest intact checkpoint is {intact} (resume_from_checkpoint={intact} continues from it)"
        if intact
        else "no intact checkpoint is older"
    )
    raise CheckpointError(f"cannot resume from {chosen}: {problem}; {advice}")


def rotate_checkpoints(output_dir: Path, limit: int | None, best: str | None) -> None:
    """Keep the newest ``limit`` checkpoints that fastsft wrote (and the best one); never touch others."""
    if not limit or limit <= 0:
        return
    ours = [path for _, path in checkpoints(output_dir) if is_fastsft_checkpoint(path)]
    protected = {ours[-1]} if ours else set()
    if best:
        protected.add(Path(best))
    keep = max(limit, len(protected))
    remaining = len(ours)
    for path in ours:
        if remaining <= keep:
            break
        if path in protected:
            continue
        shutil.rmtree(path, ignore_errors=True)
        remaining -= 1
