"""Tokenizer backends: the encoder a run tokenizes with, chosen once before the first batch.

The pipeline tokenizes every text segment on its own, exactly like
``tokenizer.encode(segment, add_special_tokens=False)``. That call dominates preprocessing time, so
the compiled path hands the tokenizer's own ``tokenizer.json`` to fastokens (a Rust BPE encoder for
HF tokenizer files, multi-threaded, one flat id buffer per batch) wherever fastokens is known to
reproduce it exactly, and otherwise uses the HF tokenizer's batched Rust call:

* **Structure.** The tokenizer must be a Rust-backed HF tokenizer whose Python class does not change
  encoding, with a BPE model without dropout, and fastokens must accept every component of its
  ``tokenizer.json`` (it refuses what it does not implement: WordPiece, Unigram, unknown
  pre-tokenizers, ...). Truncation and padding are switched off, as ``encode`` does by default.
* **Self-check.** fastokens must then give ``tokenizer.encode``'s ids on every probe text
  (``probe_texts``): many scripts, emoji sequences, composed and decomposed forms, case and
  compatibility characters for the normaliser, whitespace and CRLF runs, digits, code, contractions,
  and every added token alone, inside words, doubled, next to combining marks and whitespace (so
  ``lstrip``/``rstrip``/``normalized`` and ``split_special_tokens`` are exercised).

``"auto"`` takes fastokens when both hold and HF otherwise, with the reason logged; ``"fast"``
raises the reason instead; ``"hf"`` never tries. The choice is made before the first batch and
kept for the run (docs/benchmarks.md, "Encoder choice", measures fastokens with its build against
the alternatives).

A ``TokenizerSnapshot`` (``fastsft preprocess``'s tokenizer) records the verdict, pass or fail with
the reason, with its Rust tokenizer's JSON, per fastokens version, ``split_special_tokens`` and
probe texts. A warm run replaying a pass verdict neither rebuilds the HF Rust tokenizer nor probes:
fastokens is built from the recorded ``tokenizer.json`` on a background thread while the pipeline
reads and renders the first batches (``ready`` says when the build is done; the first encode waits
for it).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import unicodedata
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fastsft.errors import ConfigError, DataError
from fastsft.tokenizer import KINDS
from fastsft.tokenizer.snapshot import TokenizerSnapshot, encodes_through_rust

__all__ = [
    "ENV_VAR",
    "KINDS",
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

    @property
    def name(self) -> str:
        """What encodes: ``"hf"``, ``"hf (per string)"`` or ``"fastokens"``."""
        ...

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


def raise_if_invalid_unicode(texts: Sequence[str]) -> None:
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
# HF backends


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

    Build it with ``load_backend`` (checks the structure and runs the probe). The encoder is built on
    first use, or on a background thread from ``start_build`` (fastokens releases the GIL while it
    builds). A build that fails raises ``UnsupportedTokenizer``, or, once ``load_backend`` chose it
    (``chosen``: the kind asked for), the one-line ``ConfigError`` saying why. Pickles as the
    JSON text, also mid-build, so a worker process can make it single-threaded before fastokens
    starts its threads.
    """

    name = "fastokens"

    def __init__(
        self,
        tokenizer_json: str,
        split_special_tokens: bool,
        single_thread: bool = False,
        chosen: str | None = None,
    ) -> None:
        self._json = tokenizer_json
        self._split_special_tokens = split_special_tokens
        self._single_thread = single_thread
        self.chosen = chosen
        self._encoder: Any = None
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start_build(self) -> FastokensBackend:
        """Start building the encoder on a background thread and return at once (itself); the first
        encode waits for the build and raises what building it in the calling thread would raise."""
        with self._lock:
            if self._encoder is None and self._error is None and self._thread is None:
                # Not a daemon: the interpreter waits for it at exit. A daemon thread still inside
                # fastokens when the interpreter finalizes is ended mid-Rust, and the process aborts
                # ("FATAL: exception not rethrown") instead of exiting with its own status.
                self._thread = threading.Thread(target=self._build, name="fastokens-build", daemon=False)
                self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        """True once the encoder is built, or when no build is under way (the first encode builds it)."""
        thread = self._thread
        return thread is None or not thread.is_alive()

    def _build(self) -> None:
        try:
            self._encoder = _fastokens_encoder(self._json, self._single_thread)
        except Exception as error:  # raised to the caller of _load(), in whichever thread built it
            self._error = error

    def _load(self) -> Any:
        """The fastokens tokenizer: waits for a background build, else builds it here."""
        thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            if self._encoder is None and self._error is None:
                self._build()
        if isinstance(self._error, UnsupportedTokenizer) and self.chosen is not None:
            raise _refused(self.chosen, self._error) from None
        if self._error is not None:
            raise self._error
        return self._encoder

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
        return FastokensBackend(self._json, self._split_special_tokens, True, self.chosen)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FastokensBackend, (self._json, self._split_special_tokens, self._single_thread, self.chosen))


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


# --------------------------------------------------------------------------------------------------
# Verifying fastokens

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


def _probe_fastokens_backend(tokenizer: Any) -> FastokensBackend:
    """fastokens built from ``tokenizer``'s JSON once it gives ``tokenizer.encode``'s ids on every probe
    text; ``UnsupportedTokenizer`` naming the first thing that differs."""
    rust = getattr(tokenizer, "backend_tokenizer", None)
    if rust is None:
        raise UnsupportedTokenizer("not a fast (Rust-backed) tokenizer")
    if not encodes_through_rust(tokenizer):
        raise UnsupportedTokenizer(f"{type(tokenizer).__name__} changes encoding in Python")
    if type(rust.model).__name__ != "BPE":
        raise UnsupportedTokenizer(f"model is {type(rust.model).__name__}, not BPE")
    if rust.model.dropout not in (None, 0.0):
        raise UnsupportedTokenizer("BPE dropout is set")
    backend = FastokensBackend(rust.to_str(), bool(getattr(tokenizer, "split_special_tokens", False)))
    added = [token.content for token in rust.get_added_tokens_decoder().values()]
    texts = probe_texts(added)
    for text, ids in zip(texts, backend.encode_batch(texts)):  # the first encode builds it
        if ids != tokenizer.encode(text, add_special_tokens=False):
            raise UnsupportedTokenizer(
                f"{backend.name} gives other ids than HF on the probe text {text[:60]!r}"
            )
    return backend


def _verdict_name(split_special_tokens: bool) -> str | None:
    """The name a fastokens verdict is recorded under: it holds for this fastokens version, this
    ``split_special_tokens`` and these probe texts only. ``None`` when fastokens cannot be imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import fastokens  # noqa: F401  (a failed import is no verdict on the tokenizer)

        fastokens_version = version("fastokens")
    except (ImportError, PackageNotFoundError):
        return None
    probes = hashlib.sha256("\0".join(probe_texts(["<t>"])).encode("utf-8")).hexdigest()[:16]
    return (
        f"fastokens verdict {fastokens_version} split_special_tokens={split_special_tokens} probes {probes}"
    )


def _verified_fastokens_backend(tokenizer: Any) -> FastokensBackend:
    """A ``FastokensBackend`` that gave HF's ids on every probe text, else ``UnsupportedTokenizer``.

    A ``TokenizerSnapshot`` records the verdict with its Rust JSON; replayed with a pass verdict, the
    backend is built from the recorded JSON on a background thread, with neither the Rust tokenizer
    nor the probe."""
    if not isinstance(tokenizer, TokenizerSnapshot):
        return _probe_fastokens_backend(tokenizer)
    split_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    name = _verdict_name(split_special_tokens)
    if name is None:  # fastokens cannot be imported: say so, and record nothing
        return _probe_fastokens_backend(tokenizer)
    probed: list[FastokensBackend] = []

    def probe() -> dict[str, Any]:
        try:
            probed.append(_probe_fastokens_backend(tokenizer))
        except UnsupportedTokenizer as error:
            return {"exact": False, "reason": str(error)}
        return {"exact": True, "reason": None}

    verdict = tokenizer.recorded_for_backend(name, probe)
    if probed:
        return probed[0]
    if not verdict["exact"]:
        raise UnsupportedTokenizer(f"{verdict['reason']} (recorded with the tokenizer snapshot)")
    tokenizer_json = tokenizer.recorded_backend_json()
    if tokenizer_json is None:  # live, or its JSON file is missing or damaged: as a real tokenizer
        return _probe_fastokens_backend(tokenizer)
    return FastokensBackend(tokenizer_json, split_special_tokens).start_build()


# --------------------------------------------------------------------------------------------------
# Choosing a backend


def load_backend(tokenizer: Any, kind: str | None = None) -> TokenizerBackend:
    """The backend to tokenize with, chosen now and kept: ``"hf"``; ``"fast"`` (fastokens, or a
    ``ConfigError`` saying why not); ``"auto"``: fastokens where it reproduces the tokenizer exactly,
    else HF.

    ``kind`` defaults to the ``FASTSFT_TOKENIZER`` environment variable, then ``"auto"``. For a
    replayed ``TokenizerSnapshot`` whose JSON has a recorded pass verdict, fastokens is built on a
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
    try:
        backend = _verified_fastokens_backend(tokenizer)
    except UnsupportedTokenizer as error:
        if kind == "fast":
            raise _refused(kind, error) from None
        logger.info("tokenizer backend: hf (fastokens cannot be used: %s)", error)
        return HFBackend(tokenizer)
    logger.info("tokenizer backend: fastokens (%s; matches HF on the probe texts)", kind)
    backend.chosen = kind
    return backend


def _refused(kind: str, error: UnsupportedTokenizer) -> ConfigError:
    return ConfigError(f"tokenizer backend {kind!r} (fastokens) cannot reproduce this tokenizer: {error}")
