"""Supervised encoding: message token ids → ``input_ids`` and ``labels``.

``encode_pairs`` is the readable reference, a line-for-line port of LLaMA-Factory 0.9.5's
``SupervisedDatasetProcessor._encode_data_example``. The compiled kernel
``fastsft._core.assemble_supervised`` computes the same thing for a whole batch at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from fastsft import IGNORE_INDEX

__all__ = ["TurnTrace", "encode_pairs", "infer_seqlen", "pairs"]


def pairs(messages: Sequence[Sequence[int]]) -> list[tuple[Sequence[int], Sequence[int]]]:
    """(prompt_ids, response_ids) per turn from per-message ids (messages 2k, 2k+1), like ``encode_multiturn``."""
    return [(messages[i], messages[i + 1]) for i in range(0, len(messages), 2)]


class TurnTrace(NamedTuple):
    """How one (prompt, response) turn fared under ``cutoff_len``; turns cut entirely are absent."""

    turn: int
    prompt_len: int
    prompt_kept: int
    response_len: int
    response_kept: int


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """Lengths (source, target) a turn keeps when ``cutoff_len`` tokens of budget remain."""
    if target_len * 2 < cutoff_len:  # truncate source
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:  # truncate target
        max_target_len = cutoff_len - source_len
    else:  # truncate both, in proportion
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))

    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    new_source_len = min(max_source_len, source_len)
    return new_source_len, new_target_len


def encode_pairs(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    efficient_eos: bool = False,
    eos_token_id: int | None = None,
    trace: list[TurnTrace] | None = None,
) -> tuple[list[int], list[int]]:
    """Concatenate (prompt, response) pairs into ``input_ids`` and ``labels``.

    Each turn is truncated against the budget still left under ``cutoff_len``. With
    ``mask_history`` the turns are consumed last-first and only the last response is labelled.
    When ``trace`` is given, one ``TurnTrace`` per kept turn is appended to it (for ``inspect``).
    """
    input_ids: list[int] = []
    labels: list[int] = []
    total_length = 1 if efficient_eos else 0
    turns = list(pairs)[::-1] if mask_history else pairs

    for turn_idx, (source_ids, target_ids) in enumerate(turns):
        if total_length >= cutoff_len:
            break

        source_len, target_len = infer_seqlen(len(source_ids), len(target_ids), cutoff_len - total_length)
        source = list(source_ids[:source_len])
        target = list(target_ids[:target_len])
        total_length += source_len + target_len
        if trace is not None:
            turn = len(pairs) - 1 - turn_idx if mask_history else turn_idx
            trace.append(TurnTrace(turn, len(source_ids), source_len, len(target_ids), target_len))

        if train_on_prompt:
            source_label = source
        elif efficient_eos and turn_idx != 0:
            source_label = [eos_token_id] + [IGNORE_INDEX] * (source_len - 1)
        else:
            source_label = [IGNORE_INDEX] * source_len

        target_label = [IGNORE_INDEX] * target_len if mask_history and turn_idx != 0 else target

        if mask_history:
            input_ids = source + target + input_ids
            labels = source_label + target_label + labels
        else:
            input_ids += source + target
            labels += source_label + target_label

    if efficient_eos:
        input_ids.append(eos_token_id)
        labels.append(eos_token_id)

    return input_ids, labels
