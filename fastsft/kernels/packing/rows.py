"""``rows_from_order``: the readable reference of ``materialize_rows``, rows from a packer's answer."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence

from fastsft import IGNORE_INDEX

__all__ = ["rows_from_order"]


def rows_from_order(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    order: Sequence[int],
    row_bounds: Sequence[int],
    *,
    neat_packing: bool,
    row_length: int = 0,
    pad_token_id: int = 0,
) -> dict[str, list[list[int]]]:
    """Packed rows with ``position_ids`` restarting at every sequence.

    The attention mask is 1, or with ``neat_packing`` the 1-based index of the sequence in its
    row. With ``row_length > 0`` rows are padded to it as LLaMA-Factory does (pad id, position 0,
    label -100, mask 0 if neat else 1); ``row_length = 0`` leaves rows unpadded.
    """
    rows: dict[str, list[list[int]]] = defaultdict(list)
    for start, end in itertools.pairwise(row_bounds):
        row_ids: list[int] = []
        row_mask: list[int] = []
        row_pos: list[int] = []
        row_labels: list[int] = []
        for seq_idx, index in enumerate(order[start:end]):
            length = len(input_ids[index])
            row_ids += input_ids[index]
            row_labels += labels[index]
            row_pos += range(length)
            row_mask += [seq_idx + 1 if neat_packing else 1] * length
        pad_length = max(row_length - len(row_ids), 0)
        row_ids += [pad_token_id] * pad_length
        row_pos += [0] * pad_length
        row_labels += [IGNORE_INDEX] * pad_length
        row_mask += [0 if neat_packing else 1] * pad_length
        rows["input_ids"].append(row_ids)
        rows["attention_mask"].append(row_mask)
        rows["position_ids"].append(row_pos)
        rows["labels"].append(row_labels)
    return dict(rows)
