"""The data options, declared once: ``fastsft preprocess``/``inspect`` flags, ``--config`` YAML keys
and ``fastsft train``'s data section all derive from ``DataArgs``.

Names follow LLaMA-Factory's ``DataArguments`` where one exists. Construction checks types and
cross-key rules only: it imports no kernel and touches no file (paths are checked where used).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from fastsft.errors import ConfigError
from fastsft.fields import coerce, option
from fastsft.kernels import ENCODE_PATHS
from fastsft.kernels.packing import STRATEGIES
from fastsft.tokenizer import KINDS as TOKENIZER_BACKEND_KINDS

__all__ = [
    "DATA_KEYS",
    "DataArgs",
    "MixStrategy",
    "PackingStrategy",
    "data_args_from_mapping",
    "dataset_names",
]

# Choices derived from where each is defined (the packing table, the kernel paths, the tokenizer backends).
EncodePath = Literal[ENCODE_PATHS]  # type: ignore[valid-type]
TokenizerBackendKind = Literal[TOKENIZER_BACKEND_KINDS]  # type: ignore[valid-type]
PackingStrategy = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]  # the names in the one table
MixStrategy = Literal["concat", "interleave_under", "interleave_over", "interleave_once"]


@dataclass
class DataArgs:
    """Data options (LLaMA-Factory key names; the last group is fastsft's own)."""

    dataset: str | list[str] | None = option(
        None, "dataset names in dataset_info.json, or files/folders; comma-separated or repeated"
    )
    dataset_dir: str = option("data", "folder holding dataset_info.json and the data files")
    template: str | None = option(
        None,
        "chat template, e.g. qwen (see `fastsft templates`; unset: parsed from the tokenizer, as LLaMA-Factory does); "
        "chat_template: the tokenizer's own jinja template, TRL-exact (docs/chat_templates.md)",
    )
    cutoff_len: int = option(2048, "maximum tokens per sample (packed rows are cutoff_len long)")
    train_on_prompt: bool = option(False, "also train on prompt tokens")
    mask_history: bool = option(False, "train on the last turn only")
    packing: bool | None = option(None, "pack samples into rows of cutoff_len tokens")
    neat_packing: bool = option(False, "pack without cross-sequence attention (implies packing)")
    tool_format: str | None = option(None, "tool-call format overriding the template's")
    default_system: str | None = option(None, "system prompt for samples without one")
    enable_thinking: bool | None = option(True, "reasoning templates: keep or drop thoughts (null: unset)")
    preserve_thinking: bool = option(False, "reasoning templates: keep history thoughts under mask_history")
    max_samples: int | None = option(None, "read at most this many samples per dataset")
    mix_strategy: MixStrategy = option(
        "concat", "how several datasets are merged: concat, or interleave_under / interleave_over"
    )
    interleave_probs: str | list[float] | None = option(
        None, "interleave: the chance of drawing from each dataset, comma-separated (null: round robin)"
    )
    val_size: float = option(
        0.0, "validation split: a fraction in (0, 1) or a number of samples (split after mixing, by seed)"
    )
    eval_dataset: str | list[str] | None = option(
        None, "validation datasets (instead of val_size), mixed like dataset; comma-separated or repeated"
    )
    eval_on_each_dataset: bool = option(False, "keep every eval_dataset a split of its own (validation_NAME)")
    seed: int = option(42, "seed of the val_size split and of interleaving (fastsft train: also of training)")
    preprocessing_batch_size: int = option(
        1000, "samples per preprocessing batch (LLaMA-Factory packs per batch)"
    )
    preprocessing_num_workers: int | None = option(
        None, "encoding processes (default 1; pays off with many cores)", flag="--workers"
    )
    streaming: bool = option(
        False, "fastsft train: read, tokenize and pack the data while training (needs max_steps)"
    )
    buffer_size: int = option(16384, "streaming: samples in the shuffle buffer")
    tokenized_path: str | None = option(
        None,
        "saved dataset: preprocess writes it, train loads it (or builds and saves it there)",
        flag="--output",
    )
    # fastsft's own options
    packing_strategy: PackingStrategy | None = option(
        None,
        "llamafactory: LLaMA-Factory's rows (default); bfd: fastsft's whole-dataset best fit (fewer rows, "
        "samples kept apart; losses then differ from LLaMA-Factory's)",
    )
    backend: EncodePath | None = option(
        None,
        "encode path: compiled kernels or the pure-Python reference (default: $FASTSFT_BACKEND or compiled)",
    )
    tokenizer_backend: TokenizerBackendKind | None = option(
        None, "tokenizer implementation (default: $FASTSFT_TOKENIZER or auto)"
    )
    strict: bool = option(False, "fail on the first sample LLaMA-Factory would drop")
    skip_malformed: bool = option(False, "count and skip malformed samples instead of failing")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(DataArgs)
        for name in DATA_KEYS:
            setattr(self, name, coerce(name, getattr(self, name), hints[name]))
        if self.mask_history and self.train_on_prompt:
            raise ConfigError("`mask_history` is incompatible with `train_on_prompt` (as in LLaMA-Factory)")
        for name in (
            "cutoff_len",
            "preprocessing_batch_size",
            "max_samples",
            "preprocessing_num_workers",
            "buffer_size",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"`{name}` must be at least 1, got {value}")
        if self.neat_packing:
            self.packing = True
        self._check_mixing_and_splits()
        if self.streaming:
            self._check_streaming()
        if self.packing_strategy == "bfd" and not self.packing:  # llamafactory is the default anyway
            raise ConfigError(f"`packing_strategy: {self.packing_strategy}` needs `packing: true`")

    def _check_mixing_and_splits(self) -> None:
        """LLaMA-Factory's ``DataArguments`` checks of the eval and mixing keys (``interleave_probs``
        becomes a list of floats)."""
        if self.val_size > 1e-6 and not self.dataset:
            raise ConfigError("`val_size` needs `dataset` (it splits the training datasets)")
        if self.val_size > 1e-6 and self.eval_dataset:
            raise ConfigError("set either `val_size` or `eval_dataset`, not both (as in LLaMA-Factory)")
        if self.interleave_probs is None:
            return
        if self.mix_strategy == "concat":
            raise ConfigError("`interleave_probs` needs an interleave `mix_strategy` (it is `concat`)")
        if isinstance(self.interleave_probs, str):
            try:
                self.interleave_probs = [float(p) for p in self.interleave_probs.split(",")]
            except ValueError:
                raise ConfigError(
                    f"`interleave_probs` must be comma-separated numbers, got {self.interleave_probs!r}"
                ) from None
        for key in ("dataset", "eval_dataset"):
            names = getattr(self, key)
            count = len(dataset_names(names)) if names else None
            if count is not None and count != len(self.interleave_probs):
                raise ConfigError(
                    f"`interleave_probs` has {len(self.interleave_probs)} values for {count} `{key}` entries"
                )

    def _check_streaming(self) -> None:
        """LLaMA-Factory's rules for ``streaming``, and what fastsft's stream does not do."""
        if self.val_size > 1e-6 and self.val_size < 1:
            raise ConfigError(
                "`streaming: true` needs an integer val_size (a sample count), as in LLaMA-Factory"
            )
        if self.max_samples is not None:
            raise ConfigError("`max_samples` is incompatible with `streaming` (as in LLaMA-Factory)")
        if self.mix_strategy == "interleave_once":
            raise ConfigError(
                "`mix_strategy: interleave_once` is not supported: the datasets<=4.0.0 LLaMA-Factory 0.9.5 runs "
                "on have no all_exhausted_without_replacement for iterable datasets"
            )
        if self.packing_strategy not in (None, "llamafactory"):
            raise ConfigError(
                f"`packing_strategy: {self.packing_strategy}` packs the whole dataset; with `streaming: true` "
                "rows are packed within each preprocessing batch (packing_strategy: llamafactory)"
            )

    @property
    def effective_cutoff_len(self) -> int:
        """LLaMA-Factory lowers ``cutoff_len`` by one when packing; rows are then ``cutoff_len`` long."""
        return self.cutoff_len - 1 if self.packing else self.cutoff_len

    @property
    def strategy(self) -> PackingStrategy:
        """The packing strategy in force (``llamafactory`` unless set)."""
        return self.packing_strategy or "llamafactory"

    @property
    def packing_shards(self) -> int:
        """How many contiguous shards LLaMA-Factory packs apart: its ``preprocessing_num_workers``
        when it packs (``datasets``' ``map(num_proc=N)``), so its packed rows depend on that key; 1
        otherwise, where the worker count changes nothing in the rows."""
        if not self.packing or self.strategy != "llamafactory":
            return 1
        return max(1, self.preprocessing_num_workers or 1)

    @property
    def rows_attend_across(self) -> bool:
        """Whether a packed row's samples attend to each other: LLaMA-Factory's ``packing`` without
        ``neat_packing`` (fastsft's ``bfd`` rows keep samples apart)."""
        return bool(self.packing) and not self.neat_packing and self.strategy == "llamafactory"

    def packing_notice(self) -> str | None:
        """The line ``fastsft train`` prints about LLaMA-Factory's plain packing and its alternative."""
        if not self.rows_attend_across:
            return None
        return (
            "packing without neat_packing: a row's samples attend to each other, as in LLaMA-Factory; "
            "neat_packing: true keeps them apart (each sample's loss then equals its unpacked loss)"
        )

    def require_dataset(self) -> str | list[str]:
        if not self.dataset:
            raise ConfigError("no dataset given (use --dataset NAME_OR_FILE or `dataset:` in --config)")
        return self.dataset


DATA_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DataArgs))


def data_args_from_mapping(values: dict[str, Any]) -> DataArgs:
    """``DataArgs`` from already-read data keys (YAML values or ``key=value`` override text)."""
    hints = typing.get_type_hints(DataArgs)
    return DataArgs(**{key: coerce(key, value, hints[key]) for key, value in values.items()})


def dataset_names(names: str | list[str]) -> list[str]:
    """The names of a ``dataset`` / ``eval_dataset`` value: a list, or comma-separated text; stripped."""
    return [name.strip() for name in (names.split(",") if isinstance(names, str) else names)]
