"""Adapters load whole or not at all (issue 35): ``fastsft export`` and ``fastsft train
adapter_name_or_path=`` refuse, in one line naming the adapter, the first bad key and the cause, an
adapter that peft would load in part (fewer ``target_modules`` than trained, another layer naming,
another base, a changed ``r``, a damaged weights file), and warn when the base is not the adapter's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from fastsft.cli import main
from fastsft.errors import ConfigError
from fastsft.train.config import load_config
from fastsft.train.workflow import train

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens" / "train"
BASE_DIR = GOLDEN_DIR / "tiny_base"
ADAPTER = GOLDEN_DIR / "fastsft_adapters" / "lora_all"
WEIGHTS = "adapter_model.safetensors"

pytestmark = pytest.mark.usefixtures("repo_cwd")


def damaged(tmp_path: Path, how: str) -> tuple[Path, str]:
    """A copy of the committed adapter, damaged as ``how`` says, and the message it must give."""
    adapter = tmp_path / how
    shutil.copytree(ADAPTER, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    weights = load_file(adapter / WEIGHTS)
    if how == "fewer_targets":  # five trained modules are not listed: peft would drop them
        config["target_modules"] = ["q_proj", "v_proj"]
        message = (
            "fit no module of the model (first: base_model.model.model.layers.0.mlp.down_proj.lora_A.weight)"
        )
    elif how == "other_layout":  # another naming: peft would load nothing and merge nothing
        weights = {
            key.replace("model.model.layers", "model.model.decoder.layers"): t for key, t in weights.items()
        }
        message = "fit no module of the model (first: base_model.model.model.decoder.layers.0"
    elif how == "missing_weights":
        weights = {key: t for key, t in weights.items() if "layers.1." not in key}
        message = (
            "not in its weights file (first: base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight)"
        )
    elif how == "changed_r":
        config["r"] = 16
        message = "q_proj.lora_A.weight has shape [8, 64] in the file and [16, 64] in the model"
    elif how == "other_base":  # trained on a model with another hidden size
        weights = {
            key: torch.zeros(t.shape[0], 2 * t.shape[1]) if "lora_A" in key else t
            for key, t in weights.items()
        }
        message = "has shape [8, 128] in the file and [8, 64] in the model"
    elif how in ("truncated", "empty"):
        data = (adapter / WEIGHTS).read_bytes()
        (adapter / WEIGHTS).write_bytes(data[: len(data) // 2] if how == "truncated" else b"")
        return adapter, f"{adapter / WEIGHTS} is damaged or truncated"
    (adapter / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    save_file(weights, adapter / WEIGHTS)
    return adapter, message


def export_yaml(tmp_path: Path, **changes: str) -> Path:
    values = {
        "model_name_or_path": str(BASE_DIR),
        "adapter_name_or_path": str(ADAPTER),
        "export_dir": str(tmp_path / "merged"),
        **changes,
    }
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("fastsft export: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


HOWS = ["fewer_targets", "other_layout", "missing_weights", "changed_r", "other_base", "truncated", "empty"]


@pytest.mark.parametrize("how", HOWS)
def test_export_refuses_an_adapter_that_loads_only_in_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    adapter, message = damaged(tmp_path, how)
    assert main(["export", str(export_yaml(tmp_path, adapter_name_or_path=str(adapter)))]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"fastsft export: error: cannot load the adapter {adapter}: "), line
    assert message in line, line
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("how", ["fewer_targets", "other_layout", "changed_r", "truncated"])
def test_train_refuses_an_adapter_that_loads_only_in_part(tmp_path: Path, how: str) -> None:
    adapter, message = damaged(tmp_path, how)
    overrides = [
        f"output_dir={tmp_path / 'out'}", f"adapter_name_or_path={adapter}", "finetuning_type=lora",
        f"model_name_or_path={BASE_DIR}", "model_config=null", "max_steps=1", "plot_loss=false",
        "val_size=0", "eval_strategy=no", "max_samples=8",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=f"cannot load the adapter {adapter}: ") as refused:
        train(load_config(REPO_ROOT / "examples" / "tiny_sft.yaml", overrides))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_base_other_than_the_adapters_gets_one_warning_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other_base"  # same shapes, other weights
    shutil.copytree(BASE_DIR, other)
    weights = load_file(other / "model.safetensors")
    save_file(
        {key: t + 0.01 for key, t in weights.items()}, other / "model.safetensors", metadata={"format": "pt"}
    )
    assert main(["export", str(export_yaml(tmp_path, model_name_or_path=str(other)))]) == 0
    warnings = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("fastsft export: warning")
    ]
    assert warnings == [
        f"fastsft export: warning: adapter {ADAPTER} was trained on tests/goldens/train/tiny_base (its "
        f"base_model_name_or_path) and is loaded onto {other}: right if that is the same model elsewhere, "
        "wrong results otherwise"
    ]
    assert main(["export", str(export_yaml(tmp_path, export_dir=str(tmp_path / "again")))]) == 0
    assert "fastsft export: warning" not in capsys.readouterr().err  # the adapter's own base: no line


def test_export_checks_export_dir_and_paths_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    (tmp_path / "merged").mkdir()
    assert main(["export", str(export_yaml(tmp_path))]) == 2
    assert "already exists (pass --overwrite" in error_line(capsys.readouterr().err)
    missing = tmp_path / "no_such_model"
    assert (
        main(
            [
                "export",
                str(export_yaml(tmp_path, model_name_or_path=str(missing), export_dir=str(tmp_path / "x"))),
            ]
        )
        == 2
    )
    assert error_line(capsys.readouterr().err) == (
        f"fastsft export: error: model_name_or_path {missing}: no such file or folder"
    )


def test_exporting_without_an_adapter_says_what_export_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(export_yaml(tmp_path)), "adapter_name_or_path=null"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "fastsft export merges LoRA adapters into model_name_or_path; a full model needs no export" in line


def test_a_damaged_base_model_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base"
    shutil.copytree(BASE_DIR, base)
    data = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["export", str(export_yaml(tmp_path, model_name_or_path=str(base)))]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"cannot load the model from {base}: {base / 'model.safetensors'} is damaged or truncated" in line


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_a_full_disk_while_saving_the_export_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    small_filesystem: object,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    folder = tmp_path / "disk"
    with small_filesystem(folder, "size=300k" if how == "tmpfs" else None) as mounted:  # type: ignore[operator]
        if how == "tmpfs" and not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root); the injected case covers the error")
        if how == "injected":  # safetensors' own error, as a full disk gives it
            from safetensors import SafetensorError
            from transformers import modeling_utils

            def full(*args: object, **kwargs: object) -> None:
                raise SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"
                )

            monkeypatch.setattr(modeling_utils, "safe_save_file", full)
        assert main(["export", str(export_yaml(tmp_path, export_dir=str(folder / "merged")))]) == 2
        line = error_line(capsys.readouterr().err)
        assert line.startswith(f"fastsft export: error: cannot write {folder / 'merged'}: "), line
        assert "No space left on device (an export needs the merged model's size free" in line
        assert list(folder.iterdir()) == []


def test_a_failed_lora_run_on_model_config_leaves_its_base_marked_for_the_rerun(tmp_path: Path) -> None:
    """The random-init base is saved before the LoRA set-up can fail: the run marker lists it first,
    so the rerun neither refuses "files fastsft did not write" nor keeps a stale base beside it."""
    output = tmp_path / "out"
    overrides = [
        "finetuning_type=lora", f"output_dir={output}", "max_steps=1", "val_size=0",
        "eval_strategy=no", "plot_loss=false", "max_samples=8", "overwrite_output_dir=false",
    ]  # fmt: skip
    tiny = REPO_ROOT / "examples" / "tiny_sft.yaml"
    with pytest.raises(ConfigError, match="lora_target"):
        train(load_config(tiny, [*overrides, "lora_target=no_such_module"]))
    assert (output / "base_model").is_dir()
    marker = json.loads((output / "fastsft_train.json").read_text(encoding="utf-8"))
    assert marker["published"] == ["base_model"] and marker["finished"] is False
    assert train(load_config(tiny, overrides))["global_step"] == 1  # resumable without a checkpoint
    assert train(load_config(tiny, [*overrides, "overwrite_output_dir=true"]))["global_step"] == 1


def test_train_on_a_damaged_or_missing_base_model_is_one_line(tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(BASE_DIR, base)
    data = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(data[: len(data) // 2])
    overrides = [
        f"output_dir={tmp_path / 'out'}", "finetuning_type=lora", f"model_name_or_path={base}",
        "model_config=null", f"tokenizer_name_or_path={BASE_DIR}", "max_steps=1", "val_size=0",
        "eval_strategy=no", "max_samples=8",
    ]  # fmt: skip
    tiny = REPO_ROOT / "examples" / "tiny_sft.yaml"
    with pytest.raises(ConfigError, match=f"{base / 'model.safetensors'} is damaged or truncated"):
        train(load_config(tiny, overrides))
