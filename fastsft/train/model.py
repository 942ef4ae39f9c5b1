"""The model side of ``fastsft train``: tokenizer, model config and weights, attention and loss."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastsft.errors import ConfigError
from fastsft.train.config import TrainConfig
from fastsft.train.logs import say

__all__ = [
    "attention_kernels",
    "choose_attention",
    "configure_loss",
    "count_parameters",
    "load_model",
    "load_pretrained",
    "load_tokenizer",
    "model_vocab_size",
]


def load_tokenizer(config: TrainConfig) -> Any:
    """The tokenizer at ``tokenizer_name_or_path`` (default: the model's), through the one loader."""
    from fastsft.tokenizer.loader import load_tokenizer as load

    return load(config.tokenizer_path, trust_remote_code=config.trust_remote_code, hub=True)


def model_vocab_size(config: TrainConfig) -> int:
    """The model's ``vocab_size`` from its config: a missing or broken model fails here, in one
    line, before any data is built."""
    from transformers import AutoConfig

    source = config.model_config or config.model_name_or_path
    try:
        model_config = AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the model config from {source}: {str(err).splitlines()[0]}") from None
    return int(model_config.get_text_config().vocab_size)


def choose_attention(config: TrainConfig, packed: bool) -> str:
    """The ``attn_implementation``: fastsft's varlen attention for flattened batches unless told otherwise.

    With it, each kernel it runs is announced once (a warning for per-sequence SDPA on CUDA, an
    error with ``require_varlen_kernel``) and listed by ``attention_kernels`` for the run's outputs.
    """
    if packed and config.attn in ("sdpa", "eager"):
        raise ConfigError(
            f"the dataset is packed, which needs attn: varlen or flash_attention_2 (not {config.attn})"
        )
    if config.attn == "varlen" or (config.attn == "auto" and packed):
        from fastsft.train.attention import KERNELS, register_varlen_attention

        is_main = int(os.environ.get("RANK", "0")) == 0
        KERNELS.reset(require_varlen_kernel=config.require_varlen_kernel, announce=_say if is_main else None)
        return register_varlen_attention()
    return "sdpa" if config.attn == "auto" else config.attn


def attention_kernels(attn_implementation: str) -> dict[str, str]:
    """The kernels the run's attention called, each with why it was chosen (``metrics.json``):
    those fastsft's varlen attention recorded, else the implementation transformers ran."""
    from fastsft.train.attention import ATTN_IMPLEMENTATION, KERNELS

    if attn_implementation == ATTN_IMPLEMENTATION:
        return dict(KERNELS.used)
    return {attn_implementation: "transformers' attn_implementation"}


def _say(message: str, warning: bool) -> None:
    say(f"warning: {message}" if warning else message)


def load_model(config: TrainConfig, attn_implementation: str) -> Any:
    """The model in fp32 (mixed precision comes from Trainer / DeepSpeed), without the KV cache;
    for LoRA / freeze in the checkpoint's dtype (``fastsft.train.adapter.load_dtype``).

    Under ZeRO-3 transformers builds it inside ``deepspeed.zero.Init`` (partitioned) because
    ``TrainingArguments`` already exists.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    from fastsft.train.adapter import load_dtype

    common = {"attn_implementation": attn_implementation, "trust_remote_code": config.trust_remote_code}
    if config.model_config:
        model_config = AutoConfig.from_pretrained(
            config.model_config, trust_remote_code=config.trust_remote_code
        )
        try:
            model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32, **common)
        except IndexError as error:  # transformers 4.x: huggingface/transformers#43638
            if not is_deepspeed_zero3_enabled():
                raise
            import transformers

            raise ConfigError(
                f"transformers {transformers.__version__} cannot build a random-init model (model_config) "
                f"under ZeRO-3: its weight init indexes a partitioned embedding ({error}). Save the initial "
                "model with save_pretrained and train from it (model_name_or_path), or upgrade transformers"
            ) from None
    else:
        model = load_pretrained(
            config.model_name_or_path, dtype=load_dtype(config, is_deepspeed_zero3_enabled()), **common
        )
    model.config.use_cache = False
    return model


def load_pretrained(path: str, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(path, **kwargs)``, refused in one line naming the path
    and the cause: a local path that is not there, a model that does not load, a damaged
    ``*.safetensors`` file (named)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from fastsft.train.adapter import check_model_path

    check_model_path(path, "model_name_or_path")
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except SafetensorError as err:
        raise ConfigError(
            f"cannot load the model from {path}: {_damaged_file(path)} is damaged or truncated "
            f"({str(err).splitlines()[0]})"
        ) from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the model from {path}: {str(err).splitlines()[0]}") from None


def _damaged_file(model: str) -> str:
    """The first ``*.safetensors`` file of a local model folder whose header does not read, else "a weights file"."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(model).glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError:
            return str(path)
    return "a weights file"


def configure_loss(config: TrainConfig, model: Any) -> str:
    """Turn on the chunked cross-entropy where it is exact; returns the loss for the summary line."""
    from fastsft.train.loss import chunked_loss_unsupported, enable_chunked_loss

    if not config.chunked_loss:
        return "plain loss"
    reason = chunked_loss_unsupported(model)
    if reason is not None:
        return f"plain loss (not chunked: {reason})"
    enable_chunked_loss(model, config.loss_chunk_tokens)
    return f"chunked loss ({config.loss_chunk_tokens} tokens per chunk)"


def count_parameters(model: Any) -> int:
    """Parameters of the whole model, also when ZeRO-3 holds only a shard on this rank."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
