"""Batch collation for SFT training.

``PaddingCollator`` builds LLaMA-Factory 0.9.5's padded batches (its SFT workflow's
``DataCollatorForSeq2Seq`` set-up) without a tokenizer. ``VarlenCollator`` builds padding-free
batches: every sequence of the batch concatenated into one row plus the cumulative sequence
lengths that flash-attention style kernels (and ``fastsft.train.attention``) consume.
``TokenBudgetBatchSampler`` groups samples into batches under a token budget. All three work
with a plain ``DataLoader``, HF ``Trainer`` and TRL ``SFTTrainer``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Sampler

from fastsft import IGNORE_INDEX
from fastsft.errors import ConfigError, DataError
from fastsft.kernels import resolve_encode_path, select_kernels

__all__ = [
    "BOUNDARY_COLUMNS",
    "PaddingCollator",
    "TokenBudgetBatchSampler",
    "VarlenCollator",
    "merge_padding_runs",
    "split_largest",
]

Feature = Mapping[str, Any]


def _int_row(feature: Feature, key: str, position: int) -> np.ndarray:
    """``feature[key]`` (list, numpy array or tensor) as a 1-D int64 array, or a located error."""
    if key not in feature or feature[key] is None:
        raise DataError(f"feature at batch position {position} has no '{key}'", field=key)
    row = np.asarray(feature[key])
    if row.ndim != 1:
        raise DataError(
            f"expected a flat list of ids at batch position {position}, got shape {row.shape}", field=key
        )
    if row.size and row.dtype.kind not in "iub":
        raise DataError(f"expected integer ids at batch position {position}, got {row.dtype}", field=key)
    return row.astype(np.int64, copy=False)


def _check_length(row: np.ndarray, expected: int, key: str, position: int) -> None:
    if len(row) != expected:
        raise DataError(
            f"has {len(row)} entries but input_ids has {expected} (batch position {position})", field=key
        )


def _has(feature: Feature, key: str) -> bool:
    return feature.get(key) is not None


class PaddingCollator:
    """LLaMA-Factory 0.9.5's unpacked SFT collation, tokenizer-free.

    LLaMA-Factory's SFT workflow pads with ``DataCollatorForSeq2Seq`` (``pad_to_multiple_of=8``
    when training, ``None`` for prediction): ``input_ids`` with the pad id, ``attention_mask``
    with 0 (all ones when a feature has none), ``labels`` with ``label_pad_token_id``, every
    row to the longest rounded up to ``pad_to_multiple_of``, int64. The output tensors are
    identical to it. ``position_ids``, which LLaMA-Factory leaves unpadded, are padded with 0;
    other keys (e.g. ``sequence_boundaries``) are not collated.
    """

    def __init__(
        self,
        pad_token_id: int,
        pad_to_multiple_of: int | None = None,
        label_pad_token_id: int = IGNORE_INDEX,
        padding_side: Literal["right", "left"] = "right",
        return_tensors: Literal["pt", "np"] = "pt",
    ) -> None:
        if not isinstance(pad_token_id, (int, np.integer)) or isinstance(pad_token_id, bool):
            raise ConfigError(f"pad_token_id must be an integer token id, got {pad_token_id!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ConfigError(
                f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of}"
            )
        if padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if return_tensors not in ("pt", "np"):
            raise ConfigError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_token_id = label_pad_token_id
        self.padding_side = padding_side
        self.return_tensors = return_tensors

    def __call__(self, features: Sequence[Feature]) -> dict[str, torch.Tensor | np.ndarray]:
        if len(features) == 0:
            raise DataError("cannot collate an empty batch")
        first = features[0]
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0}
        if _has(first, "labels"):
            pad_values["labels"] = self.label_pad_token_id
        if _has(first, "position_ids"):
            pad_values["position_ids"] = 0

        columns: dict[str, list[np.ndarray]] = {key: [] for key in pad_values}
        for position, feature in enumerate(features):
            input_ids = _int_row(feature, "input_ids", position)
            columns["input_ids"].append(input_ids)
            for key in pad_values:
                if key == "input_ids":
                    continue
                if key == "attention_mask" and not _has(feature, key):
                    row = np.ones(len(input_ids), dtype=np.int64)
                else:
                    row = _int_row(feature, key, position)
                    _check_length(row, len(input_ids), key, position)
                columns[key].append(row)

        width = max(len(row) for row in columns["input_ids"])
        if self.pad_to_multiple_of is not None and width % self.pad_to_multiple_of != 0:
            width = (width // self.pad_to_multiple_of + 1) * self.pad_to_multiple_of

        batch: dict[str, torch.Tensor | np.ndarray] = {}
        for key, rows in columns.items():
            padded = np.full((len(rows), width), pad_values[key], dtype=np.int64)
            for index, row in enumerate(rows):
                if self.padding_side == "right":
                    padded[index, : len(row)] = row
                else:
                    padded[index, width - len(row) :] = row
            batch[key] = torch.from_numpy(padded) if self.return_tensors == "pt" else padded
        return batch


BOUNDARY_COLUMNS = ("position_ids", "seq_lengths")
BOUNDARIES_REMOVED = (
    "packed rows reached the collator without their sequence boundaries ({missing} missing): the trainer's "
    "remove_unused_columns dropped them (TRL's SFTTrainer keeps only input_ids, labels and seq_lengths); "
    "pass the dataset through fastsft.integrations.trl_dataset() or set remove_unused_columns=False"
)


def _positions_from_seq_lengths(feature: Feature, length: int, position: int) -> np.ndarray:
    """Position ids restarting at every sequence of TRL's ``seq_lengths`` (lengths summing to the row)."""
    seq_lengths = _int_row(feature, "seq_lengths", position)
    if seq_lengths.size == 0 or seq_lengths.min() < 1 or int(seq_lengths.sum()) != length:
        raise DataError(
            f"seq_lengths {seq_lengths.tolist()} must be positive and sum to the {length} input_ids "
            f"(batch position {position})",
            field="seq_lengths",
        )
    starts = np.repeat(np.cumsum(seq_lengths) - seq_lengths, seq_lengths)
    return np.arange(length, dtype=np.int64) - starts


def _check_boundaries_kept(feature: Feature, position: int) -> None:
    """Refuse a packed row whose boundary columns were removed (its neat-packing mask or params remain)."""
    mask = feature.get("attention_mask")
    packed_mask = mask is not None and len(mask) > 0 and int(np.max(np.asarray(mask))) > 1
    if packed_mask or _has(feature, "packing_params"):
        raise DataError(
            BOUNDARIES_REMOVED.format(missing=" and ".join(BOUNDARY_COLUMNS)), field="position_ids"
        )


def merge_padding_runs(positions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive one-token sequences (LLaMA-Factory's plain-packing padding) as one unlabelled sequence.

    LLaMA-Factory pads plain-packed rows with ``attention_mask`` 1 and position 0 on every padding
    token, so each would otherwise become a sequence of its own. A one-token sequence trains no
    label (its first label is always -100), so merging a run of them changes no loss.
    """
    singles = positions == 0
    singles[:-1] &= positions[1:] == 0
    run_inner = singles.copy()
    run_inner[1:] &= singles[:-1]
    run_inner[0] = False
    if not run_inner.any():
        return positions, labels
    index = np.arange(len(positions))
    run_start = np.maximum.accumulate(np.where(singles & ~run_inner, index, 0))
    positions = positions.copy()
    positions[singles] = (index - run_start)[singles]
    labels = labels.copy()
    labels[singles] = IGNORE_INDEX
    return positions, labels


def _varlen_rows(
    features: Sequence[Feature],
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
    """Per-feature ``input_ids``, ``labels``, ``position_ids`` with ``attention_mask == 0`` tokens dropped.

    Labels default to the input ids (as transformers' ``DataCollatorWithFlattening``). Boundaries
    come from ``position_ids`` or TRL's ``seq_lengths``; position ids are returned only when the
    batch has one of them, and empty rows are left out.
    """
    if len(features) == 0:
        raise DataError("cannot collate an empty batch")
    with_labels = _has(features[0], "labels")
    with_positions = _has(features[0], "position_ids") or _has(features[0], "seq_lengths")
    rows_ids: list[np.ndarray] = []
    rows_labels: list[np.ndarray] = []
    rows_positions: list[np.ndarray] | None = [] if with_positions else None
    for position, feature in enumerate(features):
        input_ids = _int_row(feature, "input_ids", position)
        labels = input_ids
        if with_labels:
            labels = _int_row(feature, "labels", position)
            _check_length(labels, len(input_ids), "labels", position)
        positions = None
        if _has(feature, "position_ids"):
            positions = _int_row(feature, "position_ids", position)
            _check_length(positions, len(input_ids), "position_ids", position)
        elif _has(feature, "seq_lengths"):
            positions = _positions_from_seq_lengths(feature, len(input_ids), position)
        else:
            _check_boundaries_kept(feature, position)
            if with_positions:
                raise DataError(
                    f"feature at batch position {position} has neither position_ids nor seq_lengths, "
                    "the first feature has them",
                    field="position_ids",
                )
        if _has(feature, "attention_mask"):
            mask = _int_row(feature, "attention_mask", position)
            _check_length(mask, len(input_ids), "attention_mask", position)
            if not mask.all():
                keep = mask != 0
                input_ids, labels = input_ids[keep], labels[keep]
                positions = positions[keep] if positions is not None else None
        if len(input_ids) == 0:
            continue
        if positions is not None:
            positions, labels = merge_padding_runs(positions, labels)
        rows_ids.append(input_ids)
        rows_labels.append(labels)
        if rows_positions is not None:
            rows_positions.append(positions)
    if not rows_ids:
        raise DataError("batch has no tokens (every feature is empty or fully masked)")
    return rows_ids, rows_labels, rows_positions


class VarlenCollator:
    """Padding-free collation: the whole batch as one row of concatenated sequences.

    Features are samples or pre-packed rows whose sequences are delimited by ``position_ids``
    restarting at 0 or by TRL's ``seq_lengths`` (LLaMA-Factory's packed rows are accepted;
    tokens with ``attention_mask`` 0, its padding, are dropped, and a run of its plain-packing
    padding becomes one unlabelled sequence). Returns ``input_ids``, ``labels`` and
    ``position_ids`` of shape ``[1, T]`` (int64) with the first label of every sequence set to
    ``separator_id`` and positions counting from ``position_ids_start``; with
    ``return_flash_kwargs``, ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32, ``S + 1``) and
    ``max_length_q``/``max_length_k`` (ints), the keyword arguments transformers' flash attention
    and ``fastsft.train.attention`` read; with ``return_seq_idx``, ``seq_idx`` (int32 ``[1, T]``,
    the sequence of every token, for linear-attention layers). There is no ``attention_mask``.
    The options mean what they mean in transformers' ``DataCollatorWithFlattening``.
    ``rows_attend_across``: every row is one attention span (its sequences attend to those before
    them in the row, positions still restarting), as LLaMA-Factory trains ``packing`` without
    ``neat_packing``; only a row's first label is then dropped.

    A packed row that lost its boundary columns (``remove_unused_columns``) while its
    neat-packing mask or ``packing_params`` remain is refused with a one-line ``DataError``.

    ``backend``: ``"compiled"`` or ``"python"`` kernels (``fastsft.kernels.select_kernels``);
    ``None`` reads ``$FASTSFT_BACKEND``, default compiled.
    """

    def __init__(
        self,
        return_flash_kwargs: bool = True,
        backend: Literal["compiled", "python"] | None = None,
        *,
        return_seq_idx: bool = False,
        separator_id: int = IGNORE_INDEX,
        position_ids_start: int = 0,
        rows_attend_across: bool = False,
    ) -> None:
        for name, value in (("separator_id", separator_id), ("position_ids_start", position_ids_start)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        self.return_flash_kwargs = return_flash_kwargs
        self.return_seq_idx = return_seq_idx
        self.separator_id = int(separator_id)
        self.position_ids_start = int(position_ids_start)
        self.rows_attend_across = rows_attend_across
        self.backend = resolve_encode_path(backend)
        self._varlen_flatten = select_kernels(self.backend).varlen_flatten

    def __call__(self, features: Sequence[Feature]) -> dict[str, torch.Tensor | int]:
        if self.rows_attend_across:
            rows_ids, rows_labels, rows_positions = _varlen_rows(features)
            flat = self._varlen_flatten(rows_ids, rows_labels, None)  # one sequence per row
            if rows_positions is not None:
                flat.position_ids[:] = np.concatenate(rows_positions)
        else:
            flat = self._varlen_flatten(*_varlen_rows(features))
        starts = flat.cu_seqlens[:-1]
        if self.separator_id != IGNORE_INDEX:
            flat.labels[starts] = self.separator_id
        if self.position_ids_start:
            np.add(flat.position_ids, self.position_ids_start, out=flat.position_ids)
        batch: dict[str, torch.Tensor | int] = {
            "input_ids": torch.from_numpy(flat.input_ids).view(1, -1),
            "labels": torch.from_numpy(flat.labels).view(1, -1),
            "position_ids": torch.from_numpy(flat.position_ids).view(1, -1),
        }
        if self.return_seq_idx:
            sequence_of_token = np.repeat(np.arange(len(starts), dtype=np.int32), np.diff(flat.cu_seqlens))
            batch["seq_idx"] = torch.from_numpy(sequence_of_token).view(1, -1)
        if self.return_flash_kwargs:
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = torch.from_numpy(flat.cu_seqlens)
            batch["max_length_q"] = batch["max_length_k"] = int(flat.max_seqlen)
        return batch


def _as_lengths(lengths: Iterable[int]) -> np.ndarray:
    values = np.asarray(lengths if isinstance(lengths, (np.ndarray, list, tuple)) else list(lengths))
    if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
        raise ConfigError(
            f"lengths must be a flat sequence of integers, got shape {values.shape} {values.dtype}"
        )
    if values.size and values.min() < 0:
        raise ConfigError(f"lengths must be >= 0, found {values.min()} at index {int(values.argmin())}")
    return values.astype(np.int64, copy=False)


def _fill_budget(indices: np.ndarray, lengths: np.ndarray, max_tokens: int) -> list[list[int]]:
    """Cut ``indices`` in order into batches of at most ``max_tokens`` tokens; an over-long sample stands alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, length in zip(indices.tolist(), lengths[indices].tolist()):
        if current and used + length > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    if current:
        batches.append(current)
    return batches


def split_largest(batches: list[list[int]], count: int) -> tuple[list[list[int]], int]:
    """Split up to ``count`` of the batches holding most samples in two; returns the batches and splits made."""
    splittable = sorted(
        (i for i, batch in enumerate(batches) if len(batch) > 1), key=lambda i: -len(batches[i])
    )
    chosen = set(splittable[:count])
    result: list[list[int]] = []
    for i, batch in enumerate(batches):
        if i in chosen:
            half = (len(batch) + 1) // 2
            result += [batch[:half], batch[half:]]
        else:
            result.append(batch)
    return result, len(chosen)


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches of sample indices whose summed length stays within ``max_tokens``.

    Per epoch, with a generator seeded by ``(seed, epoch)``: shuffle the indices, cut them into
    megabatches of ``megabatch_size`` samples, sort each megabatch by length (longest first)
    when ``group_by_length``, and fill batches greedily in that order. A sample longer than the
    budget is a batch on its own. Batches are dealt to ``num_replicas`` ranks in steps of
    neighbouring (similar-length) batches, steps in shuffled order. When the batch count does
    not divide by ``num_replicas``, the batches holding most samples are split in two so every
    rank gets the same number of disjoint batches and every sample is seen once; with
    ``drop_last`` the surplus batches are dropped instead. (Only a dataset too small to split
    that far repeats batches, as ``DistributedSampler`` does.)

    Deterministic and resumable: ``state_dict()``/``load_state_dict()`` record the epoch and
    the batches already handed out, and ``set_epoch`` starts a new order.
    """

    def __init__(
        self,
        lengths: Iterable[int],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        group_by_length: bool = True,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        megabatch_size: int | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
            )
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        if megabatch_size is not None and megabatch_size < 1:
            raise ConfigError(f"megabatch_size must be a positive integer or None, got {megabatch_size}")
        self.lengths = _as_lengths(lengths)
        self.max_tokens = int(max_tokens)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.group_by_length = group_by_length
        self.num_replicas = num_replicas
        self.rank = rank
        if megabatch_size is None:
            mean_length = max(1.0, float(self.lengths.mean())) if self.lengths.size else 1.0
            megabatch_size = 50 * num_replicas * max(1, int(self.max_tokens // mean_length))
        self.megabatch_size = megabatch_size
        self.epoch = 0
        self._consumed = 0
        self._plan: tuple[int, list[list[int]]] | None = None

    def _global_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        count = len(self.lengths)
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        if not self.group_by_length:
            return _fill_budget(order, self.lengths, self.max_tokens)
        batches: list[list[int]] = []
        for start in range(0, count, self.megabatch_size):
            megabatch = order[start : start + self.megabatch_size]
            megabatch = megabatch[np.argsort(-self.lengths[megabatch], kind="stable")]
            batches += _fill_budget(megabatch, self.lengths, self.max_tokens)
        return batches

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        batches = self._global_batches(epoch)
        replicas = self.num_replicas
        surplus = len(batches) % replicas
        if surplus and self.drop_last:
            batches = batches[: len(batches) - surplus]
        elif surplus:
            missing = replicas - surplus
            while missing:
                batches, made = split_largest(batches, missing)
                if made == 0:
                    break
                missing -= made
            batches += [batches[i % len(batches)] for i in range(missing)]
        steps = len(batches) // replicas
        step_order = (
            np.random.default_rng([self.seed, epoch, 1]).permutation(steps) if self.shuffle else range(steps)
        )
        return [batches[step * replicas + self.rank] for step in step_order]

    def _batches(self) -> list[list[int]]:
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self._rank_batches(self.epoch))
        return self._plan[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        while self._consumed < len(batches):
            self._consumed += 1
            yield batches[self._consumed - 1]
        self._consumed = 0

    def __len__(self) -> int:
        """Batches this rank gets in the current epoch (the count varies a little between epochs)."""
        return len(self._batches())

    def batches_in_epoch(self, epoch: int) -> int:
        """Batches this rank gets in ``epoch``, without changing the current epoch."""
        return len(self._batches()) if epoch == self.epoch else len(self._rank_batches(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._consumed = 0

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "num_samples": len(self.lengths),
            "num_replicas": self.num_replicas,
            "shuffle": self.shuffle,
            "group_by_length": self.group_by_length,
            "drop_last": self.drop_last,
            "megabatch_size": self.megabatch_size,
        }

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches handed out so far (with prefetching, more than the trainer consumed)."""
        return {"epoch": self.epoch, "batches_consumed": self._consumed, **self._fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next iteration continues after ``state["batches_consumed"]`` batches of its epoch."""
        for key, value in self._fingerprint().items():
            if key in state and state[key] != value:
                raise ConfigError(
                    f"sampler state was saved with {key}={state[key]!r}, this sampler has {value!r}"
                )
        self.epoch = int(state["epoch"])
        self._consumed = int(state["batches_consumed"])
