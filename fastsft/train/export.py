"""``fastsft export CONFIG.yaml [key=value ...]``: merge LoRA adapters into the base model and save it.

The YAML is LLaMA-Factory's ``llamafactory-cli export`` one (``model_name_or_path``,
``adapter_name_or_path``, ``export_dir``, ``export_size``, ``infer_dtype``); as there, the base
loads in its own dtype, every adapter is merged in order (``merge_and_unload``), and the model
is saved in ``infer_dtype`` (``auto``: the checkpoint's dtype, fp32 becoming bf16/fp16 on a GPU
that has them) with the tokenizer (padding side left). The tokenizer is the one training saved
beside the last adapter, else the base model's.

The output is written as ``fastsft preprocess`` writes datasets (``fastsft.safe_output``):
staged beside ``export_dir`` and renamed into place when complete; an existing ``export_dir`` is
replaced only with ``--overwrite`` and only when it is a previous fastsft output.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastsft.errors import ConfigError
from fastsft.fields import OverrideText, coerce, option, read_yaml, unknown_key_message

__all__ = ["ExportConfig", "add_export_arguments", "load_export_config", "run_export"]

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ExportConfig:
    """``fastsft export`` keys (LLaMA-Factory's names)."""

    model_name_or_path: str | None = option(None, "the base model the adapters were trained on")
    adapter_name_or_path: str | list[str] | None = option(None, "adapters to merge, in order")
    export_dir: str | None = option(None, "where the merged model goes")
    export_size: int = option(5, "largest weight shard, in GB")
    infer_dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "dtype of the saved model"
    )
    trust_remote_code: bool = option(False, "allow the model's and tokenizer's own code")


# LLaMA-Factory export keys that change nothing here, accepted as they are.
ACCEPTED_KEYS = {"template", "finetuning_type", "export_device", "export_legacy_format", "stage"}
# LLaMA-Factory export keys fastsft export does not implement (GPTQ quantization, Hub upload).
UNSUPPORTED_KEYS = {
    "export_quantization_bit", "export_quantization_dataset", "export_quantization_nsamples",
    "export_quantization_maxlen", "export_hub_model_id", "adapter_folder",
}  # fmt: skip


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG.yaml``, ``key=value`` overrides and ``--overwrite``."""
    parser.add_argument("config", metavar="CONFIG.yaml", help="export config (LLaMA-Factory key names)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an export_dir a previous fastsft export wrote"
    )
    parser.epilog = export_epilog()


def load_export_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> ExportConfig:
    """The validated ``ExportConfig`` from a YAML file and ``key=value`` overrides."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        values[key.strip()] = OverrideText(value)
    hints = typing.get_type_hints(ExportConfig)
    known: dict[str, Any] = {}
    for key, value in values.items():
        if key in hints:
            known[key] = coerce(key, value, hints[key])
        elif key == "finetuning_type" and str(value).strip() != "lora":
            raise ConfigError(
                f"`finetuning_type: {value}` has nothing to merge: fastsft export merges LoRA adapters"
            )
        elif key == "export_legacy_format" and coerce(key, value, bool):
            raise ConfigError("`export_legacy_format: true` is not supported (safetensors only)")
        elif key not in ACCEPTED_KEYS:
            if key in UNSUPPORTED_KEYS:
                raise ConfigError(f"LLaMA-Factory option `{key}` is not supported by fastsft export")
            raise ConfigError(unknown_key_message(key, [*hints, *ACCEPTED_KEYS], see="fastsft export --help"))
    config = ExportConfig(**known)
    for key in ("model_name_or_path", "export_dir"):
        if not getattr(config, key):
            raise ConfigError(f"no `{key}` given")
    if not config.adapter_name_or_path:
        raise ConfigError(
            "no `adapter_name_or_path` given: fastsft export merges LoRA adapters into "
            "model_name_or_path; a full model needs no export (use its folder, or the output_dir of "
            "its training run, as it is)"
        )
    if config.export_size < 1:
        raise ConfigError(f"`export_size` must be at least 1 (GB), got {config.export_size}")
    return config


def _output_dtype(config: ExportConfig, model_dtype: Any) -> Any:
    """``infer_dtype`` as LLaMA-Factory's export resolves it (``infer_optim_dtype`` for fp32 + auto)."""
    import torch

    if config.infer_dtype != "auto":
        return getattr(torch, config.infer_dtype)
    if model_dtype != torch.float32:
        return model_dtype
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def run_export(args: argparse.Namespace) -> int:
    """Merge the adapters into the base and save the model and tokenizer to ``export_dir``, atomically."""
    from safetensors import SafetensorError

    from fastsft.safe_output import (
        OutputError,
        check_output_path,
        check_replaceable,
        os_error_line,
        staged_output,
    )
    from fastsft.tokenizer.loader import load_tokenizer
    from fastsft.train.adapter import check_model_path, load_adapter_whole, split_names
    from fastsft.train.model import load_pretrained

    config = load_export_config(args.config, args.overrides)
    adapters = split_names(config.adapter_name_or_path)
    output = Path(config.export_dir)
    local_inputs = [Path(p) for p in (config.model_name_or_path, *adapters) if Path(p).exists()]
    check_output_path(output, local_inputs, what="export_dir")
    check_replaceable(output, args.overwrite)  # before minutes of loading and merging
    check_model_path(config.model_name_or_path, "model_name_or_path")
    for adapter in adapters:
        check_model_path(adapter, "adapter_name_or_path")
    model = load_pretrained(
        config.model_name_or_path, dtype="auto", trust_remote_code=config.trust_remote_code
    )
    for adapter in adapters:
        model = load_adapter_whole(model, adapter, is_trainable=False, warn=_warn).merge_and_unload()
    dtype = _output_dtype(config, next(model.parameters()).dtype)
    model = model.to(dtype)
    model.config.use_cache = True
    tokenizer_dir = adapters[-1] if (Path(adapters[-1]) / "tokenizer_config.json").is_file() else None
    tokenizer = load_tokenizer(
        tokenizer_dir or config.model_name_or_path, trust_remote_code=config.trust_remote_code, hub=True
    )
    tokenizer.padding_side = "left"  # as LLaMA-Factory exports it, for batched generation
    try:
        with staged_output(output, overwrite=args.overwrite) as staged:
            try:
                model.save_pretrained(staged.dataset, max_shard_size=f"{config.export_size}GB")
            except SafetensorError as err:  # safetensors' own I/O error: "... (os error 28)"
                raise _os_error(err, staged.dataset) from None
            tokenizer.save_pretrained(staged.dataset)
            staged.commit(
                {
                    "created_by": "fastsft export",
                    "model_name_or_path": config.model_name_or_path,
                    "adapter_name_or_path": adapters,
                    "dtype": str(dtype).removeprefix("torch."),
                }
            )
    except OSError as err:
        raise OutputError(
            os_error_line(err, f"write {output}", what="export_dir", space_hint=SPACE_HINT)
        ) from None
    print(
        f"merged {len(adapters)} adapter(s) into {config.model_name_or_path} and saved it "
        f"({str(dtype).removeprefix('torch.')}) to {output}"
    )
    return 0


SPACE_HINT = "an export needs the merged model's size free beside export_dir, twice with --overwrite"


def _os_error(err: Exception, path: Path) -> OSError:
    """safetensors' ``SafetensorError`` for a failed write as the ``OSError`` it wraps (errno from its text)."""
    import errno
    import os
    import re

    found = re.search(r"os error (\d+)", str(err))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def _warn(message: str) -> None:
    print(f"fastsft export: warning: {message}", file=sys.stderr, flush=True)


def export_epilog() -> str:
    """The ``fastsft export --help`` key list."""
    keys = ", ".join(f.name for f in dataclasses.fields(ExportConfig))
    return f"CONFIG.yaml keys (LLaMA-Factory's): {keys}\n"
