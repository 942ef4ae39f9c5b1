"""Reference packers: LLaMA-Factory's knapsack rows and best-fit-decreasing."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from fastsft.kernels.packing import (
    best_fit_decreasing,
    greedy_knapsack,
    llamafactory_batch_sizes,
    llamafactory_order,
    pack_llamafactory,
    rows_from_order,
)

X = -100


def test_greedy_knapsack_takes_the_largest_that_fits():
    assert greedy_knapsack([5, 1, 4, 2, 3], 6) == [[5, 1], [4, 2], [3]]


def test_pack_llamafactory_rows_padding_and_equal_length_order():
    # Samples 0 and 2 both have length 2: LLaMA-Factory pops the later one (2) first.
    ids = [[10, 11], [20, 21, 22], [30, 31]]
    labels = [[X, 11], [X, X, 22], [X, 31]]
    rows = pack_llamafactory(ids, labels, cutoff_len=4, pad_token_id=0, neat_packing=True)
    assert rows["input_ids"] == [[20, 21, 22, 0, 0], [30, 31, 10, 11, 0]]
    assert rows["labels"] == [[X, X, 22, X, X], [X, 31, X, 11, X]]
    assert rows["attention_mask"] == [[1, 1, 1, 0, 0], [1, 1, 2, 2, 0]]
    assert rows["position_ids"] == [[0, 1, 2, 0, 0], [0, 1, 0, 1, 0]]


def test_llamafactory_order_maps_equal_lengths_latest_first():
    assert llamafactory_order([2, 3, 2], 4) == ([1, 2, 0], [0, 1, 3])


def test_pack_llamafactory_plain_packing_pads_with_mask_one():
    rows = pack_llamafactory([[1, 2]], [[X, 2]], cutoff_len=3, pad_token_id=7, neat_packing=False)
    assert rows["input_ids"] == [[1, 2, 7, 7]]
    assert rows["attention_mask"] == [[1, 1, 1, 1]]


def test_best_fit_decreasing_hand_example():
    # Longest first: 5 → bin 0 (room 1); 4 → bin 1 (room 2); 3 → bin 2 (room 3);
    # 2 → bin 1 (tightest fit, room 0); 1 → bin 0 (room 1 is tighter than bin 2's 3).
    order, bounds = best_fit_decreasing([3, 5, 1, 4, 2], 6)
    rows = [order[a:b] for a, b in itertools.pairwise(bounds)]
    assert rows == [[1, 2], [3, 4], [0]]


@given(st.lists(st.integers(1, 20), max_size=60), st.integers(20, 40))
def test_best_fit_decreasing_places_every_item_once_within_capacity(lengths, capacity):
    order, bounds = best_fit_decreasing(lengths, capacity)
    assert sorted(order) == list(range(len(lengths)))
    for a, b in itertools.pairwise(bounds):
        assert 0 < sum(lengths[i] for i in order[a:b]) <= capacity


def test_rows_from_order_restarts_positions_per_sequence():
    rows = rows_from_order([[1, 2], [3]], [[X, 2], [3]], [1, 0], [0, 2], neat_packing=True)
    assert rows["input_ids"] == [[3, 1, 2]]
    assert rows["position_ids"] == [[0, 0, 1]]
    assert rows["attention_mask"] == [[1, 2, 2]]
    assert rows["labels"] == [[3, X, 2]]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.one_of(st.none(), st.integers(1, 40)), st.integers(1, 50))
def test_llamafactory_batches_are_datasets_map_shards_cut_into_batches(samples, num_proc, batch_size):
    """``datasets``' ``map(num_proc=N, batched=True)``: N contiguous shards (N at most the samples), each
    cut into batches; the batches LLaMA-Factory packs one by one."""
    import datasets

    dataset = datasets.Dataset.from_dict({"i": list(range(samples))})
    shards = max(1, min(num_proc or 1, samples))
    expected = []
    for index in range(shards):
        shard = dataset.shard(num_shards=shards, index=index, contiguous=True) if shards > 1 else dataset
        expected += [len(batch["i"]) for batch in shard.iter(batch_size)]
    assert llamafactory_batch_sizes(samples, num_proc, batch_size) == expected
