"""Collators and the token-budget sampler: LLaMA-Factory parity, padding-free flattening, batching."""

from __future__ import annotations

import itertools
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader
from transformers import DataCollatorWithFlattening

from fastsft import IGNORE_INDEX
from fastsft.collators import (
    PaddingCollator,
    TokenBudgetBatchSampler,
    VarlenCollator,
)
from fastsft.errors import ConfigError, DataError
from fastsft.kernels import select_kernels
from fastsft.kernels.packing import pack_llamafactory
from fastsft.kernels.reference import varlen_flatten as varlen_flatten_python

GOLDENS = json.loads((Path(__file__).parent / "data" / "collator_goldens.json").read_text())["cases"]


def compiled_available() -> bool:
    try:
        select_kernels("compiled")
    except ImportError:
        return False
    return True


needs_kernels = pytest.mark.skipif(not compiled_available(), reason="fastsft._core is not built")


def random_samples(rng: random.Random, count: int, max_len: int = 40) -> list[dict[str, list[int]]]:
    samples = []
    for _ in range(count):
        length = rng.randint(1, max_len)
        ids = [rng.randrange(1000) for _ in range(length)]
        prompt = rng.randrange(length)
        samples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return samples


def split_sequences(batch: dict) -> list[tuple[list[int], list[int], list[int]]]:
    """(input_ids, labels, position_ids) of each sequence of a varlen batch, by its cu_seq_lens."""
    bounds = batch["cu_seq_lens_q"].tolist()
    return [
        tuple(batch[key][0, start:end].tolist() for key in ("input_ids", "labels", "position_ids"))
        for start, end in itertools.pairwise(bounds)
    ]


# ---------------------------------------------------------------- PaddingCollator


@pytest.mark.parametrize("case", GOLDENS, ids=[case["name"] for case in GOLDENS])
def test_padding_collator_matches_llamafactory(case: dict) -> None:
    features = case["features"]
    if case["numpy_format"]:
        features = [{key: np.asarray(value, dtype=np.int64) for key, value in f.items()} for f in features]
    collator = PaddingCollator(
        case["pad_token_id"],
        pad_to_multiple_of=case["pad_to_multiple_of"],
        label_pad_token_id=case["label_pad_token_id"],
        padding_side=case["padding_side"],
    )
    batch = collator(features)
    assert set(batch) == set(case["expected"])
    for key, expected in case["expected"].items():
        assert str(batch[key].dtype) == f"torch.{expected['dtype']}", key
        assert batch[key].tolist() == expected["data"], key


def test_padding_collator_returns_numpy_and_pads_position_ids() -> None:
    features = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2]},
        {"input_ids": [8], "labels": [8], "position_ids": [0]},
    ]
    batch = PaddingCollator(0, return_tensors="np")(features)
    assert isinstance(batch["input_ids"], np.ndarray) and batch["input_ids"].dtype == np.int64
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_padding_collator_accepts_tensors_and_ignores_extra_columns() -> None:
    features = [
        {"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1, 2]), "sequence_boundaries": [0, 2]},
        {"input_ids": torch.tensor([3]), "labels": torch.tensor([3]), "sequence_boundaries": [0, 1]},
    ]
    batch = PaddingCollator(9)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[1, 2], [3, 9]]


@pytest.mark.parametrize(
    ("features", "field"),
    [
        ([{"input_ids": [1, 2], "labels": [1]}], "labels"),
        ([{"labels": [1]}], "input_ids"),
        ([{"input_ids": [[1, 2]], "labels": [[1, 2]]}], "input_ids"),
        ([{"input_ids": [1.5], "labels": [1]}], "input_ids"),
        ([{"input_ids": [1], "labels": [1]}, {"input_ids": [1, 2]}], "labels"),
        ([{"input_ids": [1, 2], "labels": [1, 2], "attention_mask": [1]}], "attention_mask"),
    ],
)
def test_padding_collator_reports_bad_features(features: list[dict], field: str) -> None:
    with pytest.raises(DataError) as error:
        PaddingCollator(0)(features)
    assert error.value.field == field


def test_padding_collator_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="pad_token_id"):
        PaddingCollator(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="padding_side"):
        PaddingCollator(0, padding_side="middle")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):
        PaddingCollator(0, pad_to_multiple_of=0)
    with pytest.raises(DataError, match="empty batch"):
        PaddingCollator(0)([])


# ---------------------------------------------------------------- VarlenCollator

feature_lists = st.lists(
    st.tuples(
        st.lists(st.integers(0, 50_000), min_size=1, max_size=30),
        st.lists(st.booleans(), min_size=30, max_size=30),
        st.booleans(),
    ),
    min_size=1,
    max_size=6,
)


def hypothesis_features(drawn: list) -> list[dict]:
    """Features from drawn (ids, label-mask, as-numpy) triples: labels are the ids or -100."""
    features = []
    for ids, masked, as_numpy in drawn:
        labels = [IGNORE_INDEX if masked[i] else token for i, token in enumerate(ids)]
        convert = (lambda values: np.asarray(values, dtype=np.int64)) if as_numpy else list
        features.append({"input_ids": convert(ids), "labels": convert(labels)})
    return features


@settings(max_examples=60, deadline=None)
@given(
    feature_lists,
    st.booleans(),
    st.sampled_from([IGNORE_INDEX, 0, 151_643]),
    st.sampled_from([0, 0, 2]),
    st.booleans(),
)
def test_varlen_collator_matches_transformers_flattening(
    drawn: list, return_seq_idx: bool, separator_id: int, position_ids_start: int, flash_kwargs: bool
) -> None:
    features = hypothesis_features(drawn)
    options = {"return_seq_idx": return_seq_idx, "separator_id": separator_id}
    options["position_ids_start"] = position_ids_start
    expected = DataCollatorWithFlattening(
        return_flash_attn_kwargs=flash_kwargs, return_position_ids=True, **options
    )(features)
    for backend in ["python", "compiled"] if compiled_available() else ["python"]:
        batch = VarlenCollator(return_flash_kwargs=flash_kwargs, backend=backend, **options)(features)
        assert set(batch) == set(expected)
        for key, value in expected.items():
            if torch.is_tensor(value):
                assert batch[key].dtype == value.dtype, key
                assert torch.equal(batch[key], value), key
            else:
                assert type(batch[key]) is int and batch[key] == value, key


@pytest.mark.parametrize("backend", ["python", pytest.param("compiled", marks=needs_kernels)])
def test_varlen_collator_reads_trl_seq_lengths(backend: str) -> None:
    with_positions = {
        "input_ids": [5, 6, 7, 8, 9],
        "labels": [5, 6, 7, 8, 9],
        "position_ids": [0, 1, 0, 1, 2],
    }
    with_lengths = {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lengths": [2, 3]}
    collator = VarlenCollator(backend=backend, return_seq_idx=True)
    expected = collator([with_positions])
    batch = collator([with_lengths])
    assert batch["cu_seq_lens_q"].tolist() == [0, 2, 5]
    assert batch["seq_idx"].tolist() == [[0, 0, 1, 1, 1]]
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(batch[key], expected[key]), key
    with pytest.raises(DataError, match="sum to the 5 input_ids") as error:
        collator([{**with_lengths, "seq_lengths": [2, 2]}])
    assert error.value.field == "seq_lengths"


@pytest.mark.parametrize(
    "feature",
    [
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "attention_mask": [1, 2, 2]},
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "packing_params": {"sequence_boundaries": [0, 1, 3]}},
    ],
    ids=["neat-mask", "packing-params"],
)
def test_varlen_collator_refuses_packed_rows_without_boundaries(feature: dict) -> None:
    with pytest.raises(DataError, match="remove_unused_columns") as error:
        VarlenCollator(backend="python")([feature])
    assert "\n" not in str(error.value)


def test_varlen_collator_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="separator_id"):
        VarlenCollator(separator_id=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="position_ids_start"):
        VarlenCollator(position_ids_start=1.5)  # type: ignore[arg-type]


packed_rows = st.lists(
    st.tuples(
        st.lists(st.integers(1, 12), min_size=0, max_size=4),  # sequence lengths in the row
        st.integers(0, 5),  # padding tokens at the end
        st.booleans(),  # numpy format
    ),
    min_size=1,
    max_size=5,
)


@needs_kernels
@settings(max_examples=80, deadline=None)
@given(packed_rows, st.randoms(use_true_random=False))
def test_varlen_python_equals_compiled_on_packed_rows(rows: list, rng: random.Random) -> None:
    features = []
    for lengths, padding, as_numpy in rows:
        positions = [p for length in lengths for p in range(length)] + [0] * padding
        mask = [k + 1 for k, length in enumerate(lengths) for _ in range(length)] + [0] * padding
        ids = [rng.randrange(100) for _ in positions]
        labels = [rng.choice([IGNORE_INDEX, token]) for token in ids]
        row = {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask}
        features.append({k: np.asarray(v) for k, v in row.items()} if as_numpy else row)
    if not any(lengths for lengths, _, _ in rows):
        with pytest.raises(DataError, match="no tokens"):
            VarlenCollator(backend="python")(features)
        return
    python = VarlenCollator(backend="python")(features)
    compiled = VarlenCollator(backend="compiled")(features)
    assert python.keys() == compiled.keys()
    for key, value in python.items():
        if torch.is_tensor(value):
            assert compiled[key].dtype == value.dtype and torch.equal(compiled[key], value), key
        else:
            assert compiled[key] == value, key


@pytest.mark.parametrize("backend", ["python", pytest.param("compiled", marks=needs_kernels)])
@pytest.mark.parametrize("neat_packing", [True, False])
def test_varlen_collator_unpacks_llamafactory_rows(backend: str, neat_packing: bool) -> None:
    samples = [s for s in random_samples(random.Random(7), 14, max_len=20) if len(s["input_ids"]) > 1]
    packed = pack_llamafactory(
        [s["input_ids"] for s in samples],
        [s["labels"] for s in samples],
        cutoff_len=47,
        pad_token_id=0,
        neat_packing=neat_packing,
    )
    rows = [{key: packed[key][r] for key in packed} for r in range(len(packed["input_ids"]))]
    batch = VarlenCollator(backend=backend)(rows)
    sequences = split_sequences(batch)
    expected = sorted(
        (s["input_ids"], [IGNORE_INDEX, *s["labels"][1:]], list(range(len(s["input_ids"])))) for s in samples
    )
    if neat_packing:  # padding (attention_mask 0) is dropped
        assert sorted(sequences) == expected
    else:  # padding has attention_mask 1 and position 0: one unlabelled sequence per row's padding
        padding = [len(row["position_ids"]) - len(np.trim_zeros(row["position_ids"], "b")) for row in rows]
        runs = [([0] * n, [IGNORE_INDEX] * n, list(range(n))) for n in padding if n]
        assert sum(padding) == len(rows) * 48 - sum(len(s["input_ids"]) for s in samples)
        assert sorted(sequences) == sorted(expected + runs)
    assert batch["max_length_q"] == max(len(ids) for ids, _, _ in sequences)


@pytest.mark.parametrize("backend", ["python", pytest.param("compiled", marks=needs_kernels)])
def test_rows_attend_across_makes_each_plain_packed_row_one_attention_span(backend: str) -> None:
    """LLaMA-Factory's plain packing: one span per row (its padding included), the positions of the
    sequences kept, and only the row's first label dropped (the next sample's first label stays a target)."""
    ids = [[5, 6, 7], [8, 9]]
    labels = [[IGNORE_INDEX, 6, 7], [8, 9]]
    packed = pack_llamafactory(ids, labels, cutoff_len=6, pad_token_id=0, neat_packing=False)
    rows = [{key: packed[key][r] for key in packed} for r in range(len(packed["input_ids"]))]
    batch = VarlenCollator(backend=backend, rows_attend_across=True)(rows + rows)
    assert batch["cu_seq_lens_q"].tolist() == [0, 7, 14]
    assert batch["max_length_q"] == 7
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0] * 2]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1] * 2]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, 8, 9, IGNORE_INDEX, IGNORE_INDEX] * 2]


def test_varlen_collator_drops_masked_tokens_and_defaults_labels() -> None:
    features = [
        {"input_ids": [0, 0, 5, 6], "attention_mask": [0, 0, 1, 1]},  # left padding
        {"input_ids": np.array([7, 8, 9]), "attention_mask": np.array([1, 1, 1])},
    ]
    batch = VarlenCollator(backend="python", return_flash_kwargs=False)(features)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, IGNORE_INDEX, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2]]


@pytest.mark.parametrize("backend", ["python", pytest.param("compiled", marks=needs_kernels)])
def test_varlen_collator_reports_bad_features(backend: str) -> None:
    collator = VarlenCollator(backend=backend)
    with pytest.raises(DataError, match="no tokens"):
        collator([{"input_ids": [], "labels": []}, {"input_ids": [1], "labels": [1], "attention_mask": [0]}])
    with pytest.raises(DataError) as error:
        collator([{"input_ids": [1, 2], "labels": [1, 2], "position_ids": [0]}])
    assert error.value.field == "position_ids"
    with pytest.raises(DataError, match="empty batch"):
        collator([])


def test_python_reference_restarts_sequences_at_position_zero() -> None:
    ids, labels, positions, cu, longest = varlen_flatten_python(
        [np.array([1, 2, 3, 4, 5]), np.array([6, 7])],
        [np.array([1, 2, 3, 4, 5]), np.array([6, 7])],
        [np.array([0, 1, 0, 1, 2]), np.array([0, 1])],
    )
    assert ids.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert labels.tolist() == [IGNORE_INDEX, 2, IGNORE_INDEX, 4, 5, IGNORE_INDEX, 7]
    assert positions.tolist() == [0, 1, 0, 1, 2, 0, 1]
    assert cu.tolist() == [0, 2, 5, 7]
    assert longest == 3


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTSFT_BACKEND", "python")
    assert VarlenCollator().backend == "python"
    monkeypatch.setenv("FASTSFT_BACKEND", "fastest")
    with pytest.raises(ConfigError, match="FASTSFT_BACKEND"):
        VarlenCollator()
    monkeypatch.delenv("FASTSFT_BACKEND")

    monkeypatch.setitem(sys.modules, "fastsft.kernels.compiled", None)  # kernels not importable
    with pytest.raises(ImportError):
        VarlenCollator(backend="compiled")
    with pytest.raises(ImportError):  # the default is compiled, never a silent fallback
        VarlenCollator()

    calls = []

    def fake_kernel(rows_ids, rows_labels, rows_positions):
        calls.append((rows_ids, rows_labels, rows_positions))
        return varlen_flatten_python(rows_ids, rows_labels, rows_positions)

    monkeypatch.setitem(
        sys.modules, "fastsft.kernels.compiled", types.SimpleNamespace(varlen_flatten=fake_kernel)
    )
    collator = VarlenCollator()
    assert collator.backend == "compiled"
    batch = collator([{"input_ids": [4, 5, 6], "labels": [4, 5, 6], "attention_mask": [1, 1, 0]}])
    assert [row.tolist() for row in calls[0][0]] == [[4, 5]] and calls[0][2] is None
    assert batch["input_ids"].tolist() == [[4, 5]] and batch["cu_seq_lens_k"].dtype == torch.int32


# ---------------------------------------------------------------- TokenBudgetBatchSampler


def lengths_for(seed: int, count: int, high: int = 300) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, high, count)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 120), min_size=0, max_size=200),
    st.integers(1, 400),
    st.booleans(),
    st.booleans(),
    st.integers(0, 3),
)
def test_sampler_respects_budget_and_covers_every_index_once(
    lengths: list[int], max_tokens: int, shuffle: bool, group_by_length: bool, seed: int
) -> None:
    sampler = TokenBudgetBatchSampler(
        lengths, max_tokens, shuffle=shuffle, seed=seed, group_by_length=group_by_length
    )
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert batch
        assert sum(lengths[i] for i in batch) <= max_tokens or len(batch) == 1


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    lengths = lengths_for(0, 500)
    first = list(TokenBudgetBatchSampler(lengths, 1024, seed=3))
    assert first == list(TokenBudgetBatchSampler(lengths, 1024, seed=3))
    assert first != list(TokenBudgetBatchSampler(lengths, 1024, seed=4))
    sampler = TokenBudgetBatchSampler(lengths, 1024, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    unshuffled = TokenBudgetBatchSampler(lengths, 1024, shuffle=False, group_by_length=False)
    assert [i for batch in unshuffled for i in batch] == list(range(500))


def test_sampler_groups_by_length() -> None:
    lengths = lengths_for(1, 2000, high=1000)

    def padding_waste(sampler: TokenBudgetBatchSampler) -> int:
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in map(np.asarray, sampler))

    grouped = padding_waste(TokenBudgetBatchSampler(lengths, 4096, group_by_length=True))
    ungrouped = padding_waste(TokenBudgetBatchSampler(lengths, 4096, group_by_length=False))
    assert grouped * 5 < ungrouped


def test_sampler_over_long_sample_is_its_own_batch() -> None:
    batches = list(TokenBudgetBatchSampler([5, 500, 7, 3], 16, shuffle=False))
    assert [1] in batches
    assert sorted(i for batch in batches for i in batch) == [0, 1, 2, 3]


def test_sampler_resumes_where_it_stopped() -> None:
    lengths = lengths_for(2, 400)
    full = list(TokenBudgetBatchSampler(lengths, 900, seed=5))
    assert list(itertools.islice(TokenBudgetBatchSampler(lengths, 900, seed=5), 7, None)) == full[7:]

    sampler = TokenBudgetBatchSampler(lengths, 900, seed=5)
    taken = list(itertools.islice(iter(sampler), 7))
    state = sampler.state_dict()
    assert state["batches_consumed"] == 7 and taken == full[:7]

    resumed = TokenBudgetBatchSampler(lengths, 900, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # a trainer re-announcing the same epoch keeps the position
    assert list(resumed) == full[7:]
    assert list(resumed) == full  # the next pass over the epoch starts from its beginning

    with pytest.raises(ConfigError, match="seed"):
        TokenBudgetBatchSampler(lengths, 900, seed=6).load_state_dict(state)


@pytest.mark.parametrize("replicas", [2, 3, 8])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_deals_disjoint_equal_batches_to_ranks(replicas: int, drop_last: bool) -> None:
    lengths = lengths_for(replicas, 301)
    per_rank = [
        list(
            TokenBudgetBatchSampler(lengths, 700, seed=1, num_replicas=replicas, rank=r, drop_last=drop_last)
        )
        for r in range(replicas)
    ]
    assert len({len(batches) for batches in per_rank}) == 1
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen))  # disjoint
    single = list(TokenBudgetBatchSampler(lengths, 700, seed=1))
    if drop_last:
        assert len(per_rank[0]) == len(single) // replicas
    else:
        assert sorted(seen) == list(range(len(lengths)))
    for batches in per_rank:
        assert all(lengths[batch].sum() <= 700 or len(batch) == 1 for batch in batches)


def test_sampler_with_tiny_dataset_and_many_replicas_still_gives_equal_counts() -> None:
    per_rank = [list(TokenBudgetBatchSampler([3, 4], 100, num_replicas=4, rank=r)) for r in range(4)]
    assert [len(batches) for batches in per_rank] == [1, 1, 1, 1]
    assert sorted(i for batches in per_rank for batch in batches for i in batch) == [0, 0, 1, 1]


def test_sampler_drives_a_dataloader() -> None:
    samples = random_samples(random.Random(3), 50)
    sampler = TokenBudgetBatchSampler([len(s["input_ids"]) for s in samples], 120, seed=0)
    loader = DataLoader(samples, batch_sampler=sampler, collate_fn=VarlenCollator(backend="python"))
    batches = list(loader)
    assert len(batches) == len(sampler)
    assert sum(batch["input_ids"].shape[1] for batch in batches) == sum(len(s["input_ids"]) for s in samples)
    assert all(batch["input_ids"].shape[1] <= 120 or len(batch["cu_seq_lens_q"]) == 2 for batch in batches)


def test_sampler_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        TokenBudgetBatchSampler([1, 2], 0)
    with pytest.raises(ConfigError, match=">= 0"):
        TokenBudgetBatchSampler([1, -2], 10)
    with pytest.raises(ConfigError, match="rank"):
        TokenBudgetBatchSampler([1, 2], 10, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="integers"):
        TokenBudgetBatchSampler([1.5, 2.0], 10)
    with pytest.raises(ConfigError, match="seed"):
        TokenBudgetBatchSampler([1, 2], 10, seed=-1)
