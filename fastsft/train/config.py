"""``fastsft train`` configuration: a YAML file with LLaMA-Factory's key names plus ``key=value`` overrides.

``load_config(path, overrides)`` returns a validated ``TrainConfig``. Values are typed by the
dataclass (YAML values and override strings alike), misspelt keys fail with the closest valid
names, and a LLaMA-Factory SFT YAML (full, LoRA or freeze) runs as is: ``stage: sft`` is
accepted with a notice, LLaMA-Factory options fastsft does not implement (DPO, QLoRA,
generation, ...) fail clearly, and any other Hugging Face ``TrainingArguments``
field (``weight_decay``, ``ddp_timeout``, ``save_only_model``, ...) is passed through.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastsft.data.data_args import DATA_KEYS, DataArgs, data_args_from_mapping
from fastsft.errors import ConfigError
from fastsft.fields import OverrideText, coerce, option, read_yaml, show, unknown_key_message

__all__ = [
    "CONTROLLED_TRAINING_ARGS",
    "DEEPSPEED_SHORTHANDS",
    "IGNORED_KEYS",
    "LLAMAFACTORY_UNSUPPORTED",
    "LLAMAFACTORY_UNSUPPORTED_PREFIXES",
    "REQUIRED_VALUES",
    "TrainConfig",
    "add_train_arguments",
    "build_training_args",
    "classify_keys",
    "config_epilog",
    "config_from_mapping",
    "evaluates",
    "load_config",
    "resolve_deepspeed",
    "training_arg_names",
]

AttnChoice = Literal["auto", "sdpa", "eager", "varlen", "flash_attention_2"]

# `deepspeed: z3` and friends resolve to the configs shipped in examples/deepspeed/.
DEEPSPEED_DIR = Path(__file__).resolve().parents[2] / "examples" / "deepspeed"
DEEPSPEED_SHORTHANDS = {
    "z2": "ds_z2_config.json",
    "z3": "ds_z3_config.json",
    "z3_offload": "ds_z3_offload_config.json",
}

MODEL, BATCHING, TRAINING, EVAL, FASTSFT = "model", "batching", "training", "eval", "fastsft"
FINETUNING = "method"  # as LLaMA-Factory's YAMLs head these keys
FinetuningType = Literal["full", "lora", "freeze"]


@dataclass
class TrainConfig:
    """Every ``fastsft train`` option, declared once: ``--help``, the YAML keys and the keys passed to
    ``TrainingArguments`` (``training_arg``) all derive from these fields. Names follow
    LLaMA-Factory / ``transformers.TrainingArguments``."""

    model_name_or_path: str | None = option(
        None, "model weights to fine-tune (a folder or Hub id)", group=MODEL
    )
    model_config: str | None = option(
        None, "a config.json: random-init model instead of weights", group=MODEL
    )
    tokenizer_name_or_path: str | None = option(None, "tokenizer folder (default: the model's)", group=MODEL)
    trust_remote_code: bool = option(False, "allow the model's and tokenizer's own code", group=MODEL)
    attn: AttnChoice = option(
        "auto", "auto: fastsft varlen when packing / padding_free, else sdpa", group=MODEL
    )
    # LLaMA-Factory's FinetuningArguments (LoRA / freeze keys and defaults), applied by fastsft.train.adapter.
    finetuning_type: FinetuningType = option(
        "full", "full | lora | freeze (LLaMA-Factory defaults to lora; fastsft to full)", group=FINETUNING
    )
    lora_rank: int = option(8, "LoRA rank r", group=FINETUNING)
    lora_alpha: int | None = option(None, "LoRA alpha (default: lora_rank * 2)", group=FINETUNING)
    lora_dropout: float = option(0.0, "dropout on the LoRA input", group=FINETUNING)
    lora_target: str | list[str] = option(
        "all", "modules given LoRA adapters: all linear layers but lm_head, or names", group=FINETUNING
    )
    additional_target: str | list[str] | None = option(
        None,
        "modules trained in full and saved with the adapter (e.g. embed_tokens,lm_head)",
        group=FINETUNING,
    )
    use_rslora: bool = option(False, "rank-stabilised LoRA scaling alpha/sqrt(r)", group=FINETUNING)
    use_dora: bool = option(False, "weight-decomposed LoRA (DoRA)", group=FINETUNING)
    adapter_name_or_path: str | list[str] | None = option(
        None, "adapters to load: all but the last merged, the last trained on", group=FINETUNING
    )
    create_new_adapter: bool = option(
        False, "merge every adapter_name_or_path and train a new adapter", group=FINETUNING
    )
    freeze_trainable_layers: int = option(
        2, "freeze tuning: train the last n layers (negative: the first n)", group=FINETUNING
    )
    freeze_trainable_modules: str | list[str] = option(
        "all", "freeze tuning: modules of those layers to train (all, mlp, self_attn, ...)", group=FINETUNING
    )
    freeze_extra_modules: str | list[str] | None = option(
        None,
        "freeze tuning: modules outside the layers to train too (embed_tokens, norm, ...)",
        group=FINETUNING,
    )
    # Every key of DataArgs (fastsft.data.data_args), read from the same flat YAML.
    data: DataArgs = option(default_factory=DataArgs)
    padding_free: bool = option(
        False, "unpacked samples, each batch flattened into one varlen row", group=BATCHING
    )
    max_tokens_per_batch: int | None = option(
        None, "token-budget batches instead of per_device_train_batch_size", group=BATCHING
    )
    output_dir: str | None = option(
        None, "where checkpoints and the model go", group=TRAINING, training_arg=True
    )
    overwrite_output_dir: bool = option(
        False, "start over instead of resuming from output_dir's last checkpoint", group=TRAINING
    )
    per_device_train_batch_size: int = option(
        8, "rows per batch and process", group=TRAINING, training_arg=True
    )
    gradient_accumulation_steps: int = option(
        1, "batches per optimizer step", group=TRAINING, training_arg=True
    )
    learning_rate: float = option(5e-5, "peak learning rate", group=TRAINING, training_arg=True)
    lr_scheduler_type: str = option("linear", "learning-rate schedule", group=TRAINING, training_arg=True)
    warmup_ratio: float = option(0.0, "share of the steps spent warming up", group=TRAINING)
    num_train_epochs: float = option(3.0, "epochs (unless max_steps)", group=TRAINING, training_arg=True)
    max_steps: int = option(
        -1, "optimizer steps (-1: from num_train_epochs)", group=TRAINING, training_arg=True
    )
    bf16: bool = option(False, "bf16 mixed precision", group=TRAINING, training_arg=True)
    fp16: bool = option(False, "fp16 mixed precision", group=TRAINING, training_arg=True)
    gradient_checkpointing: bool = option(
        True,
        "recompute activations in the backward pass (on, as in LLaMA-Factory)",
        group=TRAINING,
        training_arg=True,
    )
    logging_steps: int | float = option(500, "steps between logs", group=TRAINING, training_arg=True)
    save_steps: int | float = option(500, "steps between checkpoints", group=TRAINING, training_arg=True)
    save_total_limit: int | None = option(None, "checkpoints kept", group=TRAINING, training_arg=True)
    resume_from_checkpoint: bool | str | None = option(
        None, "true: the last checkpoint in output_dir; or a checkpoint folder", group=TRAINING
    )
    deepspeed: str | None = option(
        None, "a DeepSpeed JSON path, or z2 | z3 | z3_offload", group=TRAINING, training_arg=True
    )
    report_to: str | list[str] = option(
        "none", "loggers (none, tensorboard, wandb, ...)", group=TRAINING, training_arg=True
    )
    plot_loss: bool = option(True, "write training_loss.png", group=TRAINING)
    chunked_loss: bool = option(
        True, "cross-entropy without the full logits where exact (fastsft.train.loss)", group=FASTSFT
    )
    loss_chunk_tokens: int = option(1024, "logits rows computed at once by the chunked loss", group=FASTSFT)
    require_varlen_kernel: bool = option(
        False,
        "on CUDA, stop instead of warning when packed batches fall back to per-sequence SDPA",
        group=FASTSFT,
    )
    cpu_threads: int | None = option(
        None, "torch threads on CPU (default: OMP_NUM_THREADS, else the idle cores)", group=FASTSFT
    )
    # Other TrainingArguments fields given in the YAML (weight_decay, ddp_timeout, ...).
    extra_training_args: dict[str, Any] = option(default_factory=dict)
    # One-line notices about accepted-but-ignored LLaMA-Factory keys, printed by the trainer.
    notices: list[str] = option(default_factory=list)

    @property
    def uses_varlen_batches(self) -> bool:
        """Whether batches are flattened varlen rows (packing or padding-free)."""
        return bool(self.data.packing) or self.padding_free

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer_name_or_path or self.model_name_or_path or ""


def config_epilog() -> str:
    """``fastsft train --help``'s key list, from the fields' groups (data: every ``DataArgs`` key)."""
    grouped: dict[str, list[str]] = {
        MODEL: [],
        FINETUNING: [],
        "data": list(DATA_KEYS),
        BATCHING: [],
        TRAINING: [],
        FASTSFT: [],
    }
    for spec in dataclasses.fields(TrainConfig):
        if "group" in spec.metadata:
            grouped[spec.metadata["group"]].append(spec.name)
    lines = ["CONFIG.yaml uses LLaMA-Factory's key names (a LLaMA-Factory SFT YAML runs as is). Keys:"]
    for group, names in grouped.items():
        text = textwrap.fill(
            ", ".join(names), 96, initial_indent=f"  {group + ':':<10}", subsequent_indent=" " * 12
        )
        lines.append(text)
    lines += [
        f"  {EVAL + ':':<10}val_size | eval_dataset (eval_on_each_dataset), eval_strategy, eval_steps,",
        "            per_device_eval_batch_size, do_eval, load_best_model_at_end, metric_for_best_model",
        "Any other transformers TrainingArguments field (weight_decay, ddp_timeout, ...) is passed through.",
        "Multi-GPU: torchrun --nproc_per_node N -m fastsft train CONFIG.yaml  (see docs/training.md)",
    ]
    return "\n".join(lines) + "\n"


def training_arg_names() -> tuple[str, ...]:
    """The ``TrainConfig`` fields passed to ``TrainingArguments`` by the same name."""
    return tuple(spec.name for spec in dataclasses.fields(TrainConfig) if spec.metadata.get("training_arg"))


# Keys a user never sets: filled in by load_config.
INTERNAL_FIELDS = ("data", "extra_training_args", "notices")

# LLaMA-Factory keys accepted for compatibility that change nothing here (why, for the notice).
IGNORED_KEYS = {
    "overwrite_cache": "fastsft keeps no preprocessing cache",
    "include_effective_tokens_per_second": "tokens per second are always logged",
    "low_cpu_mem_usage": "transformers' default loading is used",
    "use_fast_tokenizer": "the tokenizer folder decides",
    "print_param_status": "no effect on training",
    "data_shared_file_system": "no effect on training",
}
# Keys accepted only with the value that means "off" (anything else fails clearly).
REQUIRED_VALUES: dict[str, tuple[Any, str]] = {
    "stage": ("sft", "fastsft train does supervised fine-tuning only"),
    "do_train": (True, "fastsft train always trains"),
    "do_predict": (False, "fastsft train does not predict"),
    "predict_with_generate": (False, "fastsft train does not predict"),
    "disable_shuffling": (False, "samples are always shuffled"),
    "compute_accuracy": (False, "fastsft train evaluates the loss only"),
    "ignore_pad_token_for_loss": (True, "padding never counts in the loss"),
    "pure_bf16": (False, "weights stay fp32 with bf16 autocast (or DeepSpeed bf16)"),
    "use_unsloth": (False, "fastsft train does not use Unsloth; drop the key"),
    "enable_liger_kernel": (
        False,
        "fastsft train does not load Liger kernels (its chunked loss, on by default, already avoids "
        "the full logits); drop the key",
    ),
    "resize_vocab": (False, "fastsft train keeps the tokenizer's vocabulary; drop the key"),
    "shift_attn": (False, "LongLoRA's shifted sparse attention is not implemented; drop the key"),
    "train_from_scratch": (False, "use model_config for a random-init model"),
    "freeze_vision_tower": (True, "fastsft train fine-tunes text-only models"),
    "freeze_multi_modal_projector": (True, "fastsft train fine-tunes text-only models"),
    "freeze_language_model": (False, "fastsft train fine-tunes text-only models"),
}
# LLaMA-Factory keys with a fastsft equivalent.
FLASH_ATTN_TO_ATTN = {"auto": "auto", "sdpa": "sdpa", "disabled": "eager", "fa2": "flash_attention_2"}
# LLaMA-Factory options fastsft does not implement: named as such instead of "unknown key".
LLAMAFACTORY_UNSUPPORTED = frozenset(
    """adapter_folder module_dropout ld_alpha
    cache_dir split_special_tokens add_tokens add_special_tokens new_special_tokens_config init_special_tokens
    model_revision rope_scaling mixture_of_depths moe_aux_loss_coef upcast_layernorm upcast_lmhead_output
    infer_backend offload_folder infer_dtype hf_hub_token ms_hub_token om_hub_token double_quantization
    media_dir eval_num_beams
    early_stopping_steps ray_num_workers ray_init_kwargs enable_torch_profiler hyper_parallel_args""".split()  # noqa: SIM905
)
LLAMAFACTORY_UNSUPPORTED_PREFIXES = (
    "use_", "loraplus_", "pissa_", "oft_", "pref_", "dpo_", "kto_", "simpo_", "ppo_",
    "ref_model", "reward_model", "galore_", "apollo_", "badam_", "swanlab_", "quantization_", "export_",
    "image_", "video_", "audio_", "vllm_", "sglang_", "kt_", "profiler_", "fp8", "asft_", "eaft_",
)  # fmt: skip
# TrainingArguments fields fastsft sets itself, so a YAML value would be silently overridden.
CONTROLLED_TRAINING_ARGS = frozenset(
    {"remove_unused_columns", "accelerator_config", "label_names", "include_num_input_tokens_seen"}
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fastsft train`` arguments: ``CONFIG.yaml`` and ``key=value`` overrides (imports nothing heavy)."""
    parser.add_argument("config", metavar="CONFIG.yaml", help="training config (LLaMA-Factory key names)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override config keys, e.g. max_steps=20 bf16=true"
    )
    parser.epilog = config_epilog()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def load_config(
    path: str | os.PathLike[str] | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read ``path`` (YAML), apply ``key=value`` overrides, type and validate every value."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        values[key.strip()] = OverrideText(value)
    return config_from_mapping(values)


def config_from_mapping(values: dict[str, Any]) -> TrainConfig:
    """A validated ``TrainConfig`` from already-read keys (YAML values or override strings)."""
    data, known, extra, notices = classify_keys(values)
    config = TrainConfig(
        **known, data=data_args_from_mapping(data), extra_training_args=extra, notices=notices
    )
    _validate(config)
    return config


def classify_keys(
    values: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """Split a LLaMA-Factory-style mapping into (data keys, fastsft train keys, other ``TrainingArguments``
    keys, notices), each typed; an unknown or unsupported key fails with one line.

    ``fastsft preprocess --config`` reads its YAML through this too, so both commands accept and
    refuse the same keys.
    """
    hints = _type_hints()
    data: dict[str, Any] = {}
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    notices: list[str] = []
    values = dict(values)
    _translate_llamafactory_keys(values, notices)
    for key, value in values.items():
        if key in DATA_KEYS:
            data[key] = value
        elif key in hints and key not in INTERNAL_FIELDS:
            known[key] = coerce(key, value, hints[key])
        elif key in _training_args_hints() and key not in CONTROLLED_TRAINING_ARGS:
            extra[key] = coerce(key, value, _training_args_hints()[key])
        else:
            raise ConfigError(_unknown_key_message(key))
    return data, known, extra, notices


def _translate_llamafactory_keys(values: dict[str, Any], notices: list[str]) -> None:
    """Check LLaMA-Factory-only keys and turn them into fastsft's (in place)."""
    for key, (expected, reason) in REQUIRED_VALUES.items():
        if key not in values:
            continue
        value = values[key]
        if isinstance(value, OverrideText):
            value = coerce(key, value, type(expected) | None if expected is not None else str | None)
        if not _means(value, expected):
            raise ConfigError(f"`{key}: {show(value)}` is not supported: {reason}")
        if key == "stage":
            notices.append(f"ignoring `{key}: {expected}` ({reason})")
        del values[key]
    _check_method_keys(values, notices)
    quantization_bit = values.pop("quantization_bit", None)
    if coerce("quantization_bit", quantization_bit, int | None) is not None:
        raise ConfigError(quantization_message())
    for key, reason in IGNORED_KEYS.items():
        if key in values:
            notices.append(f"ignoring `{key}` ({reason})")
            del values[key]
    for key in ("eval_strategy", "save_strategy", "logging_strategy"):
        if values.get(key) is False:  # YAML 1.1 reads a bare `no` as false
            values[key] = "no"
    if "flash_attn" in values:
        value = str(values.pop("flash_attn"))
        if value not in FLASH_ATTN_TO_ATTN:
            raise ConfigError(f"`flash_attn: {value}` is not supported (use auto, sdpa, disabled or fa2)")
        values.setdefault("attn", FLASH_ATTN_TO_ATTN[value])
    if "disable_gradient_checkpointing" in values:
        disabled = coerce(
            "disable_gradient_checkpointing", values.pop("disable_gradient_checkpointing"), bool
        )
        values.setdefault("gradient_checkpointing", not disabled)


# Keys of one fine-tuning method (LLaMA-Factory ignores them under another; fastsft says so).
LORA_KEYS = (
    "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "additional_target", "use_rslora", "use_dora",
    "create_new_adapter",
)  # fmt: skip
FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")
# LLaMA-Factory refuses these outside LoRA (finetuning_args.py, parser.py); the rest it ignores.
LORA_ONLY_KEYS = {
    "use_rslora": "`use_rslora` is only valid for LoRA training",
    "use_dora": "`use_dora` is only valid for LoRA training",
    "adapter_name_or_path": "an adapter (`adapter_name_or_path`) is only valid for LoRA training",
}


def _check_method_keys(values: dict[str, Any], notices: list[str]) -> None:
    """Keys of the method not chosen: LLaMA-Factory's errors, and a notice for those it ignores.

    fastsft's default method is ``full`` and LLaMA-Factory's is ``lora``, so a LoRA key in a
    YAML that names no ``finetuning_type`` fails rather than silently training in full.
    """
    method = values.get("finetuning_type")
    if isinstance(method, OverrideText):
        method = method.strip()
    if method is None:
        given = [key for key in (*LORA_KEYS, "adapter_name_or_path") if key in values]
        if given:
            raise ConfigError(
                f"`{given[0]}` is a LoRA key but no finetuning_type is set (fastsft's default is full, "
                "LLaMA-Factory's is lora): set finetuning_type: lora (or full)"
            )
        method = "full"
    for key, message in LORA_ONLY_KEYS.items():
        if method != "lora" and values.get(key) not in (None, False, ""):
            raise ConfigError(f"{message}, not `finetuning_type: {method}`")
    other = [key for key in LORA_KEYS if method != "lora" and key in values]
    other += [key for key in FREEZE_KEYS if method != "freeze" and key in values]
    for key in other:
        notices.append(f"ignoring `{key}` (finetuning_type is {method})")


def quantization_message() -> str:
    """Why ``quantization_bit`` (QLoRA) is refused on this machine, in one line."""
    import torch

    missing = [
        what
        for what, present in (
            ("a CUDA GPU", torch.cuda.is_available()),
            ("bitsandbytes", importlib.util.find_spec("bitsandbytes") is not None),
        )
        if not present
    ]
    if missing:
        return (
            f"`quantization_bit` (QLoRA) needs a CUDA GPU and bitsandbytes; this machine lacks "
            f"{' and '.join(missing)}: drop the key to train LoRA on the unquantized model"
        )
    return "`quantization_bit` (QLoRA) is not implemented by fastsft train: drop the key to train plain LoRA"


def _means(value: Any, expected: Any) -> bool:
    """Whether a LLaMA-Factory value is the one fastsft accepts (``0`` and ``0.0`` alike, ``None``/``""``)."""
    if expected is None:
        return value is None or value == ""
    if isinstance(expected, bool):
        return value is expected
    if expected == "no" and value is False:  # YAML 1.1 reads a bare `no` as false
        return True
    if isinstance(expected, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == expected
    return str(value).lower() == str(expected)


def _unknown_key_message(key: str) -> str:
    if key in LLAMAFACTORY_UNSUPPORTED or key.startswith(LLAMAFACTORY_UNSUPPORTED_PREFIXES):
        return f"LLaMA-Factory option `{key}` is not supported by fastsft train"
    if key in CONTROLLED_TRAINING_ARGS:
        return f"`{key}` is set by fastsft train itself and cannot be configured"
    candidates = [*DATA_KEYS, *(k for k in _type_hints() if k not in INTERNAL_FIELDS)]
    candidates += [
        k for k in _training_args_hints() if k not in CONTROLLED_TRAINING_ARGS and k not in candidates
    ]
    return unknown_key_message(key, candidates, see="fastsft train --help")


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


@functools.cache
def _training_args_hints() -> dict[str, Any]:
    """Type of every ``transformers.TrainingArguments`` field (imported only when a key needs it)."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingArguments) if f.init}


def evaluates(config: TrainConfig) -> bool:
    """Whether training evaluates: ``do_eval``, or an ``eval_strategy`` other than ``no`` (as in ``TrainingArguments``)."""
    extra = config.extra_training_args
    strategy = str(getattr(extra.get("eval_strategy"), "value", extra.get("eval_strategy", "no")))
    return bool(extra.get("do_eval")) or strategy.lower() != "no"


def resolve_deepspeed(value: str) -> str:
    """A DeepSpeed config path: ``z2`` / ``z3`` / ``z3_offload`` are the bundled ones."""
    if value in DEEPSPEED_SHORTHANDS:
        path = DEEPSPEED_DIR / DEEPSPEED_SHORTHANDS[value]
        if not path.is_file():
            raise ConfigError(
                f"`deepspeed: {value}` needs {path}, which this installation lacks; pass a JSON path instead"
            )
        return str(path)
    if not Path(value).is_file():
        shorthands = ", ".join(DEEPSPEED_SHORTHANDS)
        raise ConfigError(f"deepspeed config not found: {value} (give a JSON file or one of {shorthands})")
    return value


def _validate(config: TrainConfig) -> None:
    """Cross-key checks; fills derived values (packing from neat_packing, deepspeed path)."""
    if config.model_name_or_path and config.model_config:
        raise ConfigError(
            "set either model_name_or_path (load weights) or model_config (random init), not both"
        )
    if not config.model_name_or_path and not config.model_config:
        raise ConfigError("no model given: set model_name_or_path, or model_config for a random-init model")
    if config.model_config and not Path(config.model_config).exists():
        raise ConfigError(f"model_config not found: {config.model_config}")
    if not config.tokenizer_path:
        raise ConfigError("no tokenizer given: set tokenizer_name_or_path (model_config has no tokenizer)")
    if not config.output_dir:
        raise ConfigError("no output_dir given")
    data = config.data
    if not data.dataset and not (data.tokenized_path and Path(data.tokenized_path).exists()):
        raise ConfigError(
            "no dataset given: set dataset (names in dataset_info.json) or an existing tokenized_path"
        )
    if evaluates(config) and not (
        data.val_size > 1e-6
        or data.eval_dataset
        or (data.tokenized_path and Path(data.tokenized_path).exists())
    ):
        raise ConfigError(
            "evaluation (do_eval / eval_strategy) needs val_size or eval_dataset (as in LLaMA-Factory)"
        )
    if config.bf16 and config.fp16:
        raise ConfigError("set only one of bf16 and fp16")
    if config.uses_varlen_batches and config.attn in ("sdpa", "eager"):
        mode = "packing" if data.packing else "padding_free"
        raise ConfigError(
            f"{mode} needs attn: varlen or flash_attention_2 (with attn: {config.attn} the sequences "
            "of a flattened row would attend to each other)"
        )
    if not math.isfinite(config.learning_rate) or config.learning_rate <= 0:
        raise ConfigError(f"`learning_rate` must be a positive finite number, got {config.learning_rate}")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ConfigError(
            f"`max_steps` must be at least 1 (or -1: from num_train_epochs), got {config.max_steps}"
        )
    if data.streaming and config.max_steps == -1:
        raise ConfigError("`streaming: true` needs `max_steps` (as in LLaMA-Factory)")
    workers = config.extra_training_args.get("dataloader_num_workers", 0)
    if data.streaming and workers > 1:
        config.notices.append(
            f"streaming: LLaMA-Factory would split the data into dataloader_num_workers={workers} shards, each "
            "shuffled in its own DataLoader worker; fastsft streams one shard from this process, so the "
            "sample order differs from LLaMA-Factory's (it is the same with 0 or 1 workers)"
        )
    if data.streaming and config.max_tokens_per_batch is not None:
        raise ConfigError(
            "`max_tokens_per_batch` needs every row's length first; it does not work with `streaming: true`"
        )
    if config.data.seed < 0:
        raise ConfigError(f"`seed` must be at least 0, got {config.data.seed}")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "loss_chunk_tokens"):
        if getattr(config, key) < 1:
            raise ConfigError(f"`{key}` must be at least 1, got {getattr(config, key)}")
    if config.cpu_threads is not None and config.cpu_threads < 1:
        raise ConfigError(f"`cpu_threads` must be at least 1, got {config.cpu_threads}")
    if config.lora_rank < 1:
        raise ConfigError(f"`lora_rank` must be at least 1, got {config.lora_rank}")
    if not 0.0 <= config.lora_dropout < 1.0:
        raise ConfigError(f"`lora_dropout` must be in [0, 1), got {config.lora_dropout}")
    if config.max_tokens_per_batch is not None and config.max_tokens_per_batch < 1:
        raise ConfigError(f"`max_tokens_per_batch` must be at least 1, got {config.max_tokens_per_batch}")
    if not 0.0 <= config.warmup_ratio < 1.0:
        raise ConfigError(f"`warmup_ratio` must be in [0, 1), got {config.warmup_ratio}")
    if config.warmup_ratio and "warmup_steps" in config.extra_training_args:
        raise ConfigError("set only one of warmup_ratio and warmup_steps")
    if config.deepspeed:
        config.deepspeed = resolve_deepspeed(config.deepspeed)
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                f"`deepspeed: {config.deepspeed}` needs DeepSpeed, which is not installed: "
                'pip install -e ".[deepspeed]" (or pip install deepspeed)'
            )
    if isinstance(config.resume_from_checkpoint, str) and not Path(config.resume_from_checkpoint).is_dir():
        raise ConfigError(f"resume_from_checkpoint folder not found: {config.resume_from_checkpoint}")


def build_training_args(config: TrainConfig, uses_configured_state: bool = False) -> Any:
    """``TrainingArguments`` from the config (fastsft decides ``remove_unused_columns`` and the state)."""
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = {name: getattr(config, name) for name in training_arg_names()}
    kwargs["seed"] = config.data.seed
    field_names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if config.gradient_checkpointing and not any(
        "checkpointing_kwargs" in key for key in config.extra_training_args
    ):
        # transformers 5's default everywhere: 4.56's reentrant checkpoints need inputs that require grad
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if "activation_checkpointing" in field_names:  # transformers 5 renamed them
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
        if "gradient_checkpointing_kwargs" in kwargs:
            kwargs["activation_checkpointing_kwargs"] = kwargs.pop("gradient_checkpointing_kwargs")
    if config.warmup_ratio:  # transformers 5 reads a warmup_steps float < 1 as the ratio
        kwargs["warmup_ratio" if "warmup_ratio" in field_names else "warmup_steps"] = config.warmup_ratio
    kwargs["remove_unused_columns"] = False  # the collators pick their columns
    if config.finetuning_type == "lora":  # LLaMA-Factory's parser, for DDP: the frozen base gets no gradient
        kwargs["ddp_find_unused_parameters"] = False
    kwargs.update(config.extra_training_args)
    accelerator_config = {"use_configured_state": True} if uses_configured_state else {}
    if config.data.streaming:  # each process makes its own share; a checkpoint records its position
        kwargs["dataloader_num_workers"] = 0
        kwargs["ignore_data_skip"] = True
        # No batch dispatched from process 0 (accelerate's default for an iterable dataset, which
        # would also slice every tensor along its first axis, cu_seq_lens too), none split.
        accelerator_config["dispatch_batches"] = False
        accelerator_config["split_batches"] = False
    if accelerator_config:
        kwargs["accelerator_config"] = accelerator_config
    try:
        return TrainingArguments(**kwargs)
    except ValueError as err:
        raise ConfigError(f"invalid training arguments: {str(err).splitlines()[0]}") from None
