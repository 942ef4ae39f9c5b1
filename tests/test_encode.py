"""Hand-checkable cases for the reference encoder (a port of LLaMA-Factory's _encode_data_example)."""

import pytest

from fastsft.kernels.supervised import TurnTrace, encode_pairs, infer_seqlen

X = -100
# Two turns: prompt 1 = [1, 2, 3], response 1 = [4, 5]; prompt 2 = [6, 7, 8], response 2 = [9, 10].
PAIRS = [([1, 2, 3], [4, 5]), ([6, 7, 8], [9, 10])]


def test_default_labels_every_response():
    ids, labels = encode_pairs(PAIRS, cutoff_len=100)
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert labels == [X, X, X, 4, 5, X, X, X, 9, 10]


def test_train_on_prompt_labels_everything():
    ids, labels = encode_pairs(PAIRS, cutoff_len=100, train_on_prompt=True)
    assert labels == ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_mask_history_labels_only_the_last_response_and_keeps_order():
    ids, labels = encode_pairs(PAIRS, cutoff_len=100, mask_history=True)
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert labels == [X, X, X, X, X, X, X, X, 9, 10]
    assert X not in ids


def test_cutoff_truncates_the_later_turn():
    # Turn 1 takes 5 of 6; turn 2 gets a budget of 1: infer_seqlen(3, 2, 1) == (1, 0).
    trace: list[TurnTrace] = []
    ids, labels = encode_pairs(PAIRS, cutoff_len=6, trace=trace)
    assert ids == [1, 2, 3, 4, 5, 6]
    assert labels == [X, X, X, 4, 5, X]
    assert trace == [TurnTrace(0, 3, 3, 2, 2), TurnTrace(1, 3, 1, 2, 0)]


def test_mask_history_cutoff_keeps_the_last_turn_first():
    trace: list[TurnTrace] = []
    ids, labels = encode_pairs(PAIRS, cutoff_len=6, mask_history=True, trace=trace)
    assert ids == [1, 6, 7, 8, 9, 10]
    assert labels == [X, X, X, X, 9, 10]
    assert trace == [TurnTrace(1, 3, 3, 2, 2), TurnTrace(0, 3, 1, 2, 0)]


def test_budget_exhausted_stops_before_the_next_turn():
    ids, labels = encode_pairs(PAIRS, cutoff_len=5)
    assert ids == [1, 2, 3, 4, 5]
    assert labels == [X, X, X, 4, 5]


def test_efficient_eos_reserves_one_token_and_labels_the_turn_boundary():
    ids, labels = encode_pairs(PAIRS, cutoff_len=100, efficient_eos=True, eos_token_id=99)
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99]
    assert labels == [X, X, X, 4, 5, 99, X, X, 9, 10, 99]


@pytest.mark.parametrize(
    ("source", "target", "cutoff", "expected"),
    [
        (10, 3, 20, (10, 3)),  # target short: source keeps what is left
        (100, 3, 20, (17, 3)),
        (3, 100, 20, (3, 17)),  # source short: target truncated
        (50, 50, 20, (10, 10)),  # both long: proportional
        (60, 40, 10, (6, 4)),
        (5, 5, 0, (0, 0)),
    ],
)
def test_infer_seqlen(source, target, cutoff, expected):
    assert infer_seqlen(source, target, cutoff) == expected
