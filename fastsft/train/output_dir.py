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
    "HARMLESS_CHANGES",
    "RUN_MARKER",
    "changed_settings",
    "check_output_dir",
    "check_overwritable",
    "check_resumable",
    "clear_previous_run",
    "finished_run",
    "locked_output_dir",
    "mark_run",
    "publish_final",
    "read_marker",
    "record_published",
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


def record_published(output_dir: Path, name: str) -> None:
    """Add ``name`` (an entry of ``output_dir``) to the run marker's ``published`` list before it is
    written, creating an unfinished-run marker if there is none: whatever stops the run after that,
    a rerun knows the entry is fastsft's (``overwrite_output_dir`` removes it; no refusal)."""
    marker = read_marker(output_dir) or {"finished": False}
    published = marker.get("published", [])
    if name not in published:
        mark_run(output_dir, **{**marker, "published": [*published, name]})


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


# The keys a rerun or a resume may change: they cannot change the trained weights (worker counts,
# threads, the tokenizing backend, which fastsft keeps token-identical, logging, reporting, eval
# cadence, checkpoint cadence and rotation) or are the run's bookkeeping. Every other key, in
# ``data.`` for the data keys and ``training_args.`` for other TrainingArguments fields, is
# compared with the settings the run recorded. The schedule (max_steps, num_train_epochs) is
# compared apart: a longer one resumes, as in LLaMA-Factory.
HARMLESS_CHANGES = frozenset(
    {
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "notices",
        "max_steps", "num_train_epochs",
        "cpu_threads", "require_varlen_kernel",
        "data.preprocessing_num_workers", "data.backend", "data.tokenizer_backend",
        "plot_loss", "report_to", "logging_steps", "save_steps", "save_total_limit",
        "data.eval_on_each_dataset",
        *(
            f"training_args.{key}"
            for key in (
                "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
                "dataloader_prefetch_factor", "logging_strategy", "logging_first_step",
                "logging_nan_inf_filter", "run_name", "disable_tqdm", "report_to",
                "include_num_input_tokens_seen", "eval_strategy",
                "eval_steps", "eval_delay", "per_device_eval_batch_size", "eval_accumulation_steps",
                "do_eval", "save_strategy", "save_steps", "save_total_limit", "save_only_model",
                "ddp_timeout",
            )
        ),
    }
)  # fmt: skip


def run_settings(config: TrainConfig) -> dict[str, Any]:
    """The keys that make a run what it is (model, data, method, optimisation), as JSON values."""
    values = {spec.name: getattr(config, spec.name) for spec in dataclasses.fields(config)}
    values.update({f"data.{key}": value for key, value in dataclasses.asdict(config.data).items()})
    values["data.packing_shards"] = config.data.packing_shards  # the worker count's part in the rows
    values.update({f"training_args.{key}": value for key, value in config.extra_training_args.items()})
    del values["data"], values["extra_training_args"]
    settings = {key: value for key, value in values.items() if key not in HARMLESS_CHANGES}
    return json.loads(json.dumps(settings, default=str, sort_keys=True))


def changed_settings(recorded: dict[str, Any], config: TrainConfig) -> str | None:
    """The settings ``config`` changes against ``recorded`` (a run marker's), as ``key: old -> new``
    for the first four, or ``None``. Keys only one side has are compared for TrainingArguments
    (absent means the default); other keys only one fastsft version knows are not."""
    current = run_settings(config)
    keys = {key for key in recorded.keys() & current.keys() if key not in HARMLESS_CHANGES}
    keys |= {key for key in recorded.keys() ^ current.keys() if key.startswith("training_args.")}
    changed = sorted(key for key in keys - HARMLESS_CHANGES if recorded.get(key) != current.get(key))
    if not changed:
        return None
    shown = ", ".join(f"{key}: {recorded.get(key)} -> {current.get(key)}" for key in changed[:4])
    return shown + (", ..." if len(changed) > 4 else "")


def check_resumable(checkpoint: Path, config: TrainConfig) -> None:
    """Refuse to resume ``checkpoint`` with settings other than those its run recorded (the marker in
    its folder), in one line naming them: a resume would apply them to the remaining steps only, or
    not at all (the optimizer's saved learning rate wins), and a changed model shape cannot load."""
    marker = read_marker(checkpoint.parent)
    recorded = (marker or {}).get("settings")
    if recorded is None:
        return
    changed = changed_settings(recorded, config)
    if changed is None:
        return
    start = "adapter_name_or_path" if recorded.get("finetuning_type") == "lora" else "model_name_or_path"
    raise ConfigError(
        f"cannot resume from {checkpoint}: its run was made with other settings ({changed}), which a "
        "resume would apply to the remaining steps only; rerun with that run's settings to continue it, "
        f"or choose a new output_dir to train with these ({start}={checkpoint} there starts from its weights)"
    )


def finished_run(output_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The marker of a finished run in ``output_dir`` with the same schedule and no newer checkpoint,
    or ``None``: then there is something to train or publish. A finished run made with other
    settings is refused in one line naming them: training nothing, or publishing its last
    checkpoint as this run's model, would both be silently wrong."""
    marker = read_marker(output_dir)
    if not marker or not marker.get("finished"):
        return None
    recorded = marker.get("settings")
    changed = None if recorded is None else changed_settings(recorded, config)
    if changed is not None:
        raise ConfigError(
            f"output_dir {output_dir} holds a finished run made with other settings ({changed}); "
            "choose a new output_dir to train with these, or set overwrite_output_dir: true to replace "
            "it (deleting its checkpoints and model)"
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
