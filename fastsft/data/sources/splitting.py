"""The splits of a run and the raw samples each holds, in order, as LLaMA-Factory 0.9.5's ``get_dataset``.

LLaMA-Factory merges the datasets (``fastsft.data.sources.mixing``), then splits the merged raw rows,
before tokenizing: ``val_size`` is ``Dataset.train_test_split(test_size, seed=seed)`` (an int
above 1 is a row count, else a fraction), whose ``train`` split keeps the shuffled order; an
``eval_dataset`` list is merged like ``dataset`` (``validation``), or kept one split per dataset
with ``eval_on_each_dataset`` (``validation_NAME``). Each split is then tokenized (and packed)
on its own, so a split's preprocessing batches are its own rows in its own order.

A ``SplitSource`` names the datasets of a split and the order of their rows as indices into
their concatenation (``None``: all rows, in order, streamed without counting them first).
``RunDatasets`` holds the datasets of a run, resolved once (``resolve_run_datasets``) and passed
on, so a plain-path dataset is opened for its format only once per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastsft.data.data_args import DataArgs, dataset_names
from fastsft.data.sources.mixing import mixed_order
from fastsft.data.sources.parser import DatasetAttr, count_rows, input_paths, resolve_datasets
from fastsft.errors import ConfigError
from fastsft.safe_output import check_output_path, check_replaceable

__all__ = [
    "TRAIN",
    "VALIDATION",
    "RunDatasets",
    "SplitSource",
    "check_output",
    "data_inputs",
    "plan_splits",
    "resolve_run_datasets",
    "split_names",
    "train_test_indices",
]

TRAIN = "train"
VALIDATION = "validation"


@dataclass
class SplitSource:
    """The raw samples of one split: rows of ``attrs``, in ``order`` (concatenation indices) or all in turn."""

    attrs: list[DatasetAttr]
    order: np.ndarray | None = None
    lengths: list[int] | None = None  # rows of each dataset (after max_samples), given with an order


@dataclass(frozen=True)
class RunDatasets:
    """The datasets of a run, resolved: ``dataset`` (training) and ``eval_dataset``, each in order."""

    train: list[DatasetAttr]
    eval: list[DatasetAttr]

    @property
    def all(self) -> list[DatasetAttr]:
        """Every dataset the run reads."""
        return [*self.train, *self.eval]


def resolve_run_datasets(args: DataArgs) -> RunDatasets:
    """``args.dataset`` and ``args.eval_dataset`` resolved (``resolve_datasets``), once for the run."""
    train = resolve_datasets(args.dataset, args.dataset_dir) if args.dataset else []
    evaluation = resolve_datasets(args.eval_dataset, args.dataset_dir) if args.eval_dataset else []
    return RunDatasets(train, evaluation)


def split_names(args: DataArgs) -> list[str]:
    """The splits ``args`` make, in LLaMA-Factory's ``DatasetDict`` order."""
    names = [TRAIN] if args.dataset else []
    if args.val_size > 1e-6:
        names.append(VALIDATION)
    elif args.eval_dataset and args.eval_on_each_dataset:
        names += [f"{VALIDATION}_{attr}" for attr in dataset_names(args.eval_dataset)]
    elif args.eval_dataset:
        names.append(VALIDATION)
    return names


def train_test_indices(n: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``datasets.Dataset.train_test_split(test_size, seed=seed)``'s (train, test) indices for ``n`` rows.

    ``val_size`` above 1 is a count (LLaMA-Factory passes ``int(val_size)``), else a fraction (rounded up).
    """
    if val_size > 1:
        n_test = int(val_size)
        if n_test >= n:
            raise ConfigError(f"`val_size: {n_test}` leaves no training samples (the datasets have {n})")
    else:
        if val_size >= 1:
            raise ConfigError(f"`val_size: {val_size}` must be a fraction below 1 or a sample count above 1")
        n_test = math.ceil(val_size * n)
    n_train = n - n_test
    if n_train == 0:
        raise ConfigError(f"`val_size: {val_size}` leaves no training samples (the datasets have {n})")
    permutation = np.random.default_rng(seed).permutation(n)
    return permutation[n_test : n_test + n_train], permutation[:n_test]


def plan_splits(args: DataArgs, datasets: RunDatasets | None = None) -> dict[str, SplitSource]:
    """Every split of ``args`` (``split_names``) with its raw samples in LLaMA-Factory's order.

    ``datasets``: the run's datasets if already resolved (else resolved here). Rows are counted
    (one read of each dataset) only where an order depends on the counts: interleaving or ``val_size``.
    """
    if datasets is None:
        datasets = resolve_run_datasets(args)
    splits: dict[str, SplitSource] = {}
    if args.dataset:
        merged = _merged(args, datasets.train)
        if args.val_size > 1e-6:
            lengths = merged.lengths or _lengths(args, merged.attrs)
            order = np.arange(sum(lengths)) if merged.order is None else merged.order
            train, test = train_test_indices(len(order), args.val_size, args.seed)
            splits[TRAIN] = SplitSource(merged.attrs, order[train], lengths)
            splits[VALIDATION] = SplitSource(merged.attrs, order[test], lengths)
        else:
            splits[TRAIN] = merged
    if args.eval_dataset:
        attrs = datasets.eval
        if args.eval_on_each_dataset:
            for attr in attrs:
                splits[f"{VALIDATION}_{attr.name}"] = SplitSource([attr])
        else:
            splits[VALIDATION] = _merged(args, attrs)
    return splits


def _merged(args: DataArgs, attrs: list[DatasetAttr]) -> SplitSource:
    if len(attrs) == 1 or args.mix_strategy == "concat":
        return SplitSource(attrs)
    lengths = _lengths(args, attrs)
    probs = None if args.interleave_probs is None else list(args.interleave_probs)
    return SplitSource(attrs, mixed_order(lengths, args.mix_strategy, probs, args.seed), lengths)


def _lengths(args: DataArgs, attrs: list[DatasetAttr]) -> list[int]:
    return [count_rows(attr, args.dataset_dir, max_samples=args.max_samples) for attr in attrs]


def data_inputs(args: DataArgs, datasets: RunDatasets | None = None) -> list[Path]:
    """The files and folders the run's data is read from (``dataset`` and ``eval_dataset``, with
    ``dataset_dir``): what no output may be, hold or lie inside. ``datasets``: the run's datasets if
    already resolved (else resolved here)."""
    attrs = (datasets or resolve_run_datasets(args)).all
    return [Path(path) for path in input_paths(attrs, args.dataset_dir)]


def check_output(
    args: DataArgs,
    output: Path,
    *,
    overwrite: bool,
    tokenizer_dir: str | None,
    datasets: RunDatasets | None = None,
) -> None:
    """Refuse ``output`` when it is, holds or lies inside an input (dataset files, ``dataset_dir``,
    ``tokenizer_dir``, the eval datasets too) or the working directory, or when it exists and may
    not be replaced. ``datasets``: the run's datasets if already resolved (else resolved here)."""
    inputs = data_inputs(args, datasets)
    if tokenizer_dir and Path(tokenizer_dir).is_dir():
        inputs.append(Path(tokenizer_dir))
    check_output_path(output, inputs)
    check_replaceable(output, overwrite)
