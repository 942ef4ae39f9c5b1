"""Tokenizer backends: the HF tokenizer itself, or an exact tiktoken re-implementation of it.

The pipeline tokenizes every text segment on its own, exactly like
``tokenizer.encode(segment, add_special_tokens=False)``. That call dominates preprocessing time, so
for byte-level BPE tokenizers (GPT-2, LLaMA-3, Qwen2 families) ``TiktokenBackend`` feeds the same
vocab, split regex, normaliser and added tokens to tiktoken, which gives the same ids several times
faster. It is only used where the equality holds by construction, and checked on a probe text:

* **BPE.** tiktoken merges the adjacent pair whose *concatenation* has the lowest id; HF merges the
  pair that comes first in ``merges``. They agree when the merges are ordered by the id of their
  result (each result id above its parts) and every entry in tiktoken's ranks is what HF's own BPE
  makes of its bytes: then a pair tiktoken may merge but ``merges`` lacks never becomes adjacent in
  HF's run (it would tile a token that HF then cannot finish), so both pick the same pair at every
  step. tiktoken also emits a whole pre-token found in its ranks directly, which HF does too: always
  with ``ignore_merges``, and otherwise because its BPE reaches that token. Entries HF's BPE never
  builds are left out of the ranks without ``ignore_merges``; with it they make the tokenizer
  unsupported.
* **Pre-tokenization.** The same ``Split`` regex (or GPT-2's), run by fancy-regex instead of
  Oniguruma (they agree on every code point for the GPT-2/Qwen2 character classes). Unless the
  regex is a known one that matches everywhere, an extra alternative keeps text it skips as one
  piece, as HF's ``Isolated`` split does.
* **Added tokens.** HF cuts the raw text at non-``normalized`` added tokens (leftmost-longest),
  applies the normaliser (NFC) to each remaining piece, then cuts those at ``normalized`` tokens.
  ``_AddedTokenSplitter`` does exactly that in Python. The single tiktoken call, with the added
  tokens as tiktoken special tokens, is used instead when it cannot differ: the text is unchanged
  by NFC (a substring of NFC text is NFC) and no two added-token strings overlap.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fastsft.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ENV_VAR = "FASTSFT_TOKENIZER"
KINDS = ("auto", "hf", "fast")

# The pattern of ``ByteLevel(use_regex=True)`` in HF tokenizers (GPT-2's).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Patterns with a match starting at every position: each character is whitespace, a letter, a number
# or none of these, and each class has a branch that starts with it. HF's Isolated split then leaves
# no unmatched text, which tiktoken would drop.
GAPLESS_PATTERNS = frozenset({GPT2_PATTERN, QWEN2_PATTERN, LLAMA3_PATTERN})

# Joins a batch into one tiktoken call as an extra special token. A noncharacter: NFC-inert and a
# hard boundary for the split regex, so each text is tokenized exactly as on its own.
_SEPARATOR = "\U0010ffff"

# Below this many characters per thread a batch is encoded in one call.
_MIN_CHARS_PER_THREAD = 1 << 16

# Methods of the transformers fast tokenizer that lead to ``encode_batch`` of its Rust backend;
# a subclass overriding any of them is encoded through ``tokenizer.encode`` itself.
_ENCODE_METHODS = ("__call__", "encode", "encode_plus", "_encode_plus", "_batch_encode_plus", "tokenize")


class TokenizerBackend(Protocol):
    """Encodes text segments exactly like ``tokenizer.encode(text, add_special_tokens=False)``."""

    name: str

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        ...

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` and ``int64[len(texts) + 1]`` offsets (text ``i`` is ``ids[o[i]:o[i+1]]``)."""
        ...


class UnsupportedTokenizer(Exception):
    """The tokenizer cannot be reproduced by tiktoken; the message says why."""


# --------------------------------------------------------------------------------------------------
# HF backend


class HFBackend:
    """The HF tokenizer itself: one batched call into its Rust backend (multi-threaded there)."""

    name = "hf"

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._rust = tokenizer.backend_tokenizer if _encodes_through_rust(tokenizer) else None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        texts = list(texts)
        if self._rust is None:
            return [self._tokenizer.encode(text, add_special_tokens=False) for text in texts]
        # The settings ``tokenizer.encode`` puts on the Rust tokenizer before encoding.
        if self._rust.truncation is not None:
            self._rust.no_truncation()
        if self._rust.padding is not None:
            self._rust.no_padding()
        self._rust.encode_special_tokens = bool(getattr(self._tokenizer, "split_special_tokens", False))
        try:
            encodings = self._rust.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError:
            _raise_if_invalid_unicode(texts)
            raise
        return [encoding.ids for encoding in encodings]

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` plus ``int64[len(texts) + 1]`` offsets."""
        return _flatten(self.encode_batch(texts))

    def single_threaded(self) -> HFBackend:
        """The same backend for a worker process (HF's threads follow ``TOKENIZERS_PARALLELISM``)."""
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (HFBackend, (self._tokenizer,))


class PerStringBackend:
    """``tokenizer.encode(text, add_special_tokens=False)`` once per text, as LLaMA-Factory calls it.

    The tokenizer implementation of the pure-Python encode path, which reproduces LLaMA-Factory's
    calls one for one rather than batching them.
    """

    name = "hf (per string)"

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        return [self._tokenizer.encode(text, add_special_tokens=False) for text in texts]

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` plus ``int64[len(texts) + 1]`` offsets."""
        return _flatten(self.encode_batch(texts))

    def single_threaded(self) -> PerStringBackend:
        return self


def _encodes_through_rust(tokenizer: Any) -> bool:
    """Whether ``tokenizer.encode`` is exactly ``encode_batch`` of its Rust backend (no Python-side override)."""
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        return False
    cls = type(tokenizer)
    return all(
        getattr(cls, name, None) is getattr(PreTrainedTokenizerFast, name, None) for name in _ENCODE_METHODS
    )


# --------------------------------------------------------------------------------------------------
# tiktoken backend


@dataclass(frozen=True)
class AddedTokenRule:
    """One added token as HF matches it: ``match`` is its content, NFC-normalised if ``normalized``."""

    match: str
    token_id: int
    normalized: bool
    skipped: bool  # a special token while ``split_special_tokens`` is on: matched, then left as text


@dataclass(frozen=True)
class TiktokenParts:
    """Everything a ``TiktokenBackend`` is built from; small to pickle into worker processes."""

    pattern: str
    ranks: dict[bytes, int]
    added_tokens: tuple[AddedTokenRule, ...]
    nfc: bool


class _AddedTokenSplitter:
    """HF's ``AddedVocabulary.extract_and_normalize``: added-token cuts, NFC on the pieces between."""

    def __init__(self, rules: Sequence[AddedTokenRule], nfc: bool) -> None:
        self._nfc = nfc
        self._raw = self._matcher([rule for rule in rules if not rule.normalized])
        self._normalized = self._matcher([rule for rule in rules if rule.normalized])

    @staticmethod
    def _matcher(rules: Sequence[AddedTokenRule]) -> tuple[re.Pattern[str], dict[str, int | None]] | None:
        if not rules:
            return None
        # Longest first: at the leftmost match position Python's regex then takes the longest token,
        # which is aho-corasick's LeftmostLongest.
        strings = sorted({rule.match for rule in rules}, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(string) for string in strings))
        ids = {rule.match: None if rule.skipped else rule.token_id for rule in rules}
        return pattern, ids

    @staticmethod
    def _cut(text: str, matcher: tuple[re.Pattern[str], dict[str, int | None]] | None) -> list[str | int]:
        """``text`` as pieces of plain text and added-token ids; a skipped match stays in its text piece."""
        if matcher is None:
            return [text] if text else []
        pattern, ids = matcher
        pieces: list[str | int] = []
        start = 0
        for match in pattern.finditer(text):
            token_id = ids[match.group()]
            if token_id is None:
                continue
            if match.start() > start:
                pieces.append(text[start : match.start()])
            pieces.append(token_id)
            start = match.end()
        if start < len(text):
            pieces.append(text[start:])
        return pieces

    def split(self, text: str) -> list[str | int]:
        """Plain-text pieces (normalised, each pre-tokenized on its own) and added-token ids, in order."""
        pieces: list[str | int] = []
        for piece in self._cut(text, self._raw):
            if isinstance(piece, int):
                pieces.append(piece)
            else:
                pieces.extend(
                    self._cut(unicodedata.normalize("NFC", piece) if self._nfc else piece, self._normalized)
                )
        return pieces


class TiktokenBackend:
    """Byte-level BPE through tiktoken, id-for-id equal to the HF tokenizer it was built from.

    Build it with ``TiktokenBackend.from_tokenizer`` (checks the structure, not the probe) or
    ``load_backend`` (also runs the probe). ``num_threads`` encodes large batches in that many
    threads (tiktoken releases the GIL); use 1 in worker processes that already run in parallel.
    """

    name = "tiktoken"

    def __init__(self, parts: TiktokenParts, num_threads: int | None = None) -> None:
        import tiktoken

        self.parts = parts
        self.num_threads = max(1, num_threads or _available_cpus())
        specials = {rule.match: rule.token_id for rule in parts.added_tokens if not rule.skipped}
        self._separator_id = max([*parts.ranks.values(), *specials.values()]) + 1
        self._encoding = tiktoken.Encoding(
            "fastsft",
            pat_str=parts.pattern,
            mergeable_ranks=parts.ranks,
            special_tokens={**specials, _SEPARATOR: self._separator_id},
        )
        self._allowed = frozenset(self._encoding.special_tokens_set)
        self._splitter = _AddedTokenSplitter(parts.added_tokens, parts.nfc)
        self._direct = _overlap_free([rule.match for rule in parts.added_tokens])

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, num_threads: int | None = None) -> TiktokenBackend:
        """Build from a HF fast tokenizer; raises ``UnsupportedTokenizer`` with the reason when it cannot."""
        return cls(_extract_parts(tokenizer), num_threads=num_threads)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        ids, offsets = self.encode_batch_flat(texts)
        flat = ids.tolist()
        bounds = offsets.tolist()
        return [flat[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` plus ``int64[len(texts) + 1]`` offsets."""
        texts = list(texts)
        slow = self._needs_splitter(texts)
        if not slow:
            return self._encode_direct(texts)
        fast_index = [i for i in range(len(texts)) if i not in slow]
        fast_ids, fast_offsets = self._encode_direct([texts[i] for i in fast_index])
        per_text: list[np.ndarray] = [np.empty(0, np.int32)] * len(texts)
        for k, i in enumerate(fast_index):
            per_text[i] = fast_ids[fast_offsets[k] : fast_offsets[k + 1]]
        for i in slow:
            per_text[i] = np.asarray(self._encode_split(texts[i]), dtype=np.int32)
        lengths = np.fromiter((len(ids) for ids in per_text), dtype=np.int64, count=len(texts))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return np.concatenate(per_text) if per_text else np.empty(0, np.int32), offsets

    def _needs_splitter(self, texts: list[str]) -> set[int]:
        """Indices of texts the one-call path could get wrong: NFC would change them, or they hold the separator."""
        if not self._direct:
            return set(range(len(texts)))
        joined = _SEPARATOR.join(texts)
        suspects: set[int] = set()
        if self.parts.nfc and not joined.isascii() and not unicodedata.is_normalized("NFC", joined):
            suspects.update(
                i
                for i, text in enumerate(texts)
                if not text.isascii() and not unicodedata.is_normalized("NFC", text)
            )
        if joined.count(_SEPARATOR) != max(len(texts) - 1, 0):
            suspects.update(i for i, text in enumerate(texts) if _SEPARATOR in text)
        return suspects

    def _encode_direct(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """One tiktoken call per thread over the texts joined by the separator token."""
        if not texts:
            return np.empty(0, np.int32), np.zeros(1, np.int64)
        chunks = _balanced_chunks(texts, self.num_threads)
        if len(chunks) == 1:
            results = [self._encode_joined(chunks[0])]
        else:
            with ThreadPoolExecutor(len(chunks)) as pool:
                results = list(pool.map(self._encode_joined, chunks))
        ids = np.concatenate([ids for ids, _ in results])
        lengths = np.concatenate([lengths for _, lengths in results])
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return ids, offsets

    def _encode_joined(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids (separators removed) and per-text lengths of ``texts`` encoded as one string."""
        try:
            encoded = self._encoding.encode_to_numpy(
                _SEPARATOR.join(texts), allowed_special=self._allowed, disallowed_special=()
            )
        except UnicodeEncodeError:
            _raise_if_invalid_unicode(texts)
            raise
        is_separator = encoded == self._separator_id
        bounds = np.concatenate(([-1], np.flatnonzero(is_separator), [len(encoded)]))
        lengths = np.diff(bounds) - 1
        return encoded[~is_separator].astype(np.int32), lengths.astype(np.int64)

    def _encode_split(self, text: str) -> list[int]:
        """One text through the exact Python added-token split, plain pieces through tiktoken."""
        _raise_if_invalid_unicode([text])
        ids: list[int] = []
        for piece in self._splitter.split(text):
            if isinstance(piece, int):
                ids.append(piece)
            else:
                ids.extend(self._encoding.encode_ordinary(piece))
        return ids

    def single_threaded(self) -> TiktokenBackend:
        """The same backend on one thread, for a worker process (the processes are the parallelism)."""
        return TiktokenBackend(self.parts, num_threads=1)

    def __reduce__(self) -> tuple[Any, ...]:
        return (TiktokenBackend, (self.parts, self.num_threads))


def _available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _balanced_chunks(texts: list[str], max_chunks: int) -> list[list[str]]:
    """Contiguous groups of about equal character count, at least ``_MIN_CHARS_PER_THREAD`` each."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    cumulative = np.cumsum(lengths)
    total = int(cumulative[-1]) if len(texts) else 0
    n_chunks = int(max(1, min(max_chunks, total // _MIN_CHARS_PER_THREAD, len(texts))))
    if n_chunks == 1:
        return [texts]
    cuts = np.searchsorted(cumulative, np.arange(1, n_chunks) * (total / n_chunks))
    edges = [0, *sorted(set(int(c) + 1 for c in cuts)), len(texts)]
    return [texts[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _overlap_free(strings: Sequence[str]) -> bool:
    """No string occurs inside another, and no proper suffix of one is a proper prefix of another.

    Then every leftmost scan for them finds the same matches, however ties would be broken.
    """
    if len(set(strings)) != len(strings):
        return False
    members = set(strings)
    lengths = sorted({len(s) for s in strings})
    prefixes = {s[:i] for s in strings for i in range(1, len(s))}
    for s in strings:
        for start in range(len(s)):
            if start > 0 and s[start:] in prefixes:
                return False
            for length in lengths:
                end = start + length
                if end > len(s):
                    break
                if (start, end) != (0, len(s)) and s[start:end] in members:
                    return False
    return True


# --------------------------------------------------------------------------------------------------
# Reading and checking the HF tokenizer


def _byte_level_decoder() -> dict[int, str]:
    """``str.translate`` table from GPT-2's byte-level characters to the latin-1 character of each byte.

    Characters below 256 that are not byte-level characters map to U+FFFF, so ``encode("latin-1")``
    fails on them just as on any other non-byte-level character.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    byte_for_char = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in byte_for_char:
            byte_for_char[256 + extra] = b
            extra += 1
    table = {c: "\uffff" for c in range(256)}
    table.update({c: chr(b) for c, b in byte_for_char.items()})
    return table


_BYTE_LEVEL_DECODER = _byte_level_decoder()


def _token_bytes(token: str) -> bytes | None:
    """The bytes a byte-level vocab entry stands for; None for an entry that is not byte-level."""
    try:
        return token.translate(_BYTE_LEVEL_DECODER).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _extract_parts(tokenizer: Any) -> TiktokenParts:
    """Read vocab, regex, normaliser and added tokens off a HF fast tokenizer, checking each is reproducible."""
    rust = getattr(tokenizer, "backend_tokenizer", None)
    if rust is None:
        raise UnsupportedTokenizer("not a fast (Rust-backed) tokenizer")
    if not _encodes_through_rust(tokenizer):
        raise UnsupportedTokenizer(f"{type(tokenizer).__name__} changes encoding in Python")
    if type(rust.model).__name__ != "BPE":
        raise UnsupportedTokenizer(f"model is {type(rust.model).__name__}, not BPE")
    nfc = _check_normalizer(json.loads(rust.normalizer.__getstate__()) if rust.normalizer else None)
    pattern = _check_pre_tokenizer(
        json.loads(rust.pre_tokenizer.__getstate__()) if rust.pre_tokenizer else None
    )
    ranks = _checked_ranks(rust.model)
    split_special = bool(getattr(tokenizer, "split_special_tokens", False))
    rules = []
    for token_id, token in sorted(rust.get_added_tokens_decoder().items()):
        if token.lstrip or token.rstrip or token.single_word:
            raise UnsupportedTokenizer(f"added token {token.content!r} uses lstrip/rstrip/single_word")
        if _SEPARATOR in token.content:
            raise UnsupportedTokenizer(f"added token {token.content!r} contains U+10FFFF")
        match = unicodedata.normalize("NFC", token.content) if token.normalized and nfc else token.content
        rules.append(AddedTokenRule(match, token_id, token.normalized, token.special and split_special))
    if pattern not in GAPLESS_PATTERNS:
        # Text the regex does not match stays one piece, as in HF's Isolated split (tiktoken drops it).
        pattern = f"(?:{pattern})|(?:(?!(?:{pattern}))[\\s\\S])+"
    return TiktokenParts(pattern, ranks, tuple(rules), nfc)


def _check_normalizer(config: dict[str, Any] | None) -> bool:
    """Whether the normaliser is NFC; raises for anything but NFC or none."""
    if config is None:
        return False
    if config["type"] == "Sequence":
        steps = [step["type"] for step in config["normalizers"]]
        if not steps:
            return False
        if steps == ["NFC"]:
            return True
    elif config["type"] == "NFC":
        return True
    raise UnsupportedTokenizer(f"normalizer {json.dumps(config)[:200]} is neither NFC nor absent")


def _check_pre_tokenizer(config: dict[str, Any] | None) -> str:
    """The split regex of a byte-level pre-tokenizer; raises for any other pre-tokenizer."""

    def byte_level(step: dict[str, Any], use_regex: bool) -> bool:
        return (
            step.get("type") == "ByteLevel"
            and not step.get("add_prefix_space", False)
            and bool(step.get("use_regex", True)) == use_regex
        )

    if config is not None and byte_level(config, use_regex=True):
        return GPT2_PATTERN
    if config is not None and config.get("type") == "Sequence":
        steps = config["pretokenizers"]
        if len(steps) == 1 and byte_level(steps[0], use_regex=True):
            return GPT2_PATTERN
        if (
            len(steps) == 2
            and steps[0].get("type") == "Split"
            and "Regex" in steps[0]["pattern"]
            and steps[0]["behavior"] == "Isolated"
            and not steps[0]["invert"]
            and byte_level(steps[1], use_regex=False)
        ):
            return steps[0]["pattern"]["Regex"]
    description = json.dumps(config)[:200] if config is not None else "none"
    raise UnsupportedTokenizer(f"pre-tokenizer {description} is not ByteLevel with one Split regex")


_RANKS_MEMO: dict[bytes, dict[bytes, int] | str] = {}


def _checked_ranks(model: Any) -> dict[bytes, int]:
    """tiktoken ranks of a BPE model whose merges tiktoken reproduces (see the module docstring).

    Memoised on the serialised model: tokenizers that differ only in added tokens share the check.
    """
    state = model.__getstate__()
    key = hashlib.sha256(state).digest()
    if key not in _RANKS_MEMO:
        if len(_RANKS_MEMO) >= 4:
            _RANKS_MEMO.clear()
        try:
            _RANKS_MEMO[key] = _ranks_from_model(json.loads(state), model)
        except UnsupportedTokenizer as error:
            _RANKS_MEMO[key] = str(error)
    verdict = _RANKS_MEMO[key]
    if isinstance(verdict, str):
        raise UnsupportedTokenizer(verdict)
    return verdict


def _ranks_from_model(config: dict[str, Any], model: Any) -> dict[bytes, int]:
    """Byte strings to ids for every vocab entry HF's BPE can produce; raises where tiktoken would differ."""
    if config.get("dropout") not in (None, 0.0):
        raise UnsupportedTokenizer("BPE dropout is set")
    if config.get("continuing_subword_prefix") or config.get("end_of_word_suffix"):
        raise UnsupportedTokenizer("BPE uses a subword prefix or end-of-word suffix")
    vocab: dict[str, int] = config["vocab"]
    if len(set(vocab.values())) != len(vocab):
        raise UnsupportedTokenizer("two vocab entries share an id")
    byte_level = {token: token_bytes for token in vocab if (token_bytes := _token_bytes(token))}
    merges = [
        tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ", 1)) for merge in config["merges"]
    ]
    _check_merge_order(vocab, merges)
    unreachable = _unreachable_tokens(config, merges, model, list(byte_level))
    if unreachable and config.get("ignore_merges"):
        example = next(iter(unreachable))
        raise UnsupportedTokenizer(
            f"{len(unreachable)} vocab entries (e.g. {example!r}) are not built by the merges, "
            "and with ignore_merges tiktoken could build them inside longer words"
        )
    # Without ignore_merges HF can never emit an entry its merges do not build; neither may tiktoken.
    ranks = {
        token_bytes: vocab[token] for token, token_bytes in byte_level.items() if token not in unreachable
    }
    if sum(len(token_bytes) == 1 for token_bytes in ranks) != 256:
        raise UnsupportedTokenizer("the vocab lacks some of the 256 byte-level characters")
    return ranks


def _check_merge_order(vocab: dict[str, int], merges: list[tuple[str, ...]]) -> None:
    """Merges must be ordered by the id of their result, and each result must outrank its parts."""
    previous = -1
    for left, right in merges:
        result = vocab.get(left + right)
        if result is None or left not in vocab or right not in vocab:
            raise UnsupportedTokenizer(f"merge {left!r} + {right!r} involves tokens outside the vocab")
        if result < previous or vocab[left] >= result or vocab[right] >= result:
            raise UnsupportedTokenizer(
                f"merge {left!r} + {right!r} is out of id order, so tiktoken would differ"
            )
        previous = result


def _unreachable_tokens(
    config: dict[str, Any], merges: list[tuple[str, ...]], model: Any, tokens: list[str]
) -> set[str]:
    """The ``tokens`` that HF's BPE, without the whole-word shortcut, does not rebuild from their bytes."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    if model.ignore_merges:
        model = BPE(vocab=config["vocab"], merges=merges, ignore_merges=False)
    # A few large pre-tokenized inputs: one Encoding each instead of one per token, still in parallel.
    size = max(1, -(-len(tokens) // (4 * _available_cpus())))
    chunks = [tokens[i : i + size] for i in range(0, len(tokens), size)]
    checker = Tokenizer(model)
    encodings = checker.encode_batch_fast(chunks, is_pretokenized=True, add_special_tokens=False)
    vocab = config["vocab"]
    unreachable = set()
    for chunk, encoding in zip(chunks, encodings):
        if encoding.ids != [vocab[token] for token in chunk]:  # rare: find the entries one by one
            singles = checker.encode_batch_fast([[token] for token in chunk], is_pretokenized=True)
            unreachable.update(token for token, single in zip(chunk, singles) if single.ids != [vocab[token]])
    return unreachable


def _raise_if_invalid_unicode(texts: Sequence[str]) -> None:
    """Raise a ``DataError`` for the first text that is not valid Unicode (a lone surrogate)."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise DataError(
                f"text is not valid Unicode: {error.reason} {text[error.start]!r} at character {error.start}"
            ) from None


def _flatten(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids as one ``int32`` array plus ``int64`` offsets."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return ids, offsets


# --------------------------------------------------------------------------------------------------
# Choosing a backend

_PROBE_TEXTS = (
    "Hello, world! I'm here; you're there. We'LL see, they'VE gone, IT'S fine, don't 'd 's 're",
    "数据处理和模型训练。你好，世界！こんにちは、世界。안녕하세요 세계 中文English混合",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧\u200d👦 flag 🇫🇷 keycap 1\ufe0f\u20e3 ❤\ufe0f\u200d🔥",
    "café cafe\u0301 Å A\u030a \u1100\u1161\u11a8 \u212b \u2126 \u037e \u212a ﬁ ｆｕｌｌ e\u0301\u0327",
    "  leading spaces\n\n\n  \t\ttabs\r\nwindows\r\n\r\n   trailing   ",
    "1234567890 3.14159 1,000,000 ٣٤٥ ১২৩ Ⅻ ²³ 2024-01-01T00:00:00Z",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != y && z >= 0: pass\n",
    "'ſ 'K 'ı 'İ ŉ 'S'T'RE",
    "\u00a0\u2003\u3000\u200b\ufeff\u0085\u2028 mixed  whitespace \u000b\u000c \u0000 \x7f",
    "",
)


def probe_texts(added_tokens: Sequence[str]) -> list[str]:
    """Texts that exercise every part of the tokenizer: scripts, emoji, NFC/NFD forms, whitespace,
    digits, code, contractions, and each added token inside text and next to letters and combining marks."""
    texts = list(_PROBE_TEXTS)
    texts += [unicodedata.normalize("NFD", text) for text in _PROBE_TEXTS]
    for token in added_tokens:
        texts += [
            token,
            f"a{token}b",
            f" {token} {token}{token}\n",
            f"e\u0301{token}\u0301x",
            f"数据{token}😀 {unicodedata.normalize('NFD', token)}",
        ]
    texts.append("".join(added_tokens) + " ".join(_PROBE_TEXTS))
    return texts


def load_backend(
    tokenizer: Any, kind: str | None = None, *, num_threads: int | None = None
) -> TokenizerBackend:
    """The backend to tokenize with: ``"hf"``, ``"fast"`` (tiktoken, or a ``ConfigError`` saying why not)
    or ``"auto"`` (tiktoken where it reproduces the tokenizer exactly, else HF).

    ``kind`` defaults to the ``FASTSFT_TOKENIZER`` environment variable, then ``"auto"``.
    """
    kind = kind or os.environ.get(ENV_VAR) or "auto"
    if kind not in KINDS:
        raise ConfigError(
            f"tokenizer backend {kind!r} is not one of {', '.join(KINDS)} (option or {ENV_VAR})"
        )
    if kind == "hf":
        logger.info("tokenizer backend: hf (requested)")
        return HFBackend(tokenizer)
    try:
        backend = _verified_tiktoken_backend(tokenizer, num_threads)
    except UnsupportedTokenizer as error:
        if kind == "fast":
            raise ConfigError(
                f"tokenizer backend 'fast' (tiktoken) cannot reproduce this tokenizer: {error}"
            ) from None
        logger.info("tokenizer backend: hf (tiktoken cannot be used: %s)", error)
        return HFBackend(tokenizer)
    logger.info(
        "tokenizer backend: tiktoken (%s; matches HF on the probe text)",
        "requested" if kind == "fast" else "auto",
    )
    return backend


def _verified_tiktoken_backend(tokenizer: Any, num_threads: int | None) -> TiktokenBackend:
    """A ``TiktokenBackend`` that gave HF's ids on every probe text."""
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        raise UnsupportedTokenizer("tiktoken is not installed (pip install 'fastsft[fast]')") from None
    backend = TiktokenBackend.from_tokenizer(tokenizer, num_threads=num_threads)
    texts = probe_texts([rule.match for rule in backend.parts.added_tokens])
    got = backend.encode_batch(texts)
    for text, ids in zip(texts, got):
        expected = tokenizer.encode(text, add_special_tokens=False)
        if ids != expected:
            raise UnsupportedTokenizer(f"tiktoken gives other ids than HF on the probe text {text[:60]!r}")
    return backend
