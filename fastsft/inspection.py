"""``fastsft inspect``: encoded samples as a person wants to read them.

Trained (labelled) spans are green on a terminal and wrapped in ``[[...]]`` in plain text;
per-turn token counts show where ``cutoff_len`` cut; packed rows show their sequence boundaries.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from fastsft import IGNORE_INDEX
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import prepare_run
from fastsft.data.rows.encoder import in_dataset_terms, invalid_text
from fastsft.data.sources.converter import Dropped
from fastsft.data.sources.splitting import TRAIN
from fastsft.errors import DataError
from fastsft.kernels.supervised import TurnTrace

__all__ = ["inspect_dataset", "inspect_saved"]

GREEN, DIM, BOLD, RESET = "\x1b[32m", "\x1b[2m", "\x1b[1m", "\x1b[0m"


def highlight(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int], *, color: bool) -> str:
    """Decoded text with labelled spans marked; prompt spans dimmed on a terminal."""
    parts = []
    for trained, group in itertools.groupby(range(len(input_ids)), key=lambda i: labels[i] != IGNORE_INDEX):
        text = tokenizer.decode([input_ids[i] for i in group], skip_special_tokens=False)
        if color:
            parts.append(f"{GREEN}{text}{RESET}" if trained else f"{DIM}{text}{RESET}")
        else:
            parts.append(f"[[{text}]]" if trained else text)
    return "".join(parts)


def _heading(text: str, color: bool) -> str:
    return f"{BOLD}{text}{RESET}" if color else text


def describe_turns(trace: list[TurnTrace]) -> list[str]:
    """One line per turn: prompt and response tokens, and what truncation kept."""
    lines = []
    for t in sorted(trace, key=lambda t: t.turn):
        cut = []
        if t.prompt_kept < t.prompt_len:
            cut.append(f"prompt cut to {t.prompt_kept}")
        if t.response_kept < t.response_len:
            cut.append(f"response cut to {t.response_kept}")
        note = f"  <- truncated: {', '.join(cut)}" if cut else ""
        lines.append(
            f"  turn {t.turn + 1}: prompt {t.prompt_len} tokens, response {t.response_len} tokens{note}"
        )
    return lines


def inspect_dataset(
    args: DataArgs, tokenizer: Any, *, count: int = 3, start: int = 0, color: bool = False
) -> str:
    """Encode ``count`` training samples from ``start`` on (in training order) with the reference
    path and describe each."""
    run = prepare_run(args, tokenizer, fingerprint=False)
    encoder = run.encoder(encode_path="python")
    out = [
        f"template {args.template}, cutoff_len {encoder.cutoff_len}, train_on_prompt {args.train_on_prompt}, "
        f"mask_history {args.mask_history}"
        + (" (per-sample view; packed rows: inspect --data)" if args.packing else "")
    ]
    # The training samples in training order (mixing, val_size; streaming: the shuffle buffer's order).
    samples = run.streamed_samples() if args.streaming else run.samples(TRAIN)
    if args.streaming:
        out[0] += f", streamed (buffer_size {args.buffer_size}, seed {args.seed})"
    for position, (ref, conv) in enumerate(samples):
        if position < start:
            continue
        if position >= start + count:
            break
        out.append("")
        trace: list[TurnTrace] = []
        if isinstance(conv, DataError):  # the heading says where; the error adds the field and reason
            out.append(_heading(f"== {ref}: malformed: {conv}", color))
            continue
        if isinstance(conv, Dropped):
            out.append(_heading(f"== {ref}: dropped ({conv.reason})", color))
            continue
        invalid = invalid_text(conv)
        if invalid is not None:  # no tokenizer encodes it
            out.append(_heading(f"== {ref}: malformed: {invalid}", color))
            continue
        try:
            input_ids, labels, full_length = encoder.encode_one(conv, trace)
        except DataError as err:
            out.append(_heading(f"== {ref}: malformed: {in_dataset_terms(err, conv)}", color))
            continue
        trained = sum(label != IGNORE_INDEX for label in labels)
        status = f", truncated from {full_length}" if len(input_ids) < full_length else ""
        dropped_turns = len(conv.messages) // 2 - len(trace)
        if dropped_turns:
            status += f", {dropped_turns} turn(s) cut entirely"
        out.append(_heading(f"== {ref}: {len(input_ids)} tokens, {trained} trained{status}", color))
        out.extend(describe_turns(trace))
        out.append(highlight(tokenizer, input_ids, labels, color=color))
    return "\n".join(out)


def sequence_spans(position_ids: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each sequence in a packed row: a new one starts wherever the position is 0."""
    starts = [i for i, p in enumerate(position_ids) if p == 0] or [0]
    return list(zip(starts, [*starts[1:], len(position_ids)]))


def inspect_saved(path: str, tokenizer: Any, *, count: int = 3, start: int = 0, color: bool = False) -> str:
    """Describe rows of a dataset written by ``fastsft preprocess`` (or by LLaMA-Factory)."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(path)
    if isinstance(data, DatasetDict):
        data = data["train"]
    out = [f"{path}: {len(data)} rows, columns {', '.join(data.column_names)}"]
    for index in range(start, min(start + count, len(data))):
        row = data[index]
        ids, labels = row["input_ids"], row["labels"]
        trained = sum(label != IGNORE_INDEX for label in labels)
        out += ["", _heading(f"== row #{index}: {len(ids)} tokens, {trained} trained", color)]
        if "position_ids" not in row:
            out.append(highlight(tokenizer, ids, labels, color=color))
            continue
        pad = _padding_length(row)
        for number, (begin, end) in enumerate(sequence_spans(row["position_ids"][: len(ids) - pad]), 1):
            out.append(f"  -- sequence {number}: tokens {begin}..{end - 1} ({end - begin})")
            out.append(highlight(tokenizer, ids[begin:end], labels[begin:end], color=color))
        if pad:
            out.append(f"  -- padding: {pad} tokens")
    return "\n".join(out)


def _padding_length(row: dict[str, Any]) -> int:
    """Padding tokens at the end of a packed row.

    Neat packing masks padding with 0. LLaMA-Factory's plain packing gives every pad token mask 1,
    position 0 and label -100, so there padding is the trailing run of one such repeated token (its
    pad id is the template's, which a tokenizer loaded for decoding need not know).
    """
    ids, positions, labels, mask = row["input_ids"], row["position_ids"], row["labels"], row["attention_mask"]
    neat = 0 in mask
    n = 0
    for token, position, label, masked in zip(
        reversed(ids), reversed(positions), reversed(labels), reversed(mask)
    ):
        is_pad = masked == 0 if neat else token == ids[-1] and position == 0 and label == IGNORE_INDEX
        if not is_pad:
            break
        n += 1
    return n
