"""``output_dir``: checked before any work, locked for the run, cleared only of what fastsft wrote.

Beside and in ``OUTPUT`` (the ``output_dir``) a run keeps::

    .OUTPUT.lock              flock held by the main process for the whole run (holds its pid)
    OUTPUT/fastsft_train.json the run marker: written when a run starts, ``finished`` once the final
                              model is published (a rerun of a finished run then trains nothing)
    OUTPUT/.final.partial/    the final model, metrics and state before they are moved into OUTPUT

The lock, the path checks and the one-line OS errors are preprocess's (``fastsft.safe_output``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastsft.data.pipeline import data_inputs
from fastsft.errors import ConfigError
from fastsft.safe_output import check_output_path, output_lock, write_json_atomically
from fastsft.train.checkpoints import CHECKPOINT_NAME, checkpoints, is_fastsft_checkpoint, remove_partials
from fastsft.train.config import TrainConfig

__all__ = [
    "FINAL_PARTIAL",
    "NOT_SETTINGS",
    "RUN_MARKER",
    "check_output_dir",
    "check_overwritable",
    "clear_previous_run",
    "finished_run",
    "locked_output_dir",
    "mark_run",
    "publish_final",
    "read_marker",
    "run_settings",
]

RUN_MARKER = "fastsft_train.json"
FINAL_PARTIAL = ".final.partial"
WHAT = "output_dir"


def check_output_dir(config: TrainConfig) -> None:
    """Refuse an ``output_dir`` that is, holds or lies inside an input (the model folder, the tokenizer
    folder, ``dataset_dir``, a dataset file, ``tokenized_path``) or is the working directory or holds it."""
    data = config.data
    inputs: list[Path] = []
    for folder in (config.model_name_or_path, config.tokenizer_path):
        if folder and Path(folder).is_dir():
            inputs.append(Path(folder))
    if config.model_config:
        inputs += [Path(config.model_config), Path(config.model_config).parent]
    if data.tokenized_path:
        inputs.append(Path(data.tokenized_path))
    inputs += data_inputs(data)
    check_output_path(Path(str(config.output_dir)), inputs, what=WHAT)


@contextlib.contextmanager
def locked_output_dir(output_dir: Path, *, is_main: bool) -> Iterator[None]:
    """Hold ``output_dir``'s lock for the block (main process only): a second run fails at once with
    the first's pid."""
    if not is_main:
        yield
        return
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir, what=WHAT):
        yield


def read_marker(output_dir: Path) -> dict[str, Any] | None:
    """The run marker, ``None`` when absent or unreadable."""
    try:
        return json.loads((output_dir / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def mark_run(output_dir: Path, **record: Any) -> None:
    """Write the run marker (atomically): fastsft trains here, and whether the run finished."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output_dir / RUN_MARKER, record)


def check_overwritable(output_dir: Path) -> None:
    """For ``overwrite_output_dir``: refuse a non-empty folder fastsft did not train into, or one
    holding a ``checkpoint-N`` fastsft did not write (every process checks; nothing is changed)."""
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if read_marker(output_dir) is None:
        raise ConfigError(
            f"output_dir {output_dir} holds files fastsft did not write (it has no {RUN_MARKER}), so "
            "overwrite_output_dir would replace them; choose an empty or new output_dir"
        )
    foreign = [path for _, path in checkpoints(output_dir) if not is_fastsft_checkpoint(path)]
    if foreign:
        raise ConfigError(
            f"output_dir {output_dir} holds {foreign[0].name}, which fastsft did not write; "
            "move it elsewhere or choose another output_dir"
        )


def clear_previous_run(output_dir: Path, notice: Callable[[str], None]) -> None:
    """For ``overwrite_output_dir``: delete what a previous fastsft run wrote here (its checkpoints,
    unfinished saves, the final files its marker lists, and the marker) and nothing else, after
    ``check_overwritable``. A LoRA run after a full one must not leave the full model beside its adapter."""
    check_overwritable(output_dir)
    if not output_dir.is_dir():
        return
    for name in (read_marker(output_dir) or {}).get("published", []):
        path = output_dir / Path(name).name  # names of entries directly in output_dir, nothing else
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    remove_partials(output_dir, notice)
    shutil.rmtree(output_dir / FINAL_PARTIAL, ignore_errors=True)
    for _, path in checkpoints(output_dir):
        shutil.rmtree(path)
    (output_dir / RUN_MARKER).unlink(missing_ok=True)


# Keys that change neither the weights nor what is saved; every other one is compared with the
# settings a finished run recorded. The schedule (max_steps, num_train_epochs) is compared apart:
# a longer one resumes, as in LLaMA-Factory.
NOT_SETTINGS = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "max_steps",
        "num_train_epochs",
        "cpu_threads",
        "require_varlen_kernel",
        "plot_loss",
        "report_to",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "notices",
    }
)


def run_settings(config: TrainConfig) -> dict[str, Any]:
    """The keys that make a run what it is (model, data, method, optimisation), as JSON values."""
    values = {spec.name: getattr(config, spec.name) for spec in dataclasses.fields(config)}
    values.update({f"data.{key}": value for key, value in dataclasses.asdict(config.data).items()})
    del values["data"]
    settings = {key: value for key, value in values.items() if key not in NOT_SETTINGS}
    return json.loads(json.dumps(settings, default=str, sort_keys=True))


def finished_run(output_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The marker of a finished run in ``output_dir`` with the same schedule and no newer checkpoint,
    or ``None``: then there is something to train or publish. A finished run made with other
    settings is refused in one line naming them: training nothing, or publishing its last
    checkpoint as this run's model, would both be silently wrong."""
    marker = read_marker(output_dir)
    if not marker or not marker.get("finished"):
        return None
    recorded = marker.get("settings")
    if recorded is not None:
        current = run_settings(config)
        changed = sorted(key for key in {*recorded, *current} if recorded.get(key) != current.get(key))
        if changed:
            shown = ", ".join(f"{key}: {recorded.get(key)} -> {current.get(key)}" for key in changed[:4])
            raise ConfigError(
                f"output_dir {output_dir} holds a finished run made with other settings ({shown}"
                f"{', ...' if len(changed) > 4 else ''}); set overwrite_output_dir: true to replace it "
                "(deleting its checkpoints and model), or choose another output_dir"
            )
    if int(marker.get("global_step", 0)) < int(marker.get("planned_steps", 0) or 1 << 62):
        return None  # stopped early (a callback): the rerun trains on
    if config.max_steps > 0 and config.max_steps != marker.get("max_steps"):
        return None
    if config.max_steps <= 0 and config.num_train_epochs != marker.get("num_train_epochs"):
        return None
    newest = checkpoints(output_dir)
    if newest and newest[-1][0] > int(marker.get("global_step", 0)):
        return None
    return marker


def publish_final(staging: Path, output_dir: Path, record: dict[str, Any]) -> None:
    """Move every file of ``staging`` into ``output_dir`` (each by an atomic rename), then mark the
    run finished. A run stopped in between is not finished: the next one publishes again."""
    published = sorted({*record.get("published", []), *(source.name for source in staging.iterdir())})
    record = {**record, "published": published}
    mark_run(output_dir, **{**record, "finished": False})
    for source in sorted(staging.iterdir()):
        target = output_dir / source.name
        if (target.is_dir() and not target.is_symlink()) or CHECKPOINT_NAME.match(source.name):
            raise ConfigError(f"cannot publish the final {source.name}: {target} is a folder")
        os.replace(source, target)
    staging.rmdir()
    mark_run(output_dir, **{**record, "finished": True})
