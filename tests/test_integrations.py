"""``fastsft.integrations``: TRL's columns for saved rows, and the token-budget hook's checks.

The trainers themselves run in ``tests/test_recipes.py``; these are the fast checks of the pieces.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsft import IGNORE_INDEX
from fastsft.collators import TokenBudgetBatchSampler, VarlenCollator
from fastsft.errors import ConfigError, DataError
from fastsft.integrations import sequence_lengths, trl_dataset, use_token_budget

PAD = 7

packed_rows = st.lists(
    st.tuples(
        st.lists(st.integers(1, 9), min_size=1, max_size=4),  # sequence lengths in the row
        st.integers(0, 6),  # padding tokens at the end
        st.sampled_from(["plain", "neat", "masked"]),  # LF plain (mask 1), LF neat, fastsft bfd plain
    ),
    min_size=1,
    max_size=4,
)


def make_row(lengths: list[int], padding: int, kind: str, rng: random.Random) -> dict[str, list[int]]:
    positions = [p for length in lengths for p in range(length)] + [0] * padding
    ids = [rng.randrange(8, 100) for _ in range(sum(lengths))] + [PAD] * padding
    labels = [rng.choice([IGNORE_INDEX, token]) for token in ids[: sum(lengths)]] + [IGNORE_INDEX] * padding
    if kind == "neat":
        mask = [k + 1 for k, length in enumerate(lengths) for _ in range(length)] + [0] * padding
    else:
        mask = [1] * sum(lengths) + [1 if kind == "plain" else 0] * padding
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask}


@settings(max_examples=30, deadline=None)  # each example runs datasets' map
@given(packed_rows, st.randoms(use_true_random=False))
def test_trl_columns_collate_like_the_saved_rows(rows: list, rng: random.Random) -> None:
    """A row in TRL's columns (``seq_lengths``) gives the same varlen batch as the saved row."""
    saved = [make_row(lengths, padding, kind, rng) for lengths, padding, kind in rows]
    converted = trl_dataset(Dataset.from_list(saved))
    assert converted.column_names == ["input_ids", "labels", "seq_lengths"]
    for row, trl_row in zip(saved, converted):
        assert sum(trl_row["seq_lengths"]) == len(trl_row["input_ids"])
        assert trl_row["seq_lengths"] == sequence_lengths(
            np.asarray(row["input_ids"]), np.asarray(row["position_ids"]), row["attention_mask"]
        )
    collator = VarlenCollator(backend="python", return_seq_idx=True)
    expected, batch = collator(saved), collator(list(converted))
    assert expected.keys() == batch.keys()
    for key, value in expected.items():
        assert torch.equal(batch[key], value) if torch.is_tensor(value) else batch[key] == value, key


def test_labelled_one_token_sequences_train_nothing_in_trl_columns_either() -> None:
    """Two one-token sequences are merged as padding is; their labels must go with them (hypothesis found it)."""
    row = {"input_ids": [10, 11], "labels": [5, 6], "position_ids": [0, 0], "attention_mask": [1, 1]}
    (converted,) = list(trl_dataset(Dataset.from_list([row])))
    assert converted == {"input_ids": [10, 11], "labels": [IGNORE_INDEX, IGNORE_INDEX], "seq_lengths": [2]}
    collator = VarlenCollator(backend="python")
    assert collator([converted])["labels"].tolist() == collator([row])["labels"].tolist()


def test_plain_padding_is_one_sequence() -> None:
    row = make_row([3, 2], 4, "plain", random.Random(0))
    assert sequence_lengths(np.asarray(row["input_ids"]), np.asarray(row["position_ids"]), None) == [3, 2, 4]
    batch = VarlenCollator(backend="python")([row])
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9]
    assert batch["labels"][0, 5:].tolist() == [IGNORE_INDEX] * 4


def test_trl_dataset_drops_empty_media_and_refuses_media() -> None:
    unpacked = Dataset.from_dict(
        {"input_ids": [[1, 2]], "attention_mask": [[1, 1]], "labels": [[-100, 2]], "images": [None]}
    )
    assert trl_dataset(unpacked).column_names == ["input_ids", "labels"]
    with_media = Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[-100, 2]], "images": [["a.png"]]})
    with pytest.raises(DataError, match="'images' holds media"):
        trl_dataset(with_media)
    with pytest.raises(DataError, match="no 'input_ids'"):
        trl_dataset(Dataset.from_dict({"text": ["hi"]}))


class FakeTrainer:
    train_dataset = Dataset.from_dict({"input_ids": [[1], [2], [3]]})

    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        return dataset

    def _get_collator_with_removed_columns(self, collator: Any, description: str | None = None) -> Any:
        return collator


def test_use_token_budget_refuses_a_trainer_without_the_methods_it_calls() -> None:
    class RenamedTrainer(FakeTrainer):
        _get_collator_with_removed_columns = None

    with pytest.raises(
        ConfigError, match="through _get_collator_with_removed_columns, which RenamedTrainer lacks"
    ):
        use_token_budget(RenamedTrainer(), TokenBudgetBatchSampler([1, 1, 1], max_tokens=4))


def test_use_token_budget_refuses_a_sampler_of_another_dataset() -> None:
    with pytest.raises(DataError, match="3 rows"):
        use_token_budget(FakeTrainer(), TokenBudgetBatchSampler([1, 1], max_tokens=4))
