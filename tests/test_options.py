"""The one data option spec: ``fastsft preprocess --config`` and ``fastsft train`` read every data key alike.

Each data key LLaMA-Factory's YAML may hold (and fastsft's own) is set to a non-default value and
read by both commands' readers; both must give the same ``DataArgs`` holding that value. An
end-to-end case checks ``enable_thinking: false`` on ``qwen3`` against LLaMA-Factory's golden.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastsft.cli import PREPROCESS_KEYS, _data_options, build_parser, main
from fastsft.data.data_args import DATA_KEYS, DataArgs
from fastsft.errors import ConfigError
from fastsft.train.config import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTHINK_GOLDEN = REPO_ROOT / "tests" / "goldens" / "fixture" / "qwen3__nothink.json.gz"
TRAIN_BASE = {
    "model_config": "examples/tiny/model/config.json",
    "tokenizer_name_or_path": "examples/tiny/tokenizer",
    "output_dir": "outputs/unused",
    "template": "qwen",
    "dataset": "tiny_sharegpt",
    "attn": "varlen",
}

# A value other than the default for every data key, with what it needs beside it.
NON_DEFAULT: dict[str, tuple[Any, dict[str, Any]]] = {
    "dataset": ("chat,math", {}),
    "dataset_dir": ("tests/data", {}),
    "template": ("qwen3", {}),
    "cutoff_len": (64, {}),
    "train_on_prompt": (True, {}),
    "mask_history": (True, {}),
    "packing": (True, {}),
    "neat_packing": (True, {}),
    "tool_format": ("glm4", {}),
    "default_system": ("Be brief.", {}),
    "enable_thinking": (False, {}),
    "preserve_thinking": (True, {}),
    "max_samples": (3, {}),
    "mix_strategy": ("interleave_under", {}),
    "interleave_probs": ([0.25, 0.75], {"mix_strategy": "interleave_over", "dataset": "chat,math"}),
    "val_size": (0.1, {}),
    "eval_dataset": ("math", {}),
    "eval_on_each_dataset": (True, {"eval_dataset": "chat,math"}),
    "seed": (7, {}),
    "preprocessing_batch_size": (7, {}),
    "preprocessing_num_workers": (2, {}),
    "streaming": (True, {"max_steps": 10}),
    "buffer_size": (64, {}),
    "tokenized_path": ("outputs/tokenized", {}),
    "packing_strategy": ("bfd", {"packing": True}),
    "backend": ("python", {}),
    "tokenizer_backend": ("hf", {}),
    "strict": (True, {}),
    "skip_malformed": (True, {}),
}


def preprocess_options(config: Path, *flags: str) -> DataArgs:
    """What ``fastsft preprocess --config FILE FLAGS`` would run with."""
    args = build_parser().parse_args(["preprocess", "--config", str(config), "--tokenizer", "tok", *flags])
    assert isinstance(args, argparse.Namespace)
    return _data_options(args, PREPROCESS_KEYS)[0]


def write_yaml(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def test_every_data_key_has_a_case() -> None:
    assert set(NON_DEFAULT) == set(DATA_KEYS)
    defaults = DataArgs()
    for key, (value, _) in NON_DEFAULT.items():
        assert getattr(defaults, key) != value, key


@pytest.mark.parametrize("key", DATA_KEYS)
def test_both_commands_read_a_data_key_alike(key: str, tmp_path: Path, repo_cwd: None) -> None:
    value, beside = NON_DEFAULT[key]
    values = {**TRAIN_BASE, **beside, key: value}
    config = write_yaml(tmp_path / "config.yaml", values)
    from_preprocess = preprocess_options(config)
    from_train = load_config(config).data
    assert getattr(from_preprocess, key) == value
    assert from_preprocess == from_train


def test_flags_override_the_config(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path / "config.yaml", {"dataset": "chat", "cutoff_len": 64, "enable_thinking": False}
    )
    options = preprocess_options(config, "--cutoff-len", "32", "--enable-thinking", "--workers", "3")
    assert (options.cutoff_len, options.enable_thinking, options.preprocessing_num_workers) == (32, True, 3)


def test_repeated_and_comma_separated_flags(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "config.yaml", {"dataset": "chat,math", "mix_strategy": "interleave_over"})
    options = preprocess_options(
        config,
        "--interleave-probs",
        "0.5,0.5",
        "--eval-dataset",
        "a",
        "--eval-dataset",
        "b",
        "--val-size",
        "0",
    )
    assert options.interleave_probs == [0.5, 0.5] and options.eval_dataset == "a,b"


def test_every_data_key_has_a_flag_with_help() -> None:
    pre = build_parser()._subparsers._group_actions[0].choices["preprocess"]  # type: ignore[union-attr]
    by_dest = {action.dest: action for action in pre._actions}
    for key in DATA_KEYS:
        assert key in by_dest, key
        assert by_dest[key].help, key


@pytest.mark.parametrize("command", ["preprocess", "train"])
def test_misspelt_key_fails_alike(command: str, tmp_path: Path, repo_cwd: None) -> None:
    config = write_yaml(tmp_path / "config.yaml", {**TRAIN_BASE, "cutof_len": 64})
    with pytest.raises(ConfigError, match=r"unknown config key `cutof_len`; did you mean cutoff_len"):
        preprocess_options(config) if command == "preprocess" else load_config(config)


def test_training_keys_are_checked_by_preprocess(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "config.yaml", {"dataset": "chat", "learning_rate": "fast"})
    with pytest.raises(ConfigError, match="`learning_rate` expects a number"):
        preprocess_options(config)
    fine = write_yaml(tmp_path / "fine.yaml", {"dataset": "chat", "learning_rate": 1e-5, "stage": "sft"})
    assert preprocess_options(fine).dataset == "chat"


def test_construction_imports_no_kernel_and_reads_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fastsft.kernels.compiled", None)  # importing it would fail
    args = DataArgs(dataset="nowhere", dataset_dir="/does/not/exist", template="qwen", backend="compiled")
    assert dataclasses.replace(args, cutoff_len=8).cutoff_len == 8


def load_nothink_golden() -> dict[str, Any]:
    with gzip.open(NOTHINK_GOLDEN, "rt", encoding="utf-8") as file:
        return json.load(file)


def golden_yaml(tmp_path: Path, golden: dict[str, Any], **extra: Any) -> Path:
    case = {key: value for key, value in golden["args"].items() if value is not None}
    case["dataset_dir"] = str(REPO_ROOT / case["dataset_dir"])
    return write_yaml(tmp_path / "lf.yaml", {"stage": "sft", "finetuning_type": "full", **case, **extra})


def test_preprocess_config_enable_thinking_false_matches_llamafactory(
    tmp_path: Path, fixture_tokenizer_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``enable_thinking: false`` in a LLaMA-Factory YAML reaches the template (it used to be dropped)."""
    from datasets import load_from_disk

    golden = load_nothink_golden()
    assert golden["args"]["template"] == "qwen3" and golden["args"]["enable_thinking"] is False
    output = tmp_path / "out"
    config = golden_yaml(
        tmp_path, golden, model_name_or_path=str(fixture_tokenizer_path), tokenized_path=str(output)
    )
    assert main(["preprocess", "--config", str(config), "--quiet"]) == 0, capsys.readouterr().err
    rows = load_from_disk(str(output))["train"].to_dict()
    for column in ("input_ids", "attention_mask", "labels"):
        assert rows[column] == golden["rows"][column], column


def test_train_data_section_enable_thinking_false_matches_llamafactory(
    tmp_path: Path, fixture_tokenizer_path: Path, repo_cwd: None
) -> None:
    from transformers import AutoTokenizer

    from fastsft.data.pipeline import build_dataset

    golden = load_nothink_golden()
    config = load_config(
        golden_yaml(
            tmp_path, golden, **{**TRAIN_BASE, "template": "qwen3", "dataset": golden["args"]["dataset"]}
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(str(fixture_tokenizer_path), local_files_only=True)
    dataset, _ = build_dataset(config.data, tokenizer)
    assert dataset.to_dict()["input_ids"] == golden["rows"]["input_ids"]
    assert dataset.to_dict()["labels"] == golden["rows"]["labels"]


def test_template_unset_follows_llamafactory(fixture_tokenizer_path: Path, test_data_dir: Path) -> None:
    """No ``template`` and a tokenizer without a chat template: LLaMA-Factory's ``empty`` template."""
    from transformers import AutoTokenizer

    from fastsft.data.pipeline import build_dataset

    def build(template: str | None) -> dict[str, Any]:
        tokenizer = AutoTokenizer.from_pretrained(str(fixture_tokenizer_path), local_files_only=True)
        assert not getattr(tokenizer, "chat_template", None)
        args = DataArgs(dataset="sharegpt_chat", dataset_dir=str(test_data_dir), template=template)
        return build_dataset(args, tokenizer)[0].to_dict()

    assert build(None) == build("empty")
