"""Tokenizer backends: the HF tokenizer itself, or an exact and much faster encoder of it: fastsft's
own byte-level BPE (``fastsft.tokenizer.bpe``) or fastokens.

The pipeline tokenizes every text segment on its own, exactly like
``tokenizer.encode(segment, add_special_tokens=False)``. That call dominates preprocessing time, so
for Qwen2- and Llama 3-style tokenizers ``ByteLevelBPEBackend`` encodes with fastsft's compiled
byte-level BPE (its tables built in milliseconds, recorded with a tokenizer snapshot), and for
other BPE tokenizers ``FastokensBackend`` hands the same ``tokenizer.json`` to fastokens (a Rust
BPE encoder for HF tokenizer files, multi-threaded, one flat id buffer per batch, 1.2-2 s to build).
Either is chosen only where it is known to be exact (for fastsft's BPE, the structure check is
``bpe.tokenizer_tables``; the self-check is the same):

* **Structure.** The tokenizer must be a Rust-backed HF tokenizer whose Python class does not change
  encoding, with a BPE model without dropout, and fastokens must accept every component of its
  ``tokenizer.json`` (it refuses what it does not implement: WordPiece, Unigram, unknown
  pre-tokenizers, ...). Truncation and padding are switched off, as ``encode`` does by default.
* **Self-check.** The backend must then give ``tokenizer.encode``'s ids on every probe text
  (``probe_texts``): many scripts, emoji sequences, composed and decomposed forms, case and
  compatibility characters for the normaliser, whitespace and CRLF runs, digits, code, contractions,
  and every added token alone, inside words, doubled, next to combining marks and whitespace (so
  ``lstrip``/``rstrip``/``normalized`` and ``split_special_tokens`` are exercised).

Anything else gets the HF tokenizer, with the reason logged; ``kind="bpe"`` or ``"fast"`` raises it
instead.

A ``TokenizerSnapshot`` (``fastsft preprocess``'s tokenizer) records each verdict, pass or fail with
the reason, with its Rust tokenizer's JSON (so every state sharing that JSON shares it), per
encoder version, ``split_special_tokens`` and probe texts; fastsft's BPE also keeps its tables in
a file beside that JSON, so a warm run builds it from the file (milliseconds). For fastokens, a warm
run replaying a pass verdict neither rebuilds the HF Rust tokenizer nor probes: it starts building
fastokens from the recorded ``tokenizer.json`` on a background thread and returns (``ready`` says
when the build is done; the first encode waits for it).

Building fastokens' encoder and probing it takes 1.5-2 s for a 128k-150k vocabulary (fastsft's BPE,
0.4-0.7 s the first time, from the JSON), as long as HF
takes for about 50 characters per vocabulary entry (6-7 M characters: a few thousand
conversations). So ``"auto"`` (``AutoBackend``) starts with fastokens only when the input is
expected to be at least that long, and otherwise encodes with HF until the text it has encoded
reaches that length, then switches: at most about twice as slow as the better choice, and on
most inputs as fast.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from fastsft.errors import ConfigError
from fastsft.tokenizer import KINDS
from fastsft.tokenizer.bpe import (
    BPE_FORMAT,
    ByteLevelBPEBackend,
    ByteLevelTables,
    NotByteLevelBPE,
    raise_if_invalid_unicode,
    tokenizer_tables,
)
from fastsft.tokenizer.snapshot import TokenizerSnapshot, encodes_through_rust
from fastsft.tokenizer.unicode_classes import TOKENIZERS_VERSION

__all__ = [
    "ENV_VAR",
    "KINDS",
    "AutoBackend",
    "ByteLevelBPEBackend",
    "FastokensBackend",
    "HFBackend",
    "PerStringBackend",
    "TokenizerBackend",
    "UnsupportedTokenizer",
    "load_backend",
    "probe_texts",
]

logger = logging.getLogger(__name__)

ENV_VAR = "FASTSFT_TOKENIZER"

# fastokens reads its encoder thread count from this variable when it first encodes in a process.
_THREADS_VAR = "FASTOKENS_BPE_THREADS"


class TokenizerBackend(Protocol):
    """Encodes text segments exactly like ``tokenizer.encode(text, add_special_tokens=False)``."""

    name: str

    @property
    def ready(self) -> bool:
        """Whether encoding starts without waiting for a build under way (``FastokensBackend.start_build``)."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        ...

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` and ``int64[len(texts) + 1]`` offsets (text ``i`` is ``ids[o[i]:o[i+1]]``)."""
        ...

    def single_threaded(self) -> TokenizerBackend:
        """The same backend encoding in the calling thread only (for worker processes)."""
        ...


class UnsupportedTokenizer(Exception):
    """The tokenizer cannot be reproduced by fastokens; the message says why."""


# --------------------------------------------------------------------------------------------------
# HF backend


class HFBackend:
    """The HF tokenizer itself: one batched call into its Rust backend (multi-threaded there)."""

    name = "hf"
    ready = True  # nothing to build

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._rust = tokenizer.backend_tokenizer if encodes_through_rust(tokenizer) else None

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
            raise_if_invalid_unicode(texts)
            raise
        return [encoding.ids for encoding in encodings]

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` plus ``int64[len(texts) + 1]`` offsets."""
        return _flatten(self.encode_batch(texts))

    def single_threaded(self) -> HFBackend:
        """Itself: HF's own threading follows ``TOKENIZERS_PARALLELISM``, which is left as it is."""
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (HFBackend, (self._tokenizer,))


class PerStringBackend:
    """``tokenizer.encode(text, add_special_tokens=False)`` once per text, as LLaMA-Factory calls it.

    The tokenizer implementation of the pure-Python encode path, which reproduces LLaMA-Factory's
    calls one for one rather than batching them.
    """

    name = "hf (per string)"
    ready = True  # nothing to build

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


# --------------------------------------------------------------------------------------------------
# fastokens backend


class FastokensBackend:
    """fastokens over the tokenizer's own ``tokenizer.json``, id-for-id equal to the HF tokenizer.

    Build it with ``FastokensBackend.from_tokenizer`` (checks the structure, not the probe) or
    ``load_backend`` (also runs the probe). The encoder is built on first use, or on a background
    thread from ``start_build`` (fastokens releases the GIL while it builds). Pickles as the JSON
    text, also mid-build, so a worker process can make it single-threaded before fastokens starts
    its threads.
    """

    name = "fastokens"

    def __init__(self, tokenizer_json: str, split_special_tokens: bool, single_thread: bool = False) -> None:
        self._json = tokenizer_json
        self._split_special_tokens = split_special_tokens
        self._single_thread = single_thread
        self._build = _EncoderBuild(tokenizer_json, single_thread)
        self._requested = False  # kind "fast": a failed build is the ConfigError load_backend raises
        self._requested_twin: FastokensBackend | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, tokenizer_json: str | None = None) -> FastokensBackend:
        """Build from a HF fast tokenizer; raises ``UnsupportedTokenizer`` with the reason when it cannot.

        ``tokenizer_json``: its ``backend_tokenizer.to_str()``, when the caller has it already.
        """
        rust = _rust_encoder(tokenizer)
        if type(rust.model).__name__ != "BPE":
            raise UnsupportedTokenizer(f"model is {type(rust.model).__name__}, not BPE")
        if rust.model.dropout not in (None, 0.0):
            raise UnsupportedTokenizer("BPE dropout is set")
        backend = cls(
            tokenizer_json or rust.to_str(), bool(getattr(tokenizer, "split_special_tokens", False))
        )
        backend._load()  # fastokens refuses components it does not implement
        return backend

    def start_build(self) -> FastokensBackend:
        """Start building the encoder on a background thread and return at once (itself); the first
        encode waits for the build and raises what building it in the calling thread would raise."""
        self._build.start()
        return self

    @property
    def ready(self) -> bool:
        """True once the encoder is built, or when no build is under way (the first encode builds it)."""
        return self._build.ready

    def _load(self) -> Any:
        """The fastokens tokenizer, built on first use (or waited for, when ``start_build`` started it)."""
        try:
            return self._build.encoder()
        except UnsupportedTokenizer as error:
            if self._requested:
                raise _refused_fast(error) from None
            raise

    def _as_requested(self) -> FastokensBackend:
        """This backend, sharing its build, for ``kind="fast"``: a failed build raises ``ConfigError``
        (one twin per backend, so that a verified backend is the same object every time)."""
        if self._requested_twin is None:
            twin = FastokensBackend.__new__(FastokensBackend)
            twin.__dict__.update(self.__dict__, _requested=True)
            twin._requested_twin = self._requested_twin = twin
        return self._requested_twin

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        ids, offsets = self.encode_batch_flat(texts)
        flat = ids.tolist()
        bounds = offsets.tolist()
        return [flat[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` plus ``int64[len(texts) + 1]`` offsets (read-only views, no copy)."""
        texts = list(texts)
        try:
            ids, offsets = self._load().encode_batch_flat(texts, False, self._split_special_tokens)
        except UnicodeEncodeError:
            raise_if_invalid_unicode(texts)
            raise
        # uint32 ids below 2**31 and uint64 offsets below 2**63 read the same as int32 / int64.
        return np.frombuffer(ids, dtype=np.int32), np.frombuffer(offsets, dtype=np.int64)

    def single_threaded(self) -> FastokensBackend:
        """The same encoder, using only the calling thread (it sets ``FASTOKENS_BPE_THREADS=1`` for the
        process, so call it in a worker process before anything there encodes)."""
        return FastokensBackend(self._json, self._split_special_tokens, single_thread=True)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FastokensBackend, (self._json, self._split_special_tokens, self._single_thread))


class _EncoderBuild:
    """One build of fastokens' encoder from a ``tokenizer.json`` text, in the calling thread or on a
    background one; backends sharing it wait for the same build. A failure is kept and raised to
    every caller."""

    def __init__(self, tokenizer_json: str, single_thread: bool) -> None:
        self._json = tokenizer_json
        self._single_thread = single_thread
        self._encoder: Any = None
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Build on a background thread, unless built or started already."""
        with self._lock:
            if self._encoder is None and self._error is None and self._thread is None:
                # Not a daemon: the interpreter waits for it at exit. A daemon thread still inside
                # fastokens when the interpreter finalizes is ended mid-Rust, and the process aborts
                # ("FATAL: exception not rethrown") instead of exiting with its own status.
                self._thread = threading.Thread(target=self._run, name="fastokens-build", daemon=False)
                self._thread.start()

    @property
    def ready(self) -> bool:
        thread = self._thread
        return thread is None or not thread.is_alive()

    def encoder(self) -> Any:
        """The encoder: waits for a background build, else builds it here."""
        thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            if self._encoder is None and self._error is None:
                self._run()
        if self._error is not None:
            raise self._error
        return self._encoder

    def _run(self) -> None:
        try:
            self._encoder = _fastokens_encoder(self._json, self._single_thread)
        except Exception as error:  # raised to the caller of encoder(), in whichever thread built it
            self._error = error


def _fastokens_encoder(tokenizer_json: str, single_thread: bool) -> Any:
    """fastokens' tokenizer for the JSON text, without truncation or padding."""
    try:
        import fastokens
    except ImportError:
        raise UnsupportedTokenizer("fastokens is not installed (pip install fastokens)") from None
    if single_thread:
        os.environ[_THREADS_VAR] = "1"
    try:
        encoder = fastokens.Tokenizer.from_json_str(tokenizer_json)
    except ValueError as error:
        raise UnsupportedTokenizer(f"fastokens cannot load it: {error}") from None
    encoder.no_truncation()
    encoder.no_padding()
    return encoder


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
    "UPPER lower MiXeD ǅ ß ẞ İ ı Σσς ΌΣΟΣ ＡＢＣ ① ㎏ ½ Ⅻ ＿",
    "  leading spaces\n\n\n  \t\ttabs\r\nwindows\r\n\r\n   trailing   ",
    "\r\r\n\n\r \r\n\t\r\n  \n \n\n\t\t\t    \u00a0\u00a0 x \u3000\u3000y",
    "1234567890 3.14159 1,000,000 ٣٤٥ ১২৩ Ⅻ ²³ 2024-01-01T00:00:00Z 00000000000000000",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != y && z >= 0: pass\n",
    "'ſ 'K 'ı 'İ ŉ 'S'T'RE",
    "\u00a0\u2003\u3000\u200b\ufeff\u0085\u2028 mixed  whitespace \u000b\u000c \u0000 \x7f \u200d\u200c\u2060",
    "Привет мир مرحبا नमस्ते ภาษาไทย Ελληνικά עברית ትግርኛ 🧑🏿\u200d🦰 👩🏻\u200d❤\ufe0f\u200d💋\u200d👨🏾",
    "",
)


def probe_texts(added_tokens: Sequence[str]) -> list[str]:
    """Texts that exercise every part of the tokenizer: scripts, emoji, NFC/NFD forms, case and
    compatibility characters, whitespace and CRLF runs, digits, code, contractions, and each added
    token alone, inside text, doubled, next to letters, whitespace and combining marks."""
    texts = list(_PROBE_TEXTS)
    texts += [unicodedata.normalize("NFD", text) for text in _PROBE_TEXTS]
    for token in added_tokens:
        texts += [
            token,
            f"a{token}b",
            f" {token} {token}{token}\n",
            f"\t  {token}  \r\n{token}\n\nx",
            f"e\u0301{token}\u0301x",
            f"数据{token}😀 {unicodedata.normalize('NFD', token)} {token.upper()}",
        ]
    texts.append("".join(added_tokens) + " ".join(_PROBE_TEXTS))
    return texts


def load_backend(tokenizer: Any, kind: str | None = None, *, expected_chars: int = 0) -> TokenizerBackend:
    """The backend to tokenize with: ``"hf"``, ``"bpe"`` (fastsft's byte-level BPE), ``"fast"``
    (fastokens), each of the last two or a ``ConfigError`` saying why not, or ``"auto"``
    (``AutoBackend``: the first of fastsft's BPE and fastokens that reproduces the tokenizer exactly,
    where the text is long enough to pay for building it, else HF).

    ``kind`` defaults to the ``FASTSFT_TOKENIZER`` environment variable, then ``"auto"``;
    ``expected_chars`` is how much text the caller expects to encode (0: unknown). For a replayed
    ``TokenizerSnapshot`` whose JSON has a recorded pass verdict, fastokens is built on a
    background thread and this returns at once (the backend's ``ready`` says when it is built).
    """
    kind = kind or os.environ.get(ENV_VAR) or "auto"
    if kind not in KINDS:
        raise ConfigError(
            f"tokenizer backend {kind!r} is not one of {', '.join(KINDS)} (option or {ENV_VAR})"
        )
    if kind == "hf":
        logger.info("tokenizer backend: hf (requested)")
        return HFBackend(tokenizer)
    if kind == "auto":
        return AutoBackend(tokenizer, expected_chars)
    if kind == "bpe":
        try:
            bpe = _verified_bpe_backend(tokenizer)
        except UnsupportedTokenizer as error:
            raise ConfigError(
                f"tokenizer backend 'bpe' (fastsft's byte-level BPE) cannot reproduce this tokenizer: {error}"
            ) from None
        logger.info("tokenizer backend: fastsft-bpe (requested; matches HF on the probe texts)")
        return bpe
    try:
        backend = _verified_fastokens_backend(tokenizer)
    except UnsupportedTokenizer as error:
        raise _refused_fast(error) from None
    logger.info("tokenizer backend: fastokens (requested; matches HF on the probe texts)")
    return backend._as_requested()


def _refused_fast(error: UnsupportedTokenizer) -> ConfigError:
    return ConfigError(f"tokenizer backend 'fast' (fastokens) cannot reproduce this tokenizer: {error}")


# fastokens pays for its build once the text encoded reaches this many characters per vocabulary
# entry (measured on the 2-core VM: build + probe 1.4 s for Qwen2, 1.9 s for Llama 3; HF encodes
# 3.8-5 M characters a second there, fastokens about ten times that).
BREAK_EVEN_CHARS_PER_TOKEN = 50


# Past this many characters of input per vocabulary entry (150 M for Qwen2), fastokens' faster
# encoding repays its build, done on a thread while fastsft's BPE encodes: on the 2-core VM the
# BPE's command reaches 11.7 M text tokens/s in the steady state of 100,000 conversations (16.6 M/s
# alone), fastokens 20.6 M/s (37.6 M/s alone), and fastokens' build takes one core for 1.2-2 s.
TAKEOVER_CHARS_PER_TOKEN = 1000


class _Takeover:
    """fastokens verified and built on a background thread, to take over from fastsft's BPE once
    ready (``backend`` stays ``None`` if it cannot: the BPE goes on, exact either way)."""

    def __init__(self, tokenizer: Any) -> None:
        self.backend: FastokensBackend | None = None
        # Not a daemon: the interpreter waits for it rather than ending it inside Rust.
        self._thread = threading.Thread(target=self._run, args=(tokenizer,), name="fastokens-takeover")
        self._thread.start()

    def _run(self, tokenizer: Any) -> None:
        try:
            backend = _verified_fastokens_backend(tokenizer)
            backend._load()
        except UnsupportedTokenizer as error:
            logger.info("tokenizer backend: fastokens will not take over (%s)", error)
            return
        self.backend = backend

    @property
    def ready(self) -> bool:
        return not self._thread.is_alive()


class AutoBackend:
    """HF until the text encoded (or expected) pays for building an exact compiled encoder, then that
    encoder: fastsft's byte-level BPE, else fastokens; for a large input (``TAKEOVER_CHARS_PER_TOKEN``)
    fastsft's BPE until fastokens, built meanwhile on a thread, takes over.

    Ski rental: with ``expected_chars`` below the break-even point, batches go to HF until their
    text reaches it, and the batches after that to fastokens (once built, when it builds in the
    background). ``name`` says what encoded: ``"hf"``, ``"fastokens"`` or ``"hf, then fastokens"``.
    Both give the same ids (fastokens only after passing the probe), so switching between batches
    changes nothing but speed. The HF backend is made only when a batch goes to it.
    """

    def __init__(self, tokenizer: Any, expected_chars: int = 0) -> None:
        self._tokenizer = tokenizer
        self._break_even = BREAK_EVEN_CHARS_PER_TOKEN * len(tokenizer)
        self._takeover_at = TAKEOVER_CHARS_PER_TOKEN * len(tokenizer)
        self._expected = expected_chars
        self._seen = 0  # characters encoded so far
        self._takeover: _Takeover | None = None
        self._takeover_started = False
        self._hf: HFBackend | None = None
        # fastsft's BPE or fastokens, verified; a fastokens build may still be under way
        self._fast: ByteLevelBPEBackend | FastokensBackend | None = None
        self._chars = 0
        self._decided = False
        self._used: list[str] = []
        if expected_chars >= self._break_even:
            self._decide()

    @property
    def name(self) -> str:
        return ", then ".join(self._used) or self._current_name()

    @property
    def ready(self) -> bool:
        """Whether the backend the next batch goes to is built (HF always is)."""
        return self._fast.ready if self._fast is not None and self._uses_fast() else True

    def _uses_fast(self) -> bool:
        """fastokens takes the next batch: chosen from the start, or built by the time HF has been used."""
        return self._fast is not None and (self._hf is None or self._fast.ready)

    def _current_name(self) -> str:
        return self._fast.name if self._fast is not None and self._uses_fast() else HFBackend.name

    def _next_backend(self) -> TokenizerBackend:
        """The backend the next batch goes to (HF made now if it is that one)."""
        if self._takeover is not None and self._takeover.ready:
            if self._takeover.backend is not None:
                logger.info("tokenizer backend: fastokens takes over from fastsft-bpe (large input)")
                self._fast = self._takeover.backend
            self._takeover = None
        if self._fast is not None and self._uses_fast():
            return self._fast
        return self._hf_backend()

    def _hf_backend(self) -> HFBackend:
        if self._hf is None:
            self._hf = HFBackend(self._tokenizer)
        return self._hf

    def _decide(self) -> None:
        """Switch to fastsft's BPE or else fastokens, the first that reproduces the tokenizer; else
        stay on HF for good."""
        self._decided = True
        try:
            self._fast = _verified_bpe_backend(self._tokenizer)
        except UnsupportedTokenizer as error:
            logger.info("tokenizer backend: fastsft-bpe cannot be used: %s", error)
        else:
            logger.info("tokenizer backend: fastsft-bpe (auto; matches HF on the probe texts)")
            return
        try:
            self._fast = _verified_fastokens_backend(self._tokenizer)
        except UnsupportedTokenizer as error:
            logger.info("tokenizer backend: hf (fastokens cannot be used: %s)", error)
            return
        logger.info("tokenizer backend: fastokens (auto; matches HF on the probe texts)")

    def _start_takeover(self) -> None:
        """Start building fastokens on a thread, once, when fastsft's BPE encodes a large input."""
        large = max(self._expected, self._seen) >= self._takeover_at
        if large and not self._takeover_started and isinstance(self._fast, ByteLevelBPEBackend):
            self._takeover_started = True
            self._takeover = _Takeover(self._tokenizer)

    def _encode(self, texts: list[str], flat: bool) -> Any:
        """Encode the batch with the current backend; counts its text towards the break-even point."""
        chars = sum(map(len, texts))
        self._seen += chars
        if not self._decided:
            self._chars += chars
        self._start_takeover()
        backend = self._next_backend()
        try:
            result = backend.encode_batch_flat(texts) if flat else backend.encode_batch(texts)
        except UnsupportedTokenizer as error:  # only a fastokens build that failed (in the background)
            logger.info("tokenizer backend: hf (fastokens cannot be used: %s)", error)
            self._fast = None
            backend = self._hf_backend()
            result = backend.encode_batch_flat(texts) if flat else backend.encode_batch(texts)
        if not self._used or self._used[-1] != backend.name:
            self._used.append(backend.name)
        if not self._decided and self._chars >= self._break_even:
            self._decide()
        return result

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        return self._encode(list(texts), flat=False)

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` plus ``int64[len(texts) + 1]`` offsets."""
        return self._encode(list(texts), flat=True)

    def single_threaded(self) -> TokenizerBackend:
        """The backend it uses now, single-threaded, for worker processes (which do not switch)."""
        return self._next_backend().single_threaded()


_Backend = TypeVar("_Backend", "FastokensBackend", ByteLevelBPEBackend)

# Verified backends by what decides their ids (tokenizer class, tokenizer.json, split_special_tokens):
# building and probing one takes about a second, and a process often encodes with one tokenizer many
# times (train and eval, benchmarks, several builds). A failure is remembered as well.
_VERIFIED: dict[tuple[Any, ...], Any] = {}
_VERIFIED_MAX = 4


def _verified_fastokens_backend(tokenizer: Any) -> FastokensBackend:
    """A ``FastokensBackend`` that gave HF's ids on every probe text (built once per tokenizer state).

    A ``TokenizerSnapshot`` records the verdict with its JSON; replayed with a pass verdict, the
    backend is built from the recorded JSON on a background thread, with neither the Rust tokenizer
    nor the probe."""
    if isinstance(tokenizer, TokenizerSnapshot):
        return _snapshot_fastokens_backend(tokenizer)
    return _verified_by_probe(tokenizer)


def _remembered(key: tuple[Any, ...], make: Callable[[], _Backend]) -> _Backend:
    """``_VERIFIED[key]``, made by ``make`` (a failure remembered too) when it is not there."""
    if key not in _VERIFIED:
        try:
            _VERIFIED[key] = make()
        except UnsupportedTokenizer as error:
            _VERIFIED[key] = error
        while len(_VERIFIED) > _VERIFIED_MAX:
            del _VERIFIED[next(iter(_VERIFIED))]
    result = _VERIFIED[key]
    if isinstance(result, UnsupportedTokenizer):
        raise result
    return cast(_Backend, result)


def _snapshot_fastokens_backend(snapshot: TokenizerSnapshot) -> FastokensBackend:
    """The verified backend of a snapshot's state: probed once and the verdict recorded, then built
    straight from the recorded JSON (in the background) while the verdict is a pass."""
    split_special_tokens = bool(getattr(snapshot, "split_special_tokens", False))
    verdict_name = _verdict_name(split_special_tokens)
    if verdict_name is None:  # fastokens cannot be imported: say so, and record nothing
        return _verified_by_probe(snapshot)
    probed = _recorded_verdict(snapshot, verdict_name, lambda: _verified_by_probe(snapshot))
    if probed is not None:
        return probed
    tokenizer_json = snapshot.recorded_backend_json()
    if tokenizer_json is None:  # live, or its JSON file is missing or damaged: as a real tokenizer
        return _verified_by_probe(snapshot)
    key = (TokenizerSnapshot, tokenizer_json, split_special_tokens)
    return _remembered(key, lambda: FastokensBackend(tokenizer_json, split_special_tokens).start_build())


def _verified_by_probe(tokenizer: Any) -> FastokensBackend:
    """The backend verified by building and probing it (once per tokenizer state in this process)."""
    rust = getattr(tokenizer, "backend_tokenizer", None)
    tokenizer_json = rust.to_str() if rust is not None else ""  # 0.1 s for a 150k vocabulary
    key = (type(tokenizer), tokenizer_json, bool(getattr(tokenizer, "split_special_tokens", False)))
    return _remembered(key, lambda: _probe_fastokens_backend(tokenizer, tokenizer_json))


def _verdict_name(split_special_tokens: bool) -> str | None:
    """The name a fastokens verdict is recorded under: it holds for this fastokens version, this
    ``split_special_tokens`` and these probe texts only. ``None`` when fastokens cannot be imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import fastokens  # noqa: F401  (a failed import is no verdict on the tokenizer)

        fastokens_version = version("fastokens")
    except (ImportError, PackageNotFoundError):
        return None
    return (
        f"fastokens verdict {fastokens_version} split_special_tokens={split_special_tokens} "
        f"probes {_probes_digest()}"
    )


def _probe_fastokens_backend(tokenizer: Any, tokenizer_json: str) -> FastokensBackend:
    return _probed(FastokensBackend.from_tokenizer(tokenizer, tokenizer_json), tokenizer)


def _rust_encoder(tokenizer: Any) -> Any:
    """The tokenizer's Rust tokenizer, when ``encode`` is that tokenizer's (else ``UnsupportedTokenizer``)."""
    rust = getattr(tokenizer, "backend_tokenizer", None)
    if rust is None:
        raise UnsupportedTokenizer("not a fast (Rust-backed) tokenizer")
    if not encodes_through_rust(tokenizer):
        raise UnsupportedTokenizer(f"{type(tokenizer).__name__} changes encoding in Python")
    return rust


def _probed(backend: _Backend, tokenizer: Any) -> _Backend:
    """``backend`` once it gives ``tokenizer.encode``'s ids on every probe text (else ``UnsupportedTokenizer``)."""
    added = [token.content for token in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()]
    texts = probe_texts(added)
    for text, ids in zip(texts, backend.encode_batch(texts)):
        if ids != tokenizer.encode(text, add_special_tokens=False):
            raise UnsupportedTokenizer(
                f"{backend.name} gives other ids than HF on the probe text {text[:60]!r}"
            )
    return backend


def _probes_digest() -> str:
    """What names the probe texts in a recorded verdict: a verdict holds for these probes only."""
    return hashlib.sha256("\0".join(probe_texts(["<t>"])).encode("utf-8")).hexdigest()[:16]


def _recorded_verdict(
    snapshot: TokenizerSnapshot, name: str, verify: Callable[[], _Backend]
) -> _Backend | None:
    """``verify()`` the first time, its verdict (pass, or fail with the reason) recorded as ``name``
    with the snapshot's Rust JSON: what it returned when it ran now, ``None`` when a recorded pass
    is replayed (the caller builds the backend without probing); ``UnsupportedTokenizer`` for a
    failure, new or recorded."""
    verified: list[_Backend] = []

    def probe() -> dict[str, Any]:
        try:
            verified.append(verify())
        except UnsupportedTokenizer as error:
            return {"exact": False, "reason": str(error)}
        return {"exact": True, "reason": None}

    verdict = snapshot.recorded_for_backend(name, probe)
    if verified:
        return verified[0]
    if not verdict["exact"]:
        raise UnsupportedTokenizer(f"{verdict['reason']} (recorded with the tokenizer snapshot)")
    return None


# --------------------------------------------------------------------------------------------------
# fastsft's byte-level BPE: verified like fastokens; its tables kept with a tokenizer snapshot

_TABLES_FILE = f"bpe-tables-{BPE_FORMAT}"


def _bpe_verdict_name(split_special_tokens: bool) -> str:
    """The name a fastsft-bpe verdict is recorded under: it holds for this encoder's format, its
    character classes, this ``split_special_tokens`` and these probe texts only."""
    return (
        f"fastsft-bpe verdict {BPE_FORMAT} classes {TOKENIZERS_VERSION} "
        f"split_special_tokens={split_special_tokens} probes {_probes_digest()}"
    )


def _verified_bpe_backend(tokenizer: Any) -> ByteLevelBPEBackend:
    """A ``ByteLevelBPEBackend`` that gave HF's ids on every probe text (once per tokenizer state).

    For a ``TokenizerSnapshot`` the verdict is recorded with its Rust JSON and the tables kept in a
    file beside it: replayed with a pass verdict, the backend is built from that file, without the
    Rust tokenizer, the JSON or the probe."""
    split_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    if not isinstance(tokenizer, TokenizerSnapshot) or tokenizer.backend_digest() is None:
        return _bpe_by_probe(tokenizer, split_special_tokens)
    snapshot = tokenizer
    name = _bpe_verdict_name(split_special_tokens)
    probed = _recorded_verdict(snapshot, name, lambda: _bpe_by_probe(snapshot, split_special_tokens))
    if probed is not None:
        return probed
    key = ("bpe", TokenizerSnapshot, snapshot.backend_digest(), split_special_tokens)
    return _remembered(key, lambda: _snapshot_bpe_tables_backend(snapshot, split_special_tokens))


def _snapshot_bpe_tables_backend(
    snapshot: TokenizerSnapshot, split_special_tokens: bool
) -> ByteLevelBPEBackend:
    """The backend of a snapshot whose verdict is a pass, from the tables kept with it (probed again
    when they cannot be read, as for a real tokenizer)."""
    try:
        return ByteLevelBPEBackend(_bpe_tables(snapshot, None, split_special_tokens))
    except (ValueError, NotByteLevelBPE):
        return _probe_bpe_backend(snapshot, split_special_tokens)


def _bpe_tables(tokenizer: Any, tokenizer_json: str | None, split_special_tokens: bool) -> ByteLevelTables:
    """The encoder's tables: read from (or kept in) a snapshot's record, else from the JSON.
    ``NotByteLevelBPE`` when the tokenizer is not one it reproduces; ``ValueError`` when a
    snapshot's tables cannot be read or made."""

    def make() -> bytes:
        text = tokenizer_json or tokenizer.recorded_backend_json()
        if text is None:
            raise ValueError("the snapshot's tokenizer JSON is missing")
        return tokenizer_tables(text, split_special_tokens).to_bytes()

    if isinstance(tokenizer, TokenizerSnapshot):
        name = f"{_TABLES_FILE}-{int(split_special_tokens)}.npz"
        return ByteLevelTables.from_bytes(tokenizer.recorded_backend_file(name, make))
    return tokenizer_tables(tokenizer_json or "", split_special_tokens)


def _bpe_by_probe(tokenizer: Any, split_special_tokens: bool) -> ByteLevelBPEBackend:
    """The backend verified by building and probing it (once per tokenizer state in this process)."""
    rust = getattr(tokenizer, "backend_tokenizer", None)
    tokenizer_json = rust.to_str() if rust is not None else ""
    key = ("bpe", type(tokenizer), tokenizer_json, split_special_tokens)
    return _remembered(key, lambda: _probe_bpe_backend(tokenizer, split_special_tokens, tokenizer_json))


def _probe_bpe_backend(
    tokenizer: Any, split_special_tokens: bool, tokenizer_json: str | None = None
) -> ByteLevelBPEBackend:
    rust = _rust_encoder(tokenizer)
    try:
        tables = _bpe_tables(tokenizer, tokenizer_json or rust.to_str(), split_special_tokens)
    except (NotByteLevelBPE, ValueError) as error:
        raise UnsupportedTokenizer(f"fastsft-bpe does not reproduce it: {error}") from None
    return _probed(ByteLevelBPEBackend(tables), tokenizer)
