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
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from fastsft.data.data_args import DataArgs
from fastsft.errors import ConfigError
from fastsft.safe_output import MARKER
from fastsft.tokenizer.spec import TokenizerSpec

__all__ = [
    "FORMAT",
    "check_token_ids",
    "check_tokenizer",
    "describe",
    "fingerprint_version",
    "ignored_options",
    "read_provenance",
    "tokenizer_fingerprint",
]

# Options that choose how a run works, not what it writes.
NOT_RECORDED = (
    "tokenized_path",
    "preprocessing_num_workers",
    "backend",
    "tokenizer_backend",
    "streaming",  # how training reads the rows, not what they are
    "buffer_size",
)
# Recorded, but not named as ignored: the seed drives training too, so changing it has an effect.
NOT_COMPARED = (*NOT_RECORDED, "seed")


# fastsft_output.json format: 2 since the fingerprint covers the tokens in id order (faster to take).
FORMAT = 2


def tokenizer_fingerprint(tokenizer: Any, version: int = FORMAT) -> str:
    """A fingerprint of the vocabulary (every token and its id, added tokens included), 16 hex digits.

    Version 2: sha256 of the tokens in id order as JSON (``None`` for an unused id); version 1, for
    records of format 1: sha256 of the ``[token, id]`` pairs in id order, as ``json.dumps`` writes them.
    """
    if version < 2:
        pairs = sorted(tokenizer.get_vocab().items(), key=itemgetter(1))
        return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    return hashlib.sha256(orjson.dumps(_tokens_by_id(tokenizer))).hexdigest()[:16]


def _tokens_by_id(tokenizer: Any) -> list[str | None]:
    """Token ``i`` at index ``i``: read id by id from the Rust tokenizer (a third of the time of
    ``get_vocab``) when ids ``0..n-1`` hold all ``n`` tokens, else laid out from ``get_vocab``."""
    rust = getattr(tokenizer, "backend_tokenizer", None)
    if rust is not None:
        tokens = list(map(rust.id_to_token, range(rust.get_vocab_size(with_added_tokens=True))))
        if None not in tokens:
            return tokens
    vocab = tokenizer.get_vocab()
    laid_out: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for token, index in vocab.items():
        laid_out[index] = token
    return laid_out


def fingerprint_version(record: dict[str, Any] | None) -> int:
    """The fingerprint version a provenance record holds (``FORMAT`` for none)."""
    return FORMAT if record is None else min(int(record.get("format", 1)), FORMAT)


def describe(args: DataArgs, *, fingerprint: str, tokenizer: TokenizerSpec) -> dict[str, Any]:
    """The provenance record of a dataset built from ``args`` (``fingerprint`` taken before fixing)."""
    from fastsft import __version__

    options = {k: v for k, v in dataclasses.asdict(args).items() if k not in NOT_RECORDED}
    return {
        "format": FORMAT,
        "fastsft_version": __version__,
        "tokenizer": {
            "fingerprint": fingerprint,
            "name_or_path": tokenizer.name_or_path,
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
