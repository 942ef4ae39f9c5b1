"""``fastsft train`` configuration: YAML + typed overrides, LLaMA-Factory keys, clear one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastsft.errors import ConfigError
from fastsft.train.adapter import split_names
from fastsft.train.config import (
    DEEPSPEED_DIR,
    IGNORED_KEYS,
    LLAMAFACTORY_UNSUPPORTED,
    LLAMAFACTORY_UNSUPPORTED_PREFIXES,
    REQUIRED_VALUES,
    TrainConfig,
    config_from_mapping,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_YAML = REPO_ROOT / "examples" / "tiny_sft.yaml"
LF_YAML = REPO_ROOT / "examples" / "llamafactory_full_sft.yaml"

pytestmark = pytest.mark.usefixtures("repo_cwd")


def minimal(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model_config": "examples/tiny/model/config.json",
        "tokenizer_name_or_path": "examples/tiny/tokenizer",
        "dataset": "tiny_sharegpt",
        "template": "qwen",
        "output_dir": "outputs/unused",
    }
    base.update(values)
    return base


def test_tiny_yaml_is_typed_by_the_dataclass() -> None:
    config = load_config(TINY_YAML)
    assert isinstance(config, TrainConfig)
    assert config.data.cutoff_len == 512 and isinstance(config.data.cutoff_len, int)
    assert config.data.packing is True
    assert config.learning_rate == pytest.approx(3e-3) and isinstance(config.learning_rate, float)
    assert config.attn == "auto" and config.uses_varlen_batches
    assert config.notices == [] and config.data.val_size == 0.05
    assert config.extra_training_args == {
        "eval_strategy": "steps",
        "eval_steps": 25,
        "per_device_eval_batch_size": 4,
    }


def test_overrides_are_typed_like_the_yaml() -> None:
    config = load_config(
        TINY_YAML,
        [
            "max_steps=20",
            "learning_rate=1e-4",
            "bf16=true",
            "packing=false",
            "attn=eager",
            "max_samples=null",
            "logging_steps=0.1",
            "output_dir=elsewhere",
        ],
    )
    assert config.max_steps == 20 and isinstance(config.max_steps, int)
    assert config.learning_rate == pytest.approx(1e-4)
    assert config.bf16 is True and config.data.packing is False and config.attn == "eager"
    assert config.data.max_samples is None
    assert config.logging_steps == pytest.approx(0.1)
    assert config.output_dir == "elsewhere"


def test_resume_from_checkpoint_is_bool_or_path(tmp_path: Path) -> None:
    assert load_config(TINY_YAML, ["resume_from_checkpoint=true"]).resume_from_checkpoint is True
    assert load_config(TINY_YAML, ["resume_from_checkpoint=false"]).resume_from_checkpoint is False
    assert load_config(TINY_YAML, ["resume_from_checkpoint=null"]).resume_from_checkpoint is None
    config = load_config(TINY_YAML, [f"resume_from_checkpoint={tmp_path}"])
    assert config.resume_from_checkpoint == str(tmp_path)
    with pytest.raises(ConfigError, match="resume_from_checkpoint folder not found"):
        load_config(TINY_YAML, [f"resume_from_checkpoint={tmp_path / 'missing'}"])


def test_yaml_scientific_notation_without_dot_is_a_float() -> None:
    # PyYAML reads `1e-5` (no dot) as a string; the dataclass type still makes it a float.
    assert config_from_mapping(minimal(learning_rate="1e-5")).learning_rate == pytest.approx(1e-5)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("learning_rat", "learning_rate"),
        ("per_device_batch_size", "per_device_train_batch_size"),
        ("cutof_len", "cutoff_len"),
        ("model_name_or_pth", "model_name_or_path"),
    ],
)
def test_unknown_key_names_the_closest_valid_keys(key: str, suggestion: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"unknown config key `{key}`; did you mean .*{suggestion}"
    ) as info:
        load_config(TINY_YAML, [f"{key}=1"])
    names = str(info.value).split("did you mean ")[1].rstrip("?").split(", ")
    assert len(names) == len(set(names))  # fastsft's keys and TrainingArguments' overlap


def test_unknown_key_without_close_match_points_to_help() -> None:
    with pytest.raises(ConfigError, match="see `fastsft train --help`"):
        load_config(TINY_YAML, ["zzzzzz=1"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("max_steps=abc", "`max_steps` expects an integer, got 'abc'"),
        ("max_steps=1.5", "`max_steps` expects an integer"),
        ("bf16=maybe", "`bf16` expects true or false"),
        ("learning_rate=fast", "`learning_rate` expects a number"),
        ("attn=flash", "`attn` expects one of auto, sdpa, eager, varlen, flash_attention_2"),
        ("cutoff_len=null", "`cutoff_len` expects an integer"),
    ],
)
def test_bad_value_type_is_one_clear_line(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY_YAML, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_yaml_value_type() -> None:
    with pytest.raises(ConfigError, match="`packing` expects true or false or null, got 'sometimes'"):
        config_from_mapping(minimal(packing="sometimes"))
    with pytest.raises(ConfigError, match="`per_device_train_batch_size` expects an integer, got 'true'"):
        config_from_mapping(minimal(per_device_train_batch_size=True))


def test_missing_model() -> None:
    values = minimal()
    del values["model_config"]
    with pytest.raises(ConfigError, match="no model given: set model_name_or_path"):
        config_from_mapping(values)


def test_model_config_must_exist_and_needs_a_tokenizer() -> None:
    with pytest.raises(ConfigError, match="model_config not found"):
        config_from_mapping(minimal(model_config="nowhere/config.json"))
    values = minimal()
    del values["tokenizer_name_or_path"]
    with pytest.raises(ConfigError, match="no tokenizer given"):
        config_from_mapping(values)
    with pytest.raises(ConfigError, match="not both"):
        config_from_mapping(minimal(model_name_or_path="Qwen/Qwen2.5-0.5B"))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"output_dir": None}, "no output_dir given"),
        ({"dataset": None}, "no dataset given"),
        ({"bf16": True, "fp16": True}, "only one of bf16 and fp16"),
        ({"packing": True, "attn": "sdpa"}, "packing needs attn: varlen or flash_attention_2"),
        ({"padding_free": True, "attn": "eager"}, "padding_free needs attn: varlen"),
        ({"gradient_accumulation_steps": 0}, "`gradient_accumulation_steps` must be at least 1"),
        ({"max_tokens_per_batch": 0}, "`max_tokens_per_batch` must be at least 1"),
        ({"loss_chunk_tokens": 0}, "`loss_chunk_tokens` must be at least 1"),
        ({"cpu_threads": 0}, "`cpu_threads` must be at least 1"),
        ({"warmup_ratio": 1.5}, "`warmup_ratio` must be in [0, 1)"),
        ({"warmup_ratio": 0.1, "warmup_steps": 10}, "only one of warmup_ratio and warmup_steps"),
        ({"deepspeed": "nowhere.json"}, "deepspeed config not found: nowhere.json"),
    ],
)
def test_inconsistent_values(values: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(minimal(**values))
    assert expected in str(info.value)


def test_neat_packing_implies_packing() -> None:
    config = config_from_mapping(minimal(neat_packing=True))
    assert config.data.packing is True and config.uses_varlen_batches


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(TINY_YAML, ["max_steps"])


def test_missing_or_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_llamafactory_full_sft_yaml_eval_comments_describe_keys_that_load() -> None:
    """The example's commented eval keys, uncommented, load: its comments say what the code does."""
    import yaml

    text = LF_YAML.read_text(encoding="utf-8")
    eval_section = text.split("### eval", 1)[1]
    commented = [line[2:].split("(")[0] for line in eval_section.splitlines() if line.startswith("# ")]
    values = {**yaml.safe_load(text), **yaml.safe_load("\n".join(commented))}
    config = load_config(None, [f"{key}={value}" for key, value in values.items() if value is not None])
    assert config.data.val_size == 0.1
    assert "is an error" not in eval_section


def test_llamafactory_full_sft_yaml_loads_with_notices() -> None:
    config = load_config(LF_YAML)
    assert config.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert any("stage: sft" in notice for notice in config.notices)
    assert config.finetuning_type == "full"
    assert any("overwrite_cache" in notice for notice in config.notices)
    # HF TrainingArguments fields pass through, typed by TrainingArguments.
    assert config.extra_training_args == {
        "dataloader_num_workers": 2,
        "save_only_model": False,
        "ddp_timeout": 180000000,
    }
    assert config.data.preprocessing_num_workers == 4
    assert config.deepspeed == "examples/deepspeed/ds_z3_config.json"
    assert config.gradient_checkpointing is True  # LLaMA-Factory's default


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"stage": "dpo"}, "`stage: dpo` is not supported: fastsft train does supervised fine-tuning only"),
        ({"finetuning_type": "oft"}, "`finetuning_type` expects one of full, lora, freeze"),
        ({"lora_rank": 8}, "`lora_rank` is a LoRA key but no finetuning_type is set"),
        ({"finetuning_type": "full", "use_dora": True}, "`use_dora` is only valid for LoRA training"),
        ({"finetuning_type": "freeze", "adapter_name_or_path": "a"}, "only valid for LoRA training"),
        ({"quantization_bit": 4}, "`quantization_bit` (QLoRA) "),
        ({"pissa_init": True}, "LLaMA-Factory option `pissa_init` is not supported by fastsft train"),
        ({"loraplus_lr_ratio": 16.0}, "LLaMA-Factory option `loraplus_lr_ratio` is not supported"),
        ({"freeze_vision_tower": False}, "`freeze_vision_tower: false` is not supported: fastsft train"),
        ({"finetuning_type": "lora", "lora_rank": 0}, "`lora_rank` must be at least 1"),
        ({"do_train": False}, "`do_train: false` is not supported"),
        ({"predict_with_generate": True}, "`predict_with_generate: true` is not supported"),
        (
            {"compute_accuracy": True},
            "`compute_accuracy: true` is not supported: fastsft train evaluates the loss",
        ),
        ({"eval_num_beams": 4}, "LLaMA-Factory option `eval_num_beams` is not supported"),
        (
            {"enable_liger_kernel": True},
            "`enable_liger_kernel: true` is not supported: fastsft train does not load Liger kernels",
        ),
        ({"use_unsloth": True}, "`use_unsloth: true` is not supported: fastsft train does not use Unsloth"),
        ({"shift_attn": True}, "`shift_attn: true` is not supported: LongLoRA's shifted sparse attention"),
        (
            {"resize_vocab": True},
            "`resize_vocab: true` is not supported: fastsft train keeps the tokenizer's",
        ),
        ({"eval_strategy": "steps"}, "evaluation (do_eval / eval_strategy) needs val_size or eval_dataset"),
        ({"do_eval": True}, "evaluation (do_eval / eval_strategy) needs val_size or eval_dataset"),
        ({"val_size": 0.1, "eval_dataset": "x"}, "set either `val_size` or `eval_dataset`, not both"),
        ({"interleave_probs": "0.5,0.5"}, "`interleave_probs` needs an interleave `mix_strategy`"),
        (
            {"mix_strategy": "interleave_under", "interleave_probs": "0.5,0.5"},
            "`interleave_probs` has 2 values for 1 `dataset` entries",
        ),
        ({"mix_strategy": "mixed"}, "`mix_strategy` expects one of concat, interleave_under"),
        ({"flash_attn": "fa3"}, "`flash_attn: fa3` is not supported"),
        ({"remove_unused_columns": True}, "`remove_unused_columns` is set by fastsft train itself"),
    ],
)
def test_unsupported_llamafactory_keys_fail_clearly(values: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(minimal(**values))
    assert expected in str(info.value)


def refused_keys() -> list[tuple[str, object]]:
    """Every key the tables refuse, with a value they refuse."""
    wrong = {str: "other", bool: None, type(None): "something", float: 0.5}
    cases = [
        (key, wrong[type(expected)] if not isinstance(expected, bool) else not expected)
        for key, (expected, _) in REQUIRED_VALUES.items()
    ]
    cases += [(key, 1) for key in sorted(LLAMAFACTORY_UNSUPPORTED)]
    cases += [(prefix + "x", 1) for prefix in LLAMAFACTORY_UNSUPPORTED_PREFIXES]
    return cases


@pytest.mark.parametrize(("key", "value"), refused_keys())
def test_every_refused_key_fails_with_one_line(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(minimal(**{key: value}))
    message = str(info.value)
    assert "\n" not in message and f"`{key}" in message, message


def test_eval_and_mixing_keys_are_no_longer_refused() -> None:
    refused = set(REQUIRED_VALUES) | set(IGNORED_KEYS) | LLAMAFACTORY_UNSUPPORTED
    eval_keys = {"val_size", "eval_dataset", "eval_on_each_dataset", "mix_strategy", "interleave_probs"}
    eval_keys |= {"eval_strategy", "eval_steps", "per_device_eval_batch_size", "do_eval"}
    assert not refused & eval_keys
    config = config_from_mapping(
        minimal(
            val_size=0.1,
            eval_strategy="steps",
            eval_steps=5,
            per_device_eval_batch_size=2,
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            save_steps=10,
        )
    )
    assert config.data.val_size == 0.1
    assert config.extra_training_args == {
        "eval_strategy": "steps",
        "eval_steps": 5,
        "per_device_eval_batch_size": 2,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
    }


def test_harmless_llamafactory_keys() -> None:
    config = config_from_mapping(
        minimal(
            stage="sft",
            do_train=True,
            finetuning_type="full",
            val_size=0,
            eval_dataset=None,
            plot_loss=False,
            overwrite_cache=True,
            preprocessing_num_workers=8,
            flash_attn="fa2",
            disable_gradient_checkpointing=True,
            per_device_eval_batch_size=4,
            ignore_pad_token_for_loss=True,
            eval_strategy=False,  # `eval_strategy: no` in YAML 1.1
        )
    )
    assert config.attn == "flash_attention_2"
    assert config.gradient_checkpointing is False
    assert config.plot_loss is False and config.data.preprocessing_num_workers == 8
    assert config.finetuning_type == "full"
    assert len(config.notices) == 2  # stage, overwrite_cache


def test_llamafactory_values_given_as_overrides() -> None:
    config = load_config(TINY_YAML, ["stage=sft", "do_train=true", "val_size=0", "eval_strategy=no"])
    assert any("stage: sft" in notice for notice in config.notices)
    with pytest.raises(ConfigError, match="`stage: ppo` is not supported"):
        load_config(TINY_YAML, ["stage=ppo"])


def test_training_arguments_pass_through_typed() -> None:
    config = load_config(TINY_YAML, ["weight_decay=0.05", "max_grad_norm=0.5", "save_only_model=true"])
    passed = {"weight_decay": 0.05, "max_grad_norm": 0.5, "save_only_model": True}
    assert config.extra_training_args == {**load_config(TINY_YAML).extra_training_args, **passed}
    with pytest.raises(ConfigError, match="`weight_decay` expects a number"):
        load_config(TINY_YAML, ["weight_decay=heavy"])


@pytest.mark.parametrize(
    ("shorthand", "file"),
    [("z2", "ds_z2_config.json"), ("z3", "ds_z3_config.json"), ("z3_offload", "ds_z3_offload_config.json")],
)
def test_deepspeed_shorthands_resolve_to_bundled_files(shorthand: str, file: str) -> None:
    config = load_config(TINY_YAML, [f"deepspeed={shorthand}"])
    assert Path(config.deepspeed) == DEEPSPEED_DIR / file
    assert Path(config.deepspeed).is_file()


def test_help_lists_the_keys() -> None:
    import argparse

    from fastsft.train.config import add_train_arguments

    parser = argparse.ArgumentParser(prog="fastsft train")
    add_train_arguments(parser)
    text = parser.format_help()
    assert "CONFIG.yaml" in text and "key=value" in text and "max_tokens_per_batch" in text
    args = parser.parse_args(["cfg.yaml", "max_steps=3", "bf16=true"])
    assert args.config == "cfg.yaml" and args.overrides == ["max_steps=3", "bf16=true"]


def test_deepspeed_without_deepspeed_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a),
    )
    with pytest.raises(
        ConfigError, match=r'needs DeepSpeed, which is not installed: pip install -e "\.\[deepspeed\]"'
    ):
        load_config(TINY_YAML, ["deepspeed=z3"])


def test_lora_and_freeze_keys_with_llamafactory_defaults() -> None:
    config = config_from_mapping(minimal(finetuning_type="lora"))
    assert (config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target) == (
        8,
        None,
        0.0,
        "all",
    )
    assert (config.use_rslora, config.use_dora, config.additional_target) == (False, False, None)
    assert (config.freeze_trainable_layers, config.freeze_trainable_modules) == (2, "all")
    config = load_config(TINY_YAML, ["finetuning_type=lora", "lora_target=q_proj,v_proj", "lora_alpha=32"])
    assert (split_names(config.lora_target), config.lora_alpha) == (["q_proj", "v_proj"], 32)
    assert split_names(["q_proj ", "v_proj"]) == split_names("q_proj, v_proj") == ["q_proj", "v_proj"]
    # Keys of the other method change nothing, as in LLaMA-Factory, and are named.
    config = config_from_mapping(minimal(finetuning_type="freeze", lora_rank=16))
    assert "ignoring `lora_rank` (finetuning_type is freeze)" in config.notices
    # Multimodal keys at LLaMA-Factory's defaults are accepted.
    config_from_mapping(minimal(freeze_vision_tower=True, freeze_multi_modal_projector=True))


def test_quantization_bit_null_is_accepted_and_a_value_refused_in_one_line() -> None:
    config_from_mapping(minimal(quantization_bit=None))
    with pytest.raises(ConfigError) as info:
        config_from_mapping(minimal(finetuning_type="lora", quantization_bit=4))
    assert "\n" not in str(info.value)
    if not torch.cuda.is_available():
        assert "lacks a CUDA GPU" in str(info.value)
