"""LoRA and freeze fine-tuning set up as LLaMA-Factory 0.9.5 does (its ``model/adapter.py``).

``init_adapter`` runs after the model is loaded and before ``Trainer`` sees it:

* ``full``: every parameter trains (fastsft loads it in fp32 already).
* ``freeze``: the last ``freeze_trainable_layers`` decoder layers (the first ones when negative)
  train, limited to ``freeze_trainable_modules`` and widened by ``freeze_extra_modules``, by
  LLaMA-Factory's substring rule; every other parameter is frozen.
* ``lora``: ``adapter_name_or_path`` adapters are merged (all but the last) and the last one is
  trained further, or a new peft ``LoraConfig`` adapter is created from the ``lora_*`` keys
  (``lora_target: all`` = every linear layer but the output head, as LLaMA-Factory finds them).

Trainable parameters are then upcast to fp32 (not under ZeRO-3, which keeps fp32 masters
itself), so a bf16 checkpoint trains fp32 adapters over a bf16 frozen base, as in LLaMA-Factory.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from fastsft.errors import ConfigError
from fastsft.train.config import TrainConfig
from fastsft.train.logs import say
from fastsft.train.output_dir import record_published

__all__ = [
    "RANDOM_BASE_DIR",
    "check_model_path",
    "describe_trainable",
    "find_all_linear_modules",
    "init_adapter",
    "load_adapter_whole",
    "load_dtype",
    "split_names",
]


def split_names(value: str | list[str] | None) -> list[str]:
    """A comma-separated key (``q_proj,v_proj``) or a YAML list as a list of names (LLaMA-Factory's ``split_arg``)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def load_dtype(config: TrainConfig, zero3: bool) -> Any:
    """The dtype the weights load in: the checkpoint's own for LoRA / freeze (the frozen part stays
    there, as LLaMA-Factory loads ``torch_dtype="auto"``), fp32 for full tuning and under ZeRO-3."""
    if config.finetuning_type == "full" or zero3:
        return torch.float32
    return "auto"


RANDOM_BASE_DIR = "base_model"


def init_adapter(config: TrainConfig, model: Any, zero3: bool, is_main: bool = True) -> Any:
    """``model`` set up for ``config.finetuning_type``: frozen parameters, or a peft ``PeftModel``.

    LoRA on a random-init ``model_config`` first saves that base to ``output_dir/base_model`` (the
    adapter's ``base_model_name_or_path``): an adapter is of no use without the weights under it.
    """
    upcast = not zero3  # LLaMA-Factory: "DeepSpeed ZeRO3 detected, remaining trainable params in float32"
    if config.finetuning_type == "freeze":
        _setup_freeze_tuning(config, model, upcast)
    elif config.finetuning_type == "lora":
        if config.model_config:
            _save_random_base(config, model, zero3, is_main)
        warn = say if is_main else _silent
        model = _setup_lora_tuning(config, model, zero3, upcast, warn)
    return model


def _silent(message: str) -> None:
    """Other ranks print nothing (the main process says it once)."""


def _save_random_base(config: TrainConfig, model: Any, zero3: bool, is_main: bool) -> None:
    """Save the random-init base beside the adapter (staged, then renamed into place)."""
    import os
    import shutil
    from pathlib import Path

    if zero3:
        raise ConfigError(
            "finetuning_type: lora on a random-init model_config is not supported under ZeRO-3; "
            "save the model first and give it as model_name_or_path"
        )
    target = Path(config.output_dir) / RANDOM_BASE_DIR
    model.name_or_path = str(target)  # peft records it as the adapter's base_model_name_or_path
    if not is_main:
        return
    record_published(target.parent, RANDOM_BASE_DIR)  # before it exists: a failed run leaves it marked
    staged = target.with_name(f".{RANDOM_BASE_DIR}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    model.config.use_cache = True  # as the final model is saved (training runs without the cache)
    model.save_pretrained(staged)
    model.config.use_cache = False
    if target.exists():  # a resumed run: the same seed made the same weights
        shutil.rmtree(target)
    os.rename(staged, target)


def _num_layers(model: Any) -> int:
    text_config = getattr(model.config, "text_config", None) or model.config
    for key in ("num_hidden_layers", "num_layers", "n_layer"):
        value = getattr(text_config, key, None)
        if value:
            return int(value)
    raise ConfigError(
        f"finetuning_type: freeze needs the model's layer count, which {type(model.config).__name__} lacks"
    )


def _setup_freeze_tuning(config: TrainConfig, model: Any, upcast: bool) -> None:
    """Freeze all but the chosen layers' modules (LLaMA-Factory ``_setup_freeze_tuning``)."""
    num_layers = _num_layers(model)
    wanted = config.freeze_trainable_layers
    if wanted > 0:  # the last n layers
        layer_ids = range(max(0, num_layers - wanted), num_layers)
    else:  # the first |n| layers
        layer_ids = range(min(-wanted, num_layers))
    hidden_modules: set[str] = set()
    non_hidden_modules: set[str] = set()
    for name, _ in model.named_parameters():
        if ".0." in name:
            hidden_modules.add(name.split(".0.")[-1].split(".")[0])
        elif ".1." in name:
            hidden_modules.add(name.split(".1.")[-1].split(".")[0])
        if re.search(r"\.\d+\.", name) is None:
            non_hidden_modules.add(name.split(".")[-2])
    patterns: list[str] = []
    for module in split_names(config.freeze_trainable_modules):
        if module != "all" and module not in hidden_modules:
            raise ConfigError(
                f"freeze_trainable_modules: {module} is not a module of the model's layers "
                f"(choose from all, {', '.join(sorted(hidden_modules))})"
            )
        patterns += [f".{idx}.{module if module != 'all' else ''}" for idx in layer_ids]
    for module in split_names(config.freeze_extra_modules):
        if module not in non_hidden_modules:
            raise ConfigError(
                f"freeze_extra_modules: {module} is not a module outside the model's layers "
                f"(choose from {', '.join(sorted(non_hidden_modules))})"
            )
        patterns.append(module)
    for name, param in model.named_parameters():
        if any(pattern in name for pattern in patterns):  # LLaMA-Factory's plain substring test
            if upcast:
                param.data = param.data.to(torch.float32)
        else:
            param.requires_grad_(False)
    if not any(param.requires_grad for param in model.parameters()):
        raise ConfigError(
            f"freeze_trainable_layers: {wanted} with freeze_trainable_modules: "
            f"{config.freeze_trainable_modules} leaves no parameter to train"
        )


def find_all_linear_modules(model: Any) -> list[str]:
    """``lora_target: all``: the last name component of every linear layer but the output head
    (LLaMA-Factory's ``find_all_linear_modules`` for a text model), sorted."""
    forbidden = {"lm_head"}
    model_type = getattr(model.config, "model_type", None)
    if model_type == "chatglm":
        forbidden.add("output_layer")
    elif model_type == "internlm2":
        forbidden.add("output")
    names = set()
    for name, module in model.named_modules():
        if any(part in name for part in forbidden):
            continue
        kind = type(module).__name__
        if "Linear" in kind and "Embedding" not in kind:
            names.add(name.split(".")[-1])
    return sorted(names)


def _setup_lora_tuning(
    config: TrainConfig, model: Any, zero3: bool, upcast: bool, warn: Callable[[str], None]
) -> Any:
    """Load / merge ``adapter_name_or_path`` and add or resume a LoRA adapter (LLaMA-Factory ``_setup_lora_tuning``)."""
    from peft import LoraConfig, TaskType, get_peft_model

    adapters = split_names(config.adapter_name_or_path)
    to_resume = None
    if adapters:
        if zero3 and len(adapters) > 1:
            raise ConfigError("DeepSpeed ZeRO-3 takes one adapter_name_or_path; merge the others first")
        mergeable = not zero3
        if not config.create_new_adapter or not mergeable:
            to_merge, to_resume = adapters[:-1], adapters[-1]
        else:
            to_merge = adapters
        for adapter in to_merge:
            model = load_adapter_whole(model, adapter, is_trainable=False, warn=warn).merge_and_unload()
        if to_resume is not None:  # its own rank, alpha and targets; the lora_* keys do not apply
            model = load_adapter_whole(model, to_resume, is_trainable=True, warn=warn)
    if to_resume is None:
        targets = split_names(config.lora_target)
        target_modules = find_all_linear_modules(model) if targets == ["all"] else targets
        additional = split_names(config.additional_target) or None
        lora_config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            inference_mode=False,
            r=config.lora_rank,
            target_modules=target_modules,
            lora_alpha=config.lora_alpha or config.lora_rank * 2,
            lora_dropout=config.lora_dropout,
            use_rslora=config.use_rslora,
            use_dora=config.use_dora,
            modules_to_save=additional,
        )
        try:
            model = get_peft_model(model, lora_config)
        except ValueError as err:  # e.g. a lora_target the model does not have
            raise ConfigError(f"lora_target {targets}: {str(err).splitlines()[0]}") from None
    if upcast:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return model


def check_model_path(path: str, key: str) -> None:
    """Refuse a ``key`` that names a local path (absolute, ``./``, ``~`` or a folder chain) that is not
    there, in one line, before transformers takes it for a Hub repo id ("Repo id must be in the form")."""
    if Path(path).expanduser().exists():
        return
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path
    if looks_local:
        raise ConfigError(f"{key} {path}: no such file or folder")


def load_adapter_whole(model: Any, path: str, *, is_trainable: bool, warn: Callable[[str], None]) -> Any:
    """``model`` with the peft adapter at ``path`` loaded whole, or ``ConfigError`` naming the adapter,
    the first bad key and the cause.

    peft only warns about LoRA weights the file lacks, ignores weights no module of the model takes
    (another layer naming, ``target_modules`` listing fewer modules than were trained) and raises a
    many-line error on a shape mismatch; merged or trained further, such an adapter would silently
    be a part of itself. A base other than the adapter's ``base_model_name_or_path`` gets ``warn``.
    """
    from peft import PeftConfig, PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    check_model_path(path, "adapter_name_or_path")
    if Path(path).is_dir() and not (Path(path) / "adapter_config.json").is_file():
        raise ConfigError(
            f"adapter_name_or_path {path} is a folder without adapter_config.json (not a peft adapter)"
        )
    refuse = f"cannot load the adapter {path}"
    try:
        adapter_config = PeftConfig.from_pretrained(path)
        saved = load_peft_weights(path, device="cpu")
    except SafetensorError as err:
        raise ConfigError(
            f"{refuse}: {Path(path) / SAFE_ADAPTER_FILE} is damaged or truncated ({_first_line(err)})"
        ) from None
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{refuse}: {_first_line(err)}") from None
    if not saved:
        raise ConfigError(f"{refuse}: its weights file holds no tensors")
    base = str(getattr(model, "name_or_path", "") or "")
    try:
        with warnings.catch_warnings():  # the missing keys are reported below, in one line
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            peft_model = PeftModel.from_pretrained(model, path, is_trainable=is_trainable)
    except RuntimeError as err:
        raise ConfigError(f"{refuse}: {_size_mismatch(err) or _first_line(err)}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{refuse}: {_first_line(err)}") from None
    expected = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    model_keys = set(peft_model.state_dict())
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected and key not in model_keys]
    if unexpected:
        raise ConfigError(
            f"{refuse}: {len(unexpected)} of its {len(saved)} weights fit no module of the model "
            f"(first: {unexpected[0]}); an adapter for another model, or an adapter_config.json whose "
            "target_modules do not list every trained module"
        )
    if missing:
        raise ConfigError(
            f"{refuse}: {len(missing)} LoRA weights of the modules its adapter_config.json targets are "
            f"not in its weights file (first: {missing[0]})"
        )
    for key, tensor in expected.items():
        if tensor.numel() and tuple(saved[key].shape) != tuple(tensor.shape):  # ZeRO-3 shards are empty
            raise ConfigError(
                f"{refuse}: {key} has shape {list(saved[key].shape)} in the file and "
                f"{list(tensor.shape)} in the model"
            )
    expected_base = adapter_config.base_model_name_or_path
    if expected_base and base and not _same_model(base, expected_base):
        warn(
            f"adapter {path} was trained on {expected_base} (its base_model_name_or_path) and is loaded "
            f"onto {base}: right if that is the same model elsewhere, wrong results otherwise"
        )
    return peft_model


SAFE_ADAPTER_FILE = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME


def _same_model(base: str, expected: str) -> bool:
    if base == expected:
        return True
    here, there = Path(base).expanduser(), Path(expected).expanduser()
    return here.exists() and there.exists() and here.resolve() == there.resolve()


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)


def _size_mismatch(err: BaseException) -> str | None:
    """torch's many-line ``size mismatch`` error as one line: the first key and both shapes."""
    found = _SIZE_MISMATCH.search(str(err))
    if found is None:
        return None
    key, saved, model = found.groups()
    return (
        f"{key.replace('.default.', '.')} has shape {saved} in the file and {model} in the model "
        "(an adapter for another base model, or an adapter_config.json whose r does not match the weights)"
    )


def describe_trainable(model: Any) -> str:
    """``trainable params: X || all params: Y || trainable%: Z`` as LLaMA-Factory logs it (ZeRO-3 shards counted whole)."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel() or getattr(param, "ds_numel", 0)
        total += count
        if param.requires_grad:
            trainable += count
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / max(total, 1):.4f}"
