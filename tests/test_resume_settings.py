"""Resuming applies no changed setting silently (issues 35 and 31): a resume, like a rerun of a
finished run, refuses changed training settings in one line naming the keys and offering a way
on that keeps the run (its own settings, or a new output_dir), and accepts the changes that cannot
change the result (``HARMLESS_CHANGES``: worker counts, logging, reporting, eval and save cadence)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from fastsft.errors import ConfigError
from fastsft.train.config import load_config
from fastsft.train.output_dir import HARMLESS_CHANGES, run_settings
from fastsft.train.workflow import train

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = REPO_ROOT / "examples" / "tiny_sft.yaml"
BASE = ["max_steps=4", "save_steps=2", "save_total_limit=null", "logging_steps=1", "plot_loss=false"]
BASE += ["val_size=0", "eval_strategy=no", "max_samples=40", "cpu_threads=1", "overwrite_output_dir=false"]

pytestmark = pytest.mark.usefixtures("repo_cwd")


def unfinished(tmp_path: Path, source: Path) -> Path:
    """A copy of ``source`` as a run stopped after checkpoint-2 leaves it."""
    output = tmp_path / "out"
    shutil.copytree(source, output)
    shutil.rmtree(output / "checkpoint-4")
    marker = json.loads((output / "fastsft_train.json").read_text(encoding="utf-8"))
    (output / "fastsft_train.json").write_text(json.dumps({**marker, "finished": False}), encoding="utf-8")
    return output


def trained(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> Path:
    output = tmp_path_factory.mktemp("run") / "out"
    train(load_config(TINY, [*BASE, f"output_dir={output}", *extra]))
    return output


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained(tmp_path_factory)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained(tmp_path_factory, "finetuning_type=lora")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (["learning_rate=1.0"], "learning_rate: 0.003 -> 1.0"),  # would be ignored: the optimizer state wins
        (["cutoff_len=64"], "data.cutoff_len: 512 -> 64"),  # would apply to the remaining steps only
        (["weight_decay=0.1"], "training_args.weight_decay: None -> 0.1"),
        # LLaMA-Factory packs each of its preprocessing_num_workers shards apart: other rows
        (["preprocessing_num_workers=2"], "data.packing_shards: 1 -> 2"),
    ],
)
def test_a_resume_with_changed_settings_is_refused_naming_them(
    tmp_path: Path, full_run: Path, changes: list[str], named: str
) -> None:
    output = unfinished(tmp_path, full_run)
    with pytest.raises(ConfigError) as refused:
        train(load_config(TINY, [*BASE, f"output_dir={output}", *changes]))
    message = str(refused.value)
    assert message.startswith(
        f"cannot resume from {output / 'checkpoint-2'}: its run was made with other settings ({named})"
    )
    assert "choose a new output_dir to train with these" in message and "\n" not in message
    assert not (output / "checkpoint-4").exists()  # nothing trained


@pytest.mark.parametrize(
    ("changes", "named"),
    [(["lora_rank=4"], "lora_rank: 8 -> 4"), (["lora_target=q_proj"], "lora_target: all -> q_proj")],
)
def test_resuming_lora_with_another_rank_or_target_is_one_line(
    tmp_path: Path, lora_run: Path, changes: list[str], named: str
) -> None:
    output = unfinished(tmp_path, lora_run)
    with pytest.raises(ConfigError, match=f"other settings \\({named}\\).*adapter_name_or_path="):
        train(load_config(TINY, [*BASE, f"output_dir={output}", "finetuning_type=lora", *changes]))


HARMLESS = [
    "dataloader_num_workers=1", "logging_steps=2", "report_to=none",
    "save_total_limit=5", "eval_steps=7", "save_steps=3",
]  # fmt: skip


def test_a_resume_accepts_changes_that_cannot_change_the_result(tmp_path: Path, full_run: Path) -> None:
    output = unfinished(tmp_path, full_run)
    metrics = train(load_config(TINY, [*BASE, f"output_dir={output}", *HARMLESS]))
    assert metrics["global_step"] == 4
    reference = hashlib.sha256((full_run / "model.safetensors").read_bytes()).hexdigest()
    assert (
        hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest() == reference
    )  # resumed exactly


def test_a_finished_run_rerun_with_harmless_changes_is_not_refused(
    tmp_path: Path, full_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    shutil.copytree(full_run, output)
    assert train(load_config(TINY, [*BASE, f"output_dir={output}", *HARMLESS])) == {"global_step": 4}
    assert "already holds this run" in capsys.readouterr().out


def test_a_checkpoint_resumed_into_a_new_output_dir_is_checked_against_its_run(
    tmp_path: Path, full_run: Path
) -> None:
    source = unfinished(tmp_path, full_run)
    overrides = [*BASE, f"output_dir={tmp_path / 'new'}", f"resume_from_checkpoint={source / 'checkpoint-2'}"]
    with pytest.raises(ConfigError, match=re.escape("learning_rate: 0.003 -> 1.0")):
        train(load_config(TINY, [*overrides, "learning_rate=1.0"]))
    assert train(load_config(TINY, overrides))["global_step"] == 4


def test_the_harmless_keys_are_settings_a_user_can_give() -> None:
    """Each declared key names a real option (a typo would silently compare it)."""
    import dataclasses

    from fastsft.data.data_args import DataArgs
    from fastsft.train.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)} | {
        f"data.{f.name}" for f in dataclasses.fields(DataArgs)
    }
    from transformers import TrainingArguments

    fields |= {f"training_args.{f.name}" for f in dataclasses.fields(TrainingArguments)}
    assert fields >= HARMLESS_CHANGES, HARMLESS_CHANGES - fields


def test_the_worker_count_is_harmless_where_it_cannot_change_the_rows() -> None:
    """Unpacked, or packed by fastsft's bfd, the rows are the same for any preprocessing_num_workers."""
    for packing in (["packing=false"], ["packing_strategy=bfd"]):
        settings = [
            run_settings(load_config(TINY, [*BASE, *packing, f"preprocessing_num_workers={n}"]))
            for n in (1, 16)
        ]
        assert settings[0] == settings[1], packing
