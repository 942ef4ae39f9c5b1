"""fastsft's saved rows and collators in the trainers users already run: TRL ``SFTTrainer`` and HF ``Trainer``.

``trl_inputs`` is the one entry point for TRL: it puts a saved dataset into TRL's column
conventions (``input_ids``, ``labels`` and, for packed rows, ``seq_lengths``: exactly the columns
``SFTTrainer`` keeps under its default ``remove_unused_columns=True``), fixes the tokenizer for the
template the data was encoded with (so the eos id the model is aligned to is the one the data
trains), and returns the ``SFTConfig`` settings that keep TRL from re-processing or truncating
pre-tokenized rows. ``use_token_budget`` makes a ``Trainer`` (TRL's included) draw its batches
from a ``TokenBudgetBatchSampler``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler

from fastsft.collators import TokenBudgetBatchSampler, VarlenCollator, merge_padding_runs, split_largest
from fastsft.data.rows.builder import MEDIA_COLUMNS
from fastsft.errors import ConfigError, DataError

__all__ = ["EpochBatches", "TrlInputs", "sequence_lengths", "trl_dataset", "trl_inputs", "use_token_budget"]

TRL_COLUMNS = ("input_ids", "labels", "seq_lengths")


@dataclass
class TrlInputs:
    """What ``trl_inputs`` returns: ``SFTConfig(**config_kwargs)`` and ``SFTTrainer(**trainer_kwargs)``."""

    config_kwargs: dict[str, Any] = field(default_factory=dict)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)


def sequence_lengths(
    input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray | None
) -> list[int]:
    """Lengths of the sequences of one packed row, after its ``attention_mask == 0`` padding is dropped.

    A sequence starts at every position id 0; a run of one-token sequences (LLaMA-Factory's
    plain-packing padding) counts as one sequence, as ``VarlenCollator`` collates it.
    """
    labels = np.zeros(len(input_ids), dtype=np.int64)
    return _packed_row_in_trl_columns(input_ids, labels, position_ids, attention_mask)[2]


def _packed_row_in_trl_columns(
    input_ids: np.ndarray, labels: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One packed row as ``VarlenCollator`` reads it: ids, labels and sequence lengths, padding dropped.

    A merged run of one-token sequences keeps no label (``merge_padding_runs``), so the TRL row trains
    exactly the labels the saved row trains.
    """
    keep = np.ones(len(input_ids), dtype=bool) if attention_mask is None else np.asarray(attention_mask) != 0
    positions = np.asarray(position_ids, dtype=np.int64)[keep]
    labels = np.asarray(labels)[keep]
    if positions.size == 0:
        return np.asarray(input_ids)[keep], labels, []
    positions, labels = merge_padding_runs(positions, labels)
    starts = positions == 0
    starts[0] = True
    bounds = np.append(np.flatnonzero(starts), positions.size)
    return np.asarray(input_ids)[keep], labels, np.diff(bounds).tolist()


def trl_dataset(dataset: Any) -> Any:
    """A saved fastsft (or LLaMA-Factory) split in TRL's columns: ``input_ids``, ``labels``, ``seq_lengths``.

    The empty media columns (which make ``SFTTrainer`` take the data for a vision dataset) are
    dropped; a media column holding anything is refused. Packed rows get ``seq_lengths`` from
    their ``position_ids`` and lose their ``attention_mask == 0`` padding; nothing is truncated.
    """
    for name in MEDIA_COLUMNS:
        if name in dataset.column_names and any(value for value in dataset[name]):
            raise DataError(f"column '{name}' holds media; TRL's text SFTTrainer cannot train it", field=name)
    if "input_ids" not in dataset.column_names:
        raise DataError(
            "dataset has no 'input_ids': pass the output of `fastsft preprocess`", field="input_ids"
        )
    packed = "position_ids" in dataset.column_names
    if not packed:
        keep = [name for name in ("input_ids", "labels") if name in dataset.column_names]
        return dataset.select_columns(keep)

    def to_trl(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in TRL_COLUMNS}
        masks = batch.get("attention_mask") or [None] * len(batch["input_ids"])
        for ids, labels, positions, mask in zip(
            batch["input_ids"], batch["labels"], batch["position_ids"], masks
        ):
            row = _packed_row_in_trl_columns(np.asarray(ids), np.asarray(labels), np.asarray(positions), mask)
            for name, value in zip(TRL_COLUMNS, row):
                out[name].append(value)
        return out

    return dataset.map(to_trl, batched=True, remove_columns=dataset.column_names, desc="fastsft: TRL columns")


def trl_inputs(
    dataset: Any,
    tokenizer: Any,
    template: str,
    collator: Any = None,
) -> TrlInputs:
    """The settings that make TRL's ``SFTTrainer`` train a fastsft dataset as it was preprocessed.

    ``template`` is the ``--template`` the data was preprocessed with: a copy of ``tokenizer`` is
    fixed for it as LLaMA-Factory does (its eos becomes the template's stop word), so TRL's
    alignment of the model's special tokens with the tokenizer keeps the eos the data trains.
    ``collator`` defaults to ``VarlenCollator()``. ``config_kwargs``: ``max_length=None`` and
    ``skip_prepare_dataset`` (pre-tokenized rows are neither re-tokenized nor cut).
    """
    from fastsft.data.data_args import DataArgs
    from fastsft.data.pipeline import prepare_run

    fixed = copy.deepcopy(tokenizer)
    prepare_run(DataArgs(template=template), fixed, fingerprint=False)  # fixes ``fixed`` for the template
    return TrlInputs(
        config_kwargs={"max_length": None, "dataset_kwargs": {"skip_prepare_dataset": True}},
        trainer_kwargs={
            "train_dataset": trl_dataset(dataset),
            "processing_class": fixed,
            "data_collator": collator if collator is not None else VarlenCollator(),
        },
    )


class EpochBatches(Sampler[list[int]]):
    """A ``TokenBudgetBatchSampler`` with the same number of batches in every epoch, for ``Trainer``.

    ``Trainer`` reads the batch count once and runs that many batches in every epoch, but the
    sampler's count varies a little between epochs: a longer epoch would lose its last batches.
    Every epoch here has ``count`` batches (the most any of the first ``epochs`` epochs has),
    reached by splitting the batches holding most samples in two, so every sample is still seen
    once per epoch within the budget. An epoch that cannot be brought to ``count`` is refused.
    """

    def __init__(self, sampler: TokenBudgetBatchSampler, epochs: int) -> None:
        self.sampler = sampler
        self.count = max(sampler.batches_in_epoch(epoch) for epoch in range(max(1, epochs)))

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(self.sampler)
        while len(batches) < self.count:
            batches, made = split_largest(batches, self.count - len(batches))
            if made == 0:
                break
        if len(batches) != self.count:
            raise DataError(
                f"epoch {self.sampler.epoch} has {len(batches)} token-budget batches, the trainer expects "
                f"{self.count}: set num_train_epochs (not only max_steps) so every epoch is planned",
                field="max_tokens",
            )
        yield from batches

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


# ``Trainer`` methods without a public equivalent that ``use_token_budget``'s data loader calls;
# checked when it is installed, not at the first batch.
TRAINER_METHODS_USED = ("_remove_unused_columns", "_get_collator_with_removed_columns")


def use_token_budget(trainer: Any, sampler: TokenBudgetBatchSampler) -> Any:
    """Make ``trainer`` (HF ``Trainer`` or a subclass such as TRL's ``SFTTrainer``) batch by ``sampler``.

    ``Trainer`` has no ``batch_sampler`` argument; this replaces the trainer's
    ``get_train_dataloader`` with one that keeps its column removal, collator and worker
    settings and hands ``sampler`` to the ``DataLoader`` as its ``batch_sampler``. A sampler
    built with ``num_replicas > 1`` already deals each rank its batches, so Accelerate's
    sharding is turned off for it; with ``num_replicas=1`` Accelerate deals the batches.

    ``Trainer`` runs the same number of batches in every epoch, so the sampler is handed over
    in ``EpochBatches``, which gives every planned epoch (``num_train_epochs``, or as many as
    ``max_steps`` needs) the same count. Returns ``trainer``.
    """
    missing = [name for name in TRAINER_METHODS_USED if not callable(getattr(trainer, name, None))]
    if missing:
        import transformers

        raise ConfigError(
            f"use_token_budget keeps the trainer's column removal through {', '.join(missing)}, which "
            f"{type(trainer).__name__} lacks (transformers {transformers.__version__})"
        )
    if len(sampler.lengths) != len(trainer.train_dataset):
        raise DataError(
            f"the sampler has {len(sampler.lengths)} lengths but the training set has "
            f"{len(trainer.train_dataset)} rows",
            field="lengths",
        )

    def get_train_dataloader() -> DataLoader:
        dataset = trainer.train_dataset
        collate = trainer.data_collator
        if hasattr(dataset, "column_names"):
            dataset = trainer._remove_unused_columns(dataset, description="training")
        else:
            collate = trainer._get_collator_with_removed_columns(collate, description="training")
        args = trainer.args
        loader = DataLoader(
            dataset,
            batch_sampler=EpochBatches(sampler, planned_epochs),
            collate_fn=collate,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
        )
        prepared = trainer.accelerator.prepare(loader)
        shard = getattr(prepared, "batch_sampler", None)
        if sampler.num_replicas > 1 and isinstance(getattr(shard, "batch_sampler", None), EpochBatches):
            shard.num_processes, shard.process_index = 1, 0
        return prepared

    args = trainer.args
    planned_epochs = math.ceil(args.num_train_epochs)
    if args.max_steps > 0:  # a step count: plan the epochs it can reach, plus one
        batches = max(1, sampler.batches_in_epoch(0))
        planned_epochs = math.ceil(args.max_steps * args.gradient_accumulation_steps / batches) + 1
    trainer.get_train_dataloader = get_train_dataloader
    return trainer
