"""Mixing several datasets into one sample order, as LLaMA-Factory 0.9.5's ``merge_dataset``.

LLaMA-Factory merges the raw rows of its datasets (each cut to ``max_samples``) before any
tokenization: ``concat`` is ``datasets.concatenate_datasets``; the interleave strategies are
``datasets.interleave_datasets(probabilities=interleave_probs, seed=seed, stopping_strategy=...)``
with ``interleave_under`` → ``first_exhausted`` and ``interleave_over`` → ``all_exhausted``.
``interleave_once`` maps to ``all_exhausted_without_replacement``, which the ``datasets`` versions
LLaMA-Factory 0.9.5 allows (≤ 4.0.0) refuse for map-style datasets, so it is refused here too.

``mixed_order`` computes that order from the datasets' lengths alone, as indices into their
concatenation: the algorithm of ``datasets`` 4.0.0's ``_interleave_map_style_datasets``
(vectorised, drawing the same 1000-sized ``rng.choice`` blocks), so the order does not depend on
the ``datasets`` version installed beside fastsft.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastsft.errors import ConfigError

__all__ = ["STOPPING_STRATEGIES", "interleave_indices", "mixed_order"]

STOPPING_STRATEGIES = {
    "interleave_under": "first_exhausted",
    "interleave_over": "all_exhausted",
    "interleave_once": "all_exhausted_without_replacement",
}
_DRAW_BLOCK = 1000  # datasets draws its sources in blocks of this many


def mixed_order(
    lengths: Sequence[int], mix_strategy: str, probabilities: Sequence[float] | None, seed: int
) -> np.ndarray | None:
    """The merged sample order as indices into the datasets' concatenation; ``None``: the concatenation.

    One dataset is never mixed (LLaMA-Factory returns it as is), whatever the strategy.
    """
    if len(lengths) == 1 or mix_strategy == "concat":
        return None
    stopping = STOPPING_STRATEGIES[mix_strategy]
    if stopping == "all_exhausted_without_replacement":
        raise ConfigError(
            "`mix_strategy: interleave_once` is not supported: LLaMA-Factory 0.9.5 runs on datasets<=4.0.0, "
            "whose interleave_datasets refuses all_exhausted_without_replacement for map-style datasets"
        )
    return interleave_indices(lengths, probabilities, seed, oversampling=stopping == "all_exhausted")


def interleave_indices(
    lengths: Sequence[int], probabilities: Sequence[float] | None, seed: int, *, oversampling: bool
) -> np.ndarray:
    """``datasets`` 4.0.0's interleaving of map-style datasets of these lengths (concatenation indices).

    Without probabilities the sources take turns (undersampling stops with the shortest, oversampling
    cycles every source to the longest's length). With them, each row's source is drawn by
    ``np.random.default_rng(seed).choice`` and a source's rows are taken in order, wrapping round;
    it stops once any source (undersampling) or every source (oversampling) has given all its rows.
    """
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]])
    if (lengths_arr == 0).any():
        raise ConfigError("cannot interleave an empty dataset (LLaMA-Factory fails on it too)")
    if probabilities is None:
        rows = np.arange(lengths_arr.max() if oversampling else lengths_arr.min()).reshape(-1, 1)
        if oversampling:
            rows = np.mod(rows, lengths_arr.reshape(1, -1))
        return (rows + offsets.reshape(1, -1)).reshape(-1)

    probs = np.asarray(probabilities, dtype=np.float64)
    if oversampling and (probs <= 0).any():
        raise ConfigError("`mix_strategy: interleave_over` never ends with an interleave_probs value of 0")
    rng = np.random.default_rng(seed)
    blocks: list[np.ndarray] = []
    counts = np.zeros(len(lengths_arr), dtype=np.int64)
    drawable = probs > 0

    def done() -> bool:
        reached = counts[drawable] >= lengths_arr[drawable]
        return bool(reached.all() if oversampling else reached.any())

    while not done():
        try:
            block = rng.choice(len(lengths_arr), size=_DRAW_BLOCK, p=probabilities)
        except ValueError as err:  # probabilities that do not sum to 1, negative ones, ...
            raise ConfigError(f"invalid interleave_probs {list(probabilities)}: {err}") from None
        blocks.append(block)
        counts += np.bincount(block, minlength=len(lengths_arr))
    draws = np.concatenate(blocks)
    # The loop of datasets stops before the draw after the one that exhausts the first (any) or
    # the last (all) source: keep the draws up to that source's length-th draw.
    exhausted_at = [
        int(np.flatnonzero(draws == source)[length - 1])
        for source, length in enumerate(lengths_arr.tolist())
        if drawable[source]
    ]
    used = draws[: (max(exhausted_at) if oversampling else min(exhausted_at)) + 1]
    indices = np.empty(len(used), dtype=np.int64)
    for source, length in enumerate(lengths_arr.tolist()):
        positions = np.flatnonzero(used == source)
        indices[positions] = np.arange(len(positions)) % length + offsets[source]
    return indices
