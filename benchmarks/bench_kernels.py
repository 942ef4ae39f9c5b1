"""Compiled kernels against their pure-Python references, both timed in the same run.

    pytest benchmarks/bench_kernels.py -s

Each side computes the same result: ``encode_pairs`` per sample vs ``assemble_supervised``;
``best_fit_decreasing`` vs ``pack_bfd``; ``llamafactory_order`` (LLaMA-Factory's
``greedy_knapsack`` plus its ``length2indexes`` pops) vs ``knapsack_llamafactory``. Each benchmark
prints the speed-up and fails when it drops below its floor; nothing asserts an absolute time.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastsft.kernels.compiled import assemble_supervised, knapsack_llamafactory, pack_bfd
from fastsft.kernels.packing import best_fit_decreasing, llamafactory_order
from fastsft.kernels.supervised import encode_pairs

CUTOFF_LEN = 2048
PACK_CAPACITY = 4096
MASK_ASSEMBLY_FLOOR = 20.0
PACKING_FLOOR = 50.0


def report(benchmark, name: str, python_s: float, compiled_s: float, floor: float) -> None:
    ratio = python_s / compiled_s
    benchmark.extra_info.update(python_s=python_s, compiled_s=compiled_s, speedup=ratio)
    print(
        f"\n{name}: python {python_s * 1e3:.1f} ms, compiled {compiled_s * 1e3:.2f} ms, {ratio:.0f}x (floor {floor:.0f}x)"
    )
    assert ratio >= floor, f"{name} speed-up {ratio:.1f}x is below its floor of {floor:.0f}x"


@pytest.fixture(scope="module")
def sample_lengths(conversations) -> np.ndarray:
    """Encoded sample lengths, capped at the packing capacity like a truncating pipeline would."""
    _, _, offsets, _ = assemble_supervised(
        conversations.token_ids,
        conversations.message_bounds,
        conversations.sample_bounds,
        PACK_CAPACITY,
        False,
        False,
        False,
        None,
    )
    return np.diff(offsets)


def test_mask_assembly(benchmark, conversations, best_time) -> None:
    pairs = conversations.pairs()

    def python_side() -> None:
        for sample_pairs in pairs:
            encode_pairs(sample_pairs, cutoff_len=CUTOFF_LEN)

    def compiled_side() -> None:
        assemble_supervised(
            conversations.token_ids,
            conversations.message_bounds,
            conversations.sample_bounds,
            CUTOFF_LEN,
            False,
            False,
            False,
            None,
        )

    python_s = best_time(python_side, repeats=3)
    benchmark.pedantic(compiled_side, rounds=10, iterations=1, warmup_rounds=1)
    report(benchmark, "mask assembly", python_s, benchmark.stats.stats.min, MASK_ASSEMBLY_FLOOR)


PACKERS = {
    "best-fit-decreasing packing": (best_fit_decreasing, pack_bfd),
    "LLaMA-Factory knapsack": (llamafactory_order, knapsack_llamafactory),
}


@pytest.mark.parametrize("name", PACKERS)
def test_packing(benchmark, name: str, sample_lengths: np.ndarray, best_time) -> None:
    reference, kernel = PACKERS[name]
    lengths = sample_lengths.tolist()
    python_s = best_time(lambda: reference(lengths, PACK_CAPACITY), repeats=5)
    benchmark.pedantic(kernel, args=(sample_lengths, PACK_CAPACITY), rounds=50, iterations=1, warmup_rounds=1)
    report(benchmark, name, python_s, benchmark.stats.stats.min, PACKING_FLOOR)
