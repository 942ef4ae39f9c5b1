"""What made a saved dataset, stored in it (``fastsft_output.json``) and checked when it is loaded.

``fastsft preprocess`` (and ``fastsft train`` when it builds ``tokenized_path``) writes the
fastsft version, a fingerprint of the tokenizer's vocabulary and the data options (template included).
``fastsft train`` reads it back: data options in its config that differ are named as ignored
(LLaMA-Factory, too, ignores them once ``tokenized_path`` exists), a different tokenizer is
refused, and so is any token id the model's embedding cannot look up (which would otherwise
crash at the first step, or trip a device-side assert on a GPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from fastsft.data.options import DataArgs
from fastsft.data.output import MARKER
from fastsft.errors import ConfigError

__all__ = [
    "check_token_ids",
    "check_tokenizer",
    "describe",
    "ignored_options",
    "read_provenance",
    "tokenizer_fingerprint",
]

# Options that choose how a run works, not what it writes.
NOT_RECORDED = ("tokenized_path", "preprocessing_num_workers", "backend", "tokenizer_backend")
# Recorded, but not named as ignored: the seed drives training too, so changing it has an effect.
NOT_COMPARED = (*NOT_RECORDED, "seed")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the vocabulary (every token and its id, added tokens included), as 16 hex digits."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def describe(args: DataArgs, *, fingerprint: str, tokenizer: Any) -> dict[str, Any]:
    """The provenance record of a dataset built from ``args`` (``fingerprint`` taken before fixing)."""
    from fastsft import __version__

    options = {k: v for k, v in dataclasses.asdict(args).items() if k not in NOT_RECORDED}
    return {
        "format": 1,
        "fastsft_version": __version__,
        "tokenizer": {
            "fingerprint": fingerprint,
            "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
            "vocabulary": len(tokenizer),
        },
        "data_options": options,
    }


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The record saved in ``path``, or ``None`` for a dataset fastsft did not write (LLaMA-Factory's)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {marker}: {err}") from None
    return record if isinstance(record, dict) else None


def ignored_options(record: dict[str, Any] | None, args: DataArgs) -> list[str]:
    """``args``' data options that differ from those that made the saved dataset (``key value (saved: v)``)."""
    if record is None:
        return []
    saved = record.get("data_options", {})
    current = dataclasses.asdict(args)
    return [
        f"{key} {current[key]!r} (saved: {saved[key]!r})"
        for key in sorted(saved)
        if key in current and key not in NOT_COMPARED and _normal(current[key]) != _normal(saved[key])
    ]


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def check_tokenizer(record: dict[str, Any] | None, fingerprint: str, path: str) -> None:
    """Refuse a saved dataset whose tokenizer is not the one training uses."""
    if record is None:
        return
    saved = record.get("tokenizer", {})
    if saved.get("fingerprint") not in (None, fingerprint):
        raise ConfigError(
            f"tokenized_path {path} was made with another tokenizer ({saved.get('name_or_path') or 'unnamed'}, "
            f"vocabulary {saved.get('fingerprint')}, this one {fingerprint}); preprocess it again with this "
            "tokenizer or point tokenizer_name_or_path at that one"
        )


def check_token_ids(splits: dict[str, Any], vocab_size: int, path: str) -> None:
    """Refuse token ids the model cannot embed (at or above ``vocab_size``), with the split and the id."""
    import pyarrow.compute as pc

    for name, dataset in splits.items():
        if len(dataset) == 0:
            continue
        column = dataset.with_format("arrow")["input_ids"]
        largest = pc.max(pc.list_flatten(column)).as_py()
        if largest is not None and largest >= vocab_size:
            raise ConfigError(
                f"tokenized_path {path} ({name} split) holds token id {largest}, but the model's vocab_size "
                f"is {vocab_size}; it was made with another tokenizer"
            )
