"""Mixing and validation splits: the sample orders equal those of ``datasets`` (which LLaMA-Factory calls).

``fastsft.data.sources.mixing`` and ``fastsft.data.sources.splitting`` compute LLaMA-Factory 0.9.5's orders from
the dataset lengths alone; here they are checked against ``datasets.interleave_datasets`` and
``Dataset.train_test_split`` on index columns, over many lengths, probabilities and seeds (the
goldens in ``tests/goldens/fixture/{mix,split}__*`` check whole runs against LLaMA-Factory itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastsft.data.data_args import DataArgs
from fastsft.data.sources.mixing import interleave_indices, mixed_order
from fastsft.data.sources.splitting import plan_splits, split_names, train_test_indices
from fastsft.errors import ConfigError

LENGTHS = [[3, 4, 5], [7, 2], [1, 9, 4], [30, 30], [5]]
PROBABILITIES = {2: [None, [0.5, 0.5], [0.9, 0.1]], 3: [None, [0.2, 0.5, 0.3], [0.7, 0.2, 0.1]], 1: [None]}


def index_datasets(lengths: list[int]) -> list:
    from datasets import Dataset

    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [Dataset.from_dict({"i": list(range(o, o + n))}) for o, n in zip(offsets.tolist(), lengths)]


@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("stopping", ["first_exhausted", "all_exhausted"])
@pytest.mark.parametrize("seed", [0, 42, 1234])
def test_interleave_equals_datasets(lengths: list[int], stopping: str, seed: int) -> None:
    from datasets import interleave_datasets

    for probabilities in PROBABILITIES[len(lengths)]:
        expected = interleave_datasets(
            index_datasets(lengths), probabilities=probabilities, seed=seed, stopping_strategy=stopping
        )["i"]
        actual = interleave_indices(lengths, probabilities, seed, oversampling=stopping == "all_exhausted")
        assert actual.tolist() == expected, (lengths, probabilities, seed, stopping)


def test_mixed_order_maps_llamafactory_strategies() -> None:
    assert mixed_order([3, 4], "concat", None, 42) is None
    assert mixed_order([3], "interleave_over", None, 42) is None  # one dataset is never mixed
    assert mixed_order([2, 3], "interleave_under", None, 42).tolist() == [0, 2, 1, 3]
    assert mixed_order([2, 3], "interleave_over", None, 42).tolist() == [0, 2, 1, 3, 0, 4]
    with pytest.raises(ConfigError, match=r"interleave_once` is not supported: LLaMA-Factory 0\.9\.5"):
        mixed_order([2, 3], "interleave_once", None, 42)
    with pytest.raises(ConfigError, match="empty dataset"):
        mixed_order([0, 3], "interleave_under", None, 42)
    with pytest.raises(ConfigError, match="invalid interleave_probs"):
        mixed_order([2, 3], "interleave_under", [0.5, 0.7], 42)


@pytest.mark.parametrize("n", [2, 7, 100, 1001])
@pytest.mark.parametrize("val_size", [0.01, 0.1, 0.5, 0.99, 1.5, 3])
@pytest.mark.parametrize("seed", [0, 42])
def test_split_equals_train_test_split(n: int, val_size: float, seed: int) -> None:
    from datasets import Dataset

    test_size = int(val_size) if val_size > 1 else val_size  # as LLaMA-Factory passes it
    try:
        expected = Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=test_size, seed=seed)
    except ValueError:
        with pytest.raises(ConfigError, match="val_size"):
            train_test_indices(n, val_size, seed)
        return
    train, test = train_test_indices(n, val_size, seed)
    assert train.tolist() == expected["train"]["i"] and test.tolist() == expected["test"]["i"]


def test_split_is_deterministic_and_follows_the_seed() -> None:
    first, again, other = (train_test_indices(50, 0.2, seed) for seed in (42, 42, 43))
    assert [a.tolist() for a in first] == [a.tolist() for a in again]
    assert first[1].tolist() != other[1].tolist()
    assert sorted([*first[0].tolist(), *first[1].tolist()]) == list(range(50)) and len(first[1]) == 10


def write_datasets(root: Path) -> str:
    """Two ShareGPT datasets of 5 and 3 rows, each row naming itself."""
    info = {}
    for name, count in (("a", 5), ("b", 3)):
        rows = [
            {"conversations": [{"from": "human", "value": f"{name}{i}"}, {"from": "gpt", "value": "ok"}]}
            for i in range(count)
        ]
        (root / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
        info[name] = {"file_name": f"{name}.json", "formatting": "sharegpt"}
    (root / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return str(root)


def read_split(args: DataArgs, name: str) -> list[str]:
    from fastsft.data.accounting import Summary
    from fastsft.data.sources.reading import iter_batches

    source = plan_splits(args)[name]
    batches = iter_batches(
        source.attrs,
        args.dataset_dir,
        max_samples=args.max_samples,
        batch_size=4,
        summary=Summary(),
        order=source.order,
        lengths=source.lengths,
    )
    return [row["conversations"][0]["value"] for batch in batches for row in batch.rows]


def test_splits_read_the_planned_rows(tmp_path: Path) -> None:
    root = write_datasets(tmp_path)
    concat = DataArgs(dataset="a,b", dataset_dir=root)
    assert read_split(concat, "train") == ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"]
    over = DataArgs(dataset="a,b", dataset_dir=root, mix_strategy="interleave_over", max_samples=4)
    assert read_split(over, "train") == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b0"]  # b wraps round
    split = DataArgs(dataset="a,b", dataset_dir=root, val_size=3, seed=5)
    train, test = train_test_indices(8, 3, 5)
    names = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"]
    assert read_split(split, "train") == [names[i] for i in train]
    assert read_split(split, "validation") == [names[i] for i in test]
    each = DataArgs(dataset="a", dataset_dir=root, eval_dataset="b,a", eval_on_each_dataset=True)
    assert split_names(each) == ["train", "validation_b", "validation_a"]
    assert read_split(each, "validation_b") == ["b0", "b1", "b2"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"val_size": 0.1, "eval_dataset": "b"}, "set either `val_size` or `eval_dataset`"),
        ({"dataset": None, "val_size": 0.1}, "`val_size` needs `dataset`"),
        ({"interleave_probs": "0.5,0.5"}, "`interleave_probs` needs an interleave `mix_strategy`"),
        ({"mix_strategy": "interleave_under", "interleave_probs": "0.5"}, "1 values for 2 `dataset` entries"),
        ({"mix_strategy": "interleave_under", "interleave_probs": "half,half"}, "comma-separated numbers"),
    ],
)
def test_invalid_combinations_fail_in_one_line(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        DataArgs(**{"dataset": "a,b", **values})
    assert "\n" not in str(info.value)


def test_val_size_too_large_fails_in_one_line(tmp_path: Path) -> None:
    args = DataArgs(dataset="a,b", dataset_dir=write_datasets(tmp_path), val_size=8)
    with pytest.raises(ConfigError, match="`val_size: 8` leaves no training samples"):
        plan_splits(args)
