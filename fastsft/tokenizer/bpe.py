"""The tables of fastsft's byte-level BPE (``csrc/bpe.pxi``, ``encoders.BPEEncoder``), read from a HF
``tokenizer.json``: the merges, the byte ids, the vocabulary for ``ignore_merges``, the added tokens,
and the character classes of the split regex.

``tokenizer_tables`` accepts exactly this structure and raises ``NotByteLevelBPE`` naming the first
thing that differs: normaliser none or NFC; pre-tokenizer ``Split`` on Qwen2's or Llama 3's regex
(isolated) then ``ByteLevel`` without prefix space or regex; a BPE model without dropout, byte
fallback, subword prefix or suffix, with all 256 byte characters in the vocabulary; added tokens
without ``lstrip``, ``rstrip``, ``single_word`` or ``normalized``. Reading them from the JSON takes
longer than encoding a small dataset (``docs/benchmarks.md``), so they are kept beside a saved spec
(``ByteLevelTables.to_bytes``).
"""

from __future__ import annotations

import io
import itertools
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import orjson

from fastsft.tokenizer import unicode_classes

__all__ = [
    "BPE_FORMAT",
    "ByteLevelTables",
    "NotByteLevelBPE",
    "byte_characters",
    "char_classes",
    "nfc_sensitive",
    "tokenizer_tables",
]

# Version of what this encoder computes: part of its verdict's key (``fastsft.tokenizer.encoders``),
# so a change here is probed again. Bump it with any change to the encoding.
BPE_FORMAT = 1

# The split regexes the compiled scanner implements, and their longest digit run.
SPLIT_PATTERNS = {
    # Qwen2, Qwen2.5, Qwen3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": 1,
    # Llama 3, 3.1, 3.2, 3.3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": 3,
}


class NotByteLevelBPE(Exception):
    """The tokenizer is not one this encoder reproduces; the message says what differs."""


@cache
def char_classes() -> np.ndarray:
    """``uint8[0x110000]``: the class bits ``csrc/bpe.pxi`` reads per code point."""
    folds = unicode_classes.CONTRACTION_FOLDS
    return _code_point_table(
        (1, unicode_classes.LETTER),
        (2, unicode_classes.NUMBER),
        (4, unicode_classes.WHITESPACE),
        (8, [(ord("\r"), ord("\r")), (ord("\n"), ord("\n"))]),
        *((bit, [(c, c) for letter in letters for c in folds[letter]]) for bit, letters in _FOLD_BITS),
    )


# The class bits of the contraction letters (``CLASS_FOLD_*`` in ``csrc/bpe.pxi``).
_FOLD_BITS = ((16, "stmd"), (32, "rv"), (64, "e"), (128, "l"))


@cache
def nfc_sensitive() -> np.ndarray:
    """``uint8[0x110000]``: 1 for the code points NFC may change or combine (text without them is
    its own NFC)."""
    return _code_point_table((1, unicode_classes.NFC_SENSITIVE))


def _code_point_table(*marks: tuple[int, Sequence[tuple[int, int]]]) -> np.ndarray:
    """A read-only ``uint8[0x110000]`` with each ``(bit, runs)``'s bit set over its inclusive runs."""
    table = np.zeros(0x110000, dtype=np.uint8)
    for bit, runs in marks:
        for first, last in runs:
            table[first : last + 1] |= bit
    table.flags.writeable = False
    return table


@cache
def byte_characters() -> tuple[str, ...]:
    """ByteLevel's character for each byte (GPT-2's ``bytes_to_unicode``): the printable bytes as
    themselves, the others as U+0100, U+0101, ... in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = itertools.count(0x100)
    return tuple(chr(byte) if byte in printable else chr(next(shifted)) for byte in range(256))


@dataclass(frozen=True)
class ByteLevelTables:
    """What ``fastsft._core.ByteLevelBPE`` and the added-token split need, read from the JSON."""

    merges: np.ndarray  # int32[M, 3]: left, right, merged id, in rank order
    byte_ids: np.ndarray  # int32[256]
    max_digits: int
    whole_words: tuple[bytes, np.ndarray, np.ndarray] | None  # ignore_merges: the vocabulary as bytes
    added: dict[str, int]  # added tokens split out of the text (content -> id)
    nfc: bool

    def to_bytes(self) -> bytes:
        """The tables as one ``.npz`` (kept beside a saved spec's JSON)."""
        meta = {"format": BPE_FORMAT, "max_digits": self.max_digits, "added": self.added, "nfc": self.nfc}
        arrays: dict[str, Any] = {  # Any: savez's own keyword allow_pickle is a bool
            "merges": self.merges,
            "byte_ids": self.byte_ids,
            "meta": np.frombuffer(orjson.dumps(meta), np.uint8),
        }
        if self.whole_words is not None:
            blob, offsets, ids = self.whole_words
            arrays |= {"words": np.frombuffer(blob, np.uint8), "word_offsets": offsets, "word_ids": ids}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ByteLevelTables:
        """Tables written by ``to_bytes``; ``ValueError`` if they are not that (or of another format)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                meta = orjson.loads(arrays["meta"].tobytes())
                if meta["format"] != BPE_FORMAT:
                    raise ValueError(f"tables of format {meta['format']}, not {BPE_FORMAT}")
                words = None
                if "words" in arrays:
                    words = (arrays["words"].tobytes(), arrays["word_offsets"], arrays["word_ids"])
                return cls(
                    merges=arrays["merges"],
                    byte_ids=arrays["byte_ids"],
                    max_digits=int(meta["max_digits"]),
                    whole_words=words,
                    added=dict(meta["added"]),
                    nfc=bool(meta["nfc"]),
                )
        except (OSError, KeyError, TypeError, EOFError, zipfile.BadZipFile, orjson.JSONDecodeError) as error:
            raise ValueError(f"not byte-level BPE tables: {error}") from None


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise NotByteLevelBPE(what)


def tokenizer_tables(tokenizer_json: str, split_special_tokens: bool) -> ByteLevelTables:
    """The tables of a HF ``tokenizer.json`` text; ``NotByteLevelBPE`` says what this encoder lacks."""
    spec = orjson.loads(tokenizer_json)
    normalizer = spec.get("normalizer")
    _require(normalizer in (None, {"type": "NFC"}), f"normalizer {normalizer and normalizer.get('type')!r}")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    _require(len(steps) == 2, "pre-tokenizer is not Split then ByteLevel")
    split, byte_level = steps
    pattern = (split.get("pattern") or {}).get("Regex", "")
    _require(
        split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert"),
        "pre-tokenizer does not start with an isolating Split",
    )
    _require(pattern in SPLIT_PATTERNS, f"split regex {pattern!r} is not Qwen2's or Llama 3's")
    _require(
        byte_level.get("type") == "ByteLevel"
        and not byte_level.get("add_prefix_space")
        and not byte_level.get("use_regex", True),
        "second pre-tokenizer is not ByteLevel without prefix space and regex",
    )
    model = spec.get("model") or {}
    _require(model.get("type") == "BPE", f"model is {model.get('type')!r}, not BPE")
    _require(model.get("dropout") in (None, 0.0), "BPE dropout is set")
    _require(not model.get("byte_fallback"), "BPE byte_fallback is set")
    _require(not model.get("continuing_subword_prefix"), "BPE continuing_subword_prefix is set")
    _require(not model.get("end_of_word_suffix"), "BPE end_of_word_suffix is set")
    vocab: dict[str, int] = model["vocab"]
    characters = byte_characters()
    missing = [character for character in characters if character not in vocab]
    _require(not missing, f"{len(missing)} byte characters are not in the vocabulary")
    byte_ids = np.array([vocab[character] for character in characters], dtype=np.int32)
    merges = np.array(_merge_rows(model["merges"], vocab), dtype=np.int32).reshape(-1, 3)
    added: dict[str, int] = {}
    for token in spec.get("added_tokens", []):
        flags = [flag for flag in ("lstrip", "rstrip", "single_word", "normalized") if token.get(flag)]
        _require(not flags, f"added token {token['content']!r} sets {', '.join(flags)}")
        if token["content"] and not (split_special_tokens and token.get("special")):
            added[token["content"]] = token["id"]
    return ByteLevelTables(
        merges=merges,
        byte_ids=byte_ids,
        max_digits=SPLIT_PATTERNS[pattern],
        whole_words=_whole_words(vocab, characters) if model.get("ignore_merges") else None,
        added=added,
        nfc=normalizer is not None,
    )


def _merge_rows(merges: list[Any], vocab: dict[str, int]) -> list[tuple[int, int, int]]:
    """``(left, right, merged)`` ids of each merge (``"a b"`` strings or ``["a", "b"]`` pairs)."""
    pairs = [merge.split(" ", 1) if isinstance(merge, str) else merge for merge in merges]
    try:
        return [(vocab[left], vocab[right], vocab[left + right]) for left, right in pairs]
    except KeyError as error:
        raise NotByteLevelBPE(f"a merge uses {error} outside the vocabulary") from None


def _whole_words(vocab: dict[str, int], characters: tuple[str, ...]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The vocabulary entries made of byte characters, as bytes (``ignore_merges`` looks them up)."""
    to_latin1 = str.maketrans({character: chr(byte) for byte, character in enumerate(characters)})
    words, ids = [], []
    for token, token_id in vocab.items():
        try:
            words.append(token.translate(to_latin1).encode("latin-1"))
        except UnicodeEncodeError:  # holds a character that is no byte: no piece can be it
            continue
        ids.append(token_id)
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum([len(word) for word in words], out=offsets[1:])
    return b"".join(words), offsets, np.array(ids, dtype=np.int32)
