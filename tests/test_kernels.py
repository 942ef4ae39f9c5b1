"""The compiled kernels of ``fastsft._core`` equal their pure-Python references on random input.

``test_debug_build_is_memory_safe`` rebuilds the kernels with every buffer index bounds-checked
and reruns this file against that build in a subprocess.
"""

from __future__ import annotations

import importlib
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsft import IGNORE_INDEX
from fastsft.errors import FastSFTError
from fastsft.kernels import reference
from fastsft.kernels.compiled import (
    assemble_supervised,
    gather_segments,
    knapsack_llamafactory,
    materialize_rows,
    pack_bfd,
    varlen_flatten,
)
from fastsft.kernels.packing import (
    best_fit_decreasing,
    greedy_knapsack,
    llamafactory_order,
    pack_llamafactory,
    rows_from_order,
)
from fastsft.kernels.supervised import encode_pairs

REPO = Path(__file__).resolve().parents[1]


def varlen_reference(
    rows_input_ids: list[list[int]], rows_labels: list[list[int]], rows_position_ids: list[list[int]] | None
) -> tuple[list[int], list[int], list[int], list[int], int]:
    """Padding-free flattening, one token at a time."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    starts: list[int] = []
    for row, (ids, labs) in enumerate(zip(rows_input_ids, rows_labels, strict=True)):
        positions = list(range(len(ids))) if rows_position_ids is None else rows_position_ids[row]
        for i, (token, label, position) in enumerate(zip(ids, labs, positions, strict=True)):
            if i == 0 or position == 0:
                starts.append(len(input_ids))
                label = IGNORE_INDEX
            input_ids.append(token)
            labels.append(label)
            position_ids.append(position)
    cu_seqlens = [*starts, len(input_ids)] if starts else [0]
    max_seqlen = max((b - a for a, b in itertools.pairwise(cu_seqlens)), default=0)
    return input_ids, labels, position_ids, cu_seqlens, max_seqlen


def flatten(samples: list[list[list[int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples (lists of messages) → the kernel's token_ids, message_bounds, sample_bounds."""
    messages = [message for sample in samples for message in sample]
    token_ids = np.array([t for message in messages for t in message], dtype=np.int32)
    message_bounds = np.cumsum([0, *map(len, messages)], dtype=np.int64)
    sample_bounds = np.cumsum([0, *map(len, samples)], dtype=np.int64)
    return token_ids, message_bounds, sample_bounds


def split(flat: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [flat[a:b].tolist() for a, b in itertools.pairwise(offsets)]


tokens = st.integers(0, 2**31 - 1)
message = st.one_of(st.just([]), st.lists(tokens, max_size=12))
sample = st.integers(1, 4).flatmap(lambda turns: st.lists(message, min_size=2 * turns, max_size=2 * turns))
cutoffs = st.one_of(st.integers(0, 8), st.integers(9, 64), st.just(10**6))


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(sample, max_size=6),
    cutoff_len=cutoffs,
    train_on_prompt=st.booleans(),
    mask_history=st.booleans(),
    efficient_eos=st.booleans(),
    eos_token_id=tokens,
)
def test_assemble_supervised_equals_encode_pairs(
    samples, cutoff_len, train_on_prompt, mask_history, efficient_eos, eos_token_id
):
    flags = {"train_on_prompt": train_on_prompt, "mask_history": mask_history, "efficient_eos": efficient_eos}
    input_ids, labels, offsets, label_offsets = assemble_supervised(
        *flatten(samples), cutoff_len, eos_token_id=eos_token_id, **flags
    )
    assert input_ids.dtype == labels.dtype == np.int32
    assert offsets.dtype == label_offsets.dtype == np.int64
    expected = [
        encode_pairs(
            list(zip(messages[::2], messages[1::2], strict=True)),
            cutoff_len=cutoff_len,
            eos_token_id=eos_token_id,
            **flags,
        )
        for messages in samples
    ]
    assert split(input_ids, offsets) == [ids for ids, _ in expected]
    assert split(labels, label_offsets) == [labs for _, labs in expected]


def test_efficient_eos_quirk_gives_more_labels_than_tokens():
    # Second turn with an empty prompt: LLaMA-Factory labels it [eos] although it has no tokens.
    samples = [[[1, 2], [3], [], [4]]]
    input_ids, labels, offsets, label_offsets = assemble_supervised(
        *flatten(samples), 100, False, False, True, 9
    )
    assert input_ids.tolist() == [1, 2, 3, 4, 9]
    assert labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX, 3, 9, 4, 9]
    assert offsets.tolist() == [0, 5] and label_offsets.tolist() == [0, 6]


@pytest.mark.parametrize(
    ("message_bounds", "sample_bounds", "error"),
    [
        ([0, 1, 2, 3], [0, 3], "even number"),
        ([0, 2, 1], [0, 2], "non-decreasing"),
        ([0, 1, 9], [0, 2], "within"),
        ([0, 1, 2], [0, 4], "within"),
    ],
)
def test_assemble_supervised_rejects_bad_bounds(message_bounds, sample_bounds, error):
    with pytest.raises(ValueError, match=error):
        assemble_supervised(
            np.arange(3, dtype=np.int32), message_bounds, sample_bounds, 8, False, False, False, None
        )


def test_assemble_supervised_needs_eos_for_efficient_eos():
    with pytest.raises(ValueError, match="eos_token_id"):
        assemble_supervised(np.arange(2, dtype=np.int32), [0, 1, 2], [0, 2], 8, False, False, True, None)


@st.composite
def segmented_texts(draw):
    """Tokenized texts and segments that each name one of them (any order, repeats) or a special id."""
    texts = draw(st.lists(st.lists(tokens, max_size=6), max_size=6))
    choices = st.integers(-1, len(texts) - 1) if texts else st.just(-1)
    segment_texts = draw(st.lists(choices, max_size=12))
    special_ids = draw(st.lists(tokens, min_size=segment_texts.count(-1), max_size=segment_texts.count(-1)))
    return texts, segment_texts, special_ids


@pytest.mark.parametrize(
    "kernel", [gather_segments, reference.gather_segments], ids=["compiled", "reference"]
)
@settings(max_examples=200, deadline=None)
@given(segmented_texts())
def test_gather_segments_lays_out_every_segment(kernel, case):
    texts, segment_texts, special_ids = case
    text_ids = np.array([t for text in texts for t in text], dtype=np.int32)
    text_offsets = np.cumsum([0, *map(len, texts)], dtype=np.int64)
    specials = iter(special_ids)
    expected = [texts[x] if x >= 0 else [next(specials)] for x in segment_texts]
    token_ids, lengths = kernel(
        text_ids, text_offsets, np.array(segment_texts, dtype=np.int64), np.array(special_ids, dtype=np.int32)
    )
    assert token_ids.dtype == np.int32 and lengths.dtype == np.int64
    assert lengths.tolist() == [len(segment) for segment in expected]
    assert token_ids.tolist() == [t for segment in expected for t in segment]


@pytest.mark.parametrize(
    "kernel", [gather_segments, reference.gather_segments], ids=["compiled", "reference"]
)
@pytest.mark.parametrize(
    ("text_offsets", "segment_texts", "special_ids", "error"),
    [
        ([0, 2, 4], [2], [], "segment_texts must lie within"),
        ([0, 2, 4], [-2], [], "segment_texts must lie within"),
        ([0, 2, 4], [0, -1], [], "one id per"),
        ([0, 2, 4], [1], [7], "one id per"),
        ([0, 2, 9], [1], [], "text_offsets"),
        ([0, 3, 2], [0], [], "text_offsets"),
    ],
)
def test_gather_segments_rejects_bad_indices(kernel, text_offsets, segment_texts, special_ids, error):
    with pytest.raises(ValueError, match=error):
        kernel(np.arange(4, dtype=np.int32), text_offsets, segment_texts, special_ids)


dense_capacities = st.integers(0, 64)  # the packers number every length 0..capacity
sparse_capacities = st.integers(10**5, 10**7)  # the packers number the distinct lengths
any_capacities = st.one_of(dense_capacities, sparse_capacities)


@st.composite
def packing_input(draw, capacities=any_capacities, max_size=40):
    """(lengths, capacity) with every length within the capacity, and repeated lengths likely."""
    capacity = draw(capacities)
    some_lengths = draw(st.lists(st.integers(0, capacity), min_size=1, max_size=8))
    lengths = draw(
        st.lists(st.one_of(st.sampled_from(some_lengths), st.integers(0, capacity)), max_size=max_size)
    )
    return lengths, capacity


def rows_of(order: np.ndarray, row_bounds: np.ndarray) -> list[list[int]]:
    return split(order, row_bounds)


@settings(max_examples=200, deadline=None)
@given(packing_input())
def test_knapsack_llamafactory_equals_reference(lengths_and_capacity):
    lengths, capacity = lengths_and_capacity
    order, row_bounds = knapsack_llamafactory(np.array(lengths, dtype=np.int64), capacity)
    assert (order.tolist(), row_bounds.tolist()) == llamafactory_order(lengths, capacity)
    assert [[lengths[i] for i in row] for row in rows_of(order, row_bounds)] == greedy_knapsack(
        lengths, capacity
    )


@st.composite
def packable_samples(draw):
    """Samples with random tokens and labels, none longer than ``cutoff_len``."""
    cutoff_len = draw(st.integers(1, 40))
    lengths = draw(st.lists(st.integers(0, cutoff_len), max_size=30))
    input_ids = [draw(st.lists(tokens, min_size=n, max_size=n)) for n in lengths]
    masked = [draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids))) for ids in input_ids]
    labels = [
        [IGNORE_INDEX if m else t for t, m in zip(ids, mask, strict=True)]
        for ids, mask in zip(input_ids, masked, strict=True)
    ]
    return input_ids, labels, cutoff_len


@settings(max_examples=100, deadline=None)
@given(packable_samples(), st.booleans(), st.integers(0, 2**31 - 1))
def test_knapsack_and_materialize_equal_pack_llamafactory(samples, neat_packing, pad_token_id):
    input_ids, labels, cutoff_len = samples
    expected = pack_llamafactory(
        input_ids, labels, cutoff_len=cutoff_len, pad_token_id=pad_token_id, neat_packing=neat_packing
    )
    offsets = np.cumsum([0, *map(len, input_ids)], dtype=np.int64)
    flat_ids = np.array([t for ids in input_ids for t in ids], dtype=np.int32)
    flat_labels = np.array([t for labs in labels for t in labs], dtype=np.int32)
    order, row_bounds = knapsack_llamafactory(np.diff(offsets), cutoff_len)
    row_ids, row_labels, row_mask, row_pos, row_offsets, _ = materialize_rows(
        flat_ids, flat_labels, offsets, order, row_bounds, cutoff_len + 1, pad_token_id, neat_packing
    )
    assert split(row_ids, row_offsets) == expected.get("input_ids", [])
    assert split(row_labels, row_offsets) == expected.get("labels", [])
    assert split(row_mask, row_offsets) == expected.get("attention_mask", [])
    assert split(row_pos, row_offsets) == expected.get("position_ids", [])


@settings(max_examples=200, deadline=None)
@given(packing_input(max_size=60))
def test_pack_bfd_equals_reference(lengths_and_capacity):
    lengths, capacity = lengths_and_capacity
    order, row_bounds = pack_bfd(np.array(lengths, dtype=np.int64), capacity)
    assert (order.tolist(), row_bounds.tolist()) == best_fit_decreasing(lengths, capacity)
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows_of(order, row_bounds))


@pytest.mark.parametrize("packer", [pack_bfd, knapsack_llamafactory])
@pytest.mark.parametrize(
    ("lengths", "capacity", "error"), [([5, 9], 8, "exceeds the capacity"), ([-1], 8, ">= 0")]
)
def test_packers_reject_lengths_outside_capacity(packer, lengths, capacity, error):
    with pytest.raises(ValueError, match=error):
        packer(np.array(lengths, dtype=np.int64), capacity)


@pytest.mark.parametrize("packer", [pack_bfd, knapsack_llamafactory])
@pytest.mark.parametrize("capacity", [8, 10**6])
def test_packers_accept_no_samples(packer, capacity):
    order, row_bounds = packer(np.empty(0, dtype=np.int64), capacity)
    assert order.tolist() == [] and row_bounds.tolist() == [0]


@settings(max_examples=100, deadline=None)
@given(packing_input(capacities=st.integers(0, 30)), st.booleans(), st.sampled_from([0, 30, 31]))
def test_materialize_rows_equals_rows_from_order(lengths_and_capacity, neat_packing, row_length):
    lengths, capacity = lengths_and_capacity
    offsets = np.cumsum([0, *lengths], dtype=np.int64)
    flat_ids = np.arange(offsets[-1], dtype=np.int32)
    flat_labels = -flat_ids
    order, row_bounds = pack_bfd(np.array(lengths, dtype=np.int64), capacity)
    row_ids, row_labels, row_mask, row_pos, row_offsets, seq_lens = materialize_rows(
        flat_ids, flat_labels, offsets, order, row_bounds, row_length, 7, neat_packing
    )
    expected = rows_from_order(
        split(flat_ids, offsets),
        split(flat_labels, offsets),
        order.tolist(),
        row_bounds.tolist(),
        neat_packing=neat_packing,
        row_length=row_length,
        pad_token_id=7,
    )
    assert split(row_ids, row_offsets) == expected.get("input_ids", [])
    assert split(row_labels, row_offsets) == expected.get("labels", [])
    assert split(row_mask, row_offsets) == expected.get("attention_mask", [])
    assert split(row_pos, row_offsets) == expected.get("position_ids", [])
    assert split(seq_lens, row_bounds) == [[lengths[i] for i in row] for row in rows_of(order, row_bounds)]


def test_materialize_rows_rejects_overfull_rows_and_misaligned_labels():
    ids = np.arange(6, dtype=np.int32)
    offsets = np.array([0, 4, 6], dtype=np.int64)
    with pytest.raises(ValueError, match="more than row_length"):
        materialize_rows(ids, ids, offsets, np.array([0, 1]), np.array([0, 2]), 5, 0, False)
    with pytest.raises(ValueError, match="as long as input_ids"):
        materialize_rows(ids, ids[:5], offsets, np.array([0, 1]), np.array([0, 2]), 8, 0, False)
    with pytest.raises(ValueError, match="order must index"):
        materialize_rows(ids, ids, offsets, np.array([0, 2]), np.array([0, 2]), 8, 0, False)


@st.composite
def varlen_rows(draw):
    """Rows of tokens/labels, optionally with position ids that restart at packed sequence starts."""
    n_rows = draw(st.integers(0, 6))
    with_positions = draw(st.booleans())
    rows_ids, rows_labels, rows_positions = [], [], []
    for _ in range(n_rows):
        seq_lengths = (
            draw(st.lists(st.integers(1, 9), max_size=4)) if with_positions else [draw(st.integers(0, 20))]
        )
        length = sum(seq_lengths)
        rows_ids.append(draw(st.lists(tokens, min_size=length, max_size=length)))
        rows_labels.append(draw(st.lists(st.integers(-100, 2**31 - 1), min_size=length, max_size=length)))
        rows_positions.append([p for n in seq_lengths for p in range(n)])
    return rows_ids, rows_labels, rows_positions if with_positions else None


@settings(max_examples=150, deadline=None)
@given(varlen_rows(), st.sampled_from(["list", "int32", "int64"]))
def test_varlen_flatten_equals_reference(rows, kind):
    rows_ids, rows_labels, rows_positions = rows

    def convert(row_list):
        if row_list is None or kind == "list":
            return row_list
        return [np.array(row, dtype=kind) for row in row_list]

    got = varlen_flatten(convert(rows_ids), convert(rows_labels), convert(rows_positions))
    input_ids, labels, position_ids, cu_seqlens, max_seqlen = got
    assert input_ids.dtype == labels.dtype == position_ids.dtype == np.int64
    assert cu_seqlens.dtype == np.int32
    assert (input_ids.tolist(), labels.tolist(), position_ids.tolist(), cu_seqlens.tolist(), max_seqlen) == (
        varlen_reference(rows_ids, rows_labels, rows_positions)
    )


def test_varlen_flatten_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1"):
        varlen_flatten([[1, 2], [3]], [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="1-D"):
        varlen_flatten([np.ones((2, 2), dtype=np.int64)], [np.ones((2, 2), dtype=np.int64)])


@pytest.mark.slow
def test_debug_build_is_memory_safe(tmp_path):
    """Rebuild with every buffer index bounds-checked and rerun this file's tests against it."""
    if not (REPO / "setup.py").is_file():
        pytest.skip("needs the fastsft source checkout")
    shutil.copytree(
        REPO / "fastsft", tmp_path / "fastsft", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    shutil.copy(Path(__file__), tmp_path / "test_kernels.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: takes more than a few seconds\n")
    env = {**os.environ, "FASTSFT_DEBUG_KERNELS": "1", "PYTHONPATH": str(tmp_path)}
    build = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path), "--build-temp"]
    built = subprocess.run(
        [*build, str(tmp_path / "build")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-4000:]

    probe = "import fastsft._core as core; assert core.BOUNDS_CHECKED, core.__file__; print(core.__file__)"
    located = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert located.returncode == 0, located.stderr
    assert located.stdout.startswith(str(tmp_path))

    tests = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "not slow",
        "-p",
        "no:cacheprovider",
        "test_kernels.py",
    ]
    result = subprocess.run(tests, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_missing_extension_says_how_to_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastsft._core", None)  # makes `import fastsft._core` fail
    monkeypatch.delitem(sys.modules, "fastsft.kernels.compiled")
    with pytest.raises(ImportError, match=r"pip install -e \.") as raised:
        importlib.import_module("fastsft.kernels.compiled")
    assert isinstance(raised.value, FastSFTError)
    assert "build_ext --inplace" in str(raised.value)
