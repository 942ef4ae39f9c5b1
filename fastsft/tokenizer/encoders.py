"""Text encoders: exact implementations of ``tokenizer.encode(text, add_special_tokens=False)``, and
the one a run uses, chosen before its first batch and kept (``choose_encoder``): the tokenizer's
own (``hf``: ``RustEncoder``, ``PythonEncoder``), fastsft's byte-level BPE (``bpe``: ``BPEEncoder``)
or fastokens (``fast``: ``FastokensEncoder``).

``bpe`` and ``fast`` are used only after giving the Rust tokenizer's ids on every probe text
(``probe_texts``); the verdict, pass or fail with the reason, is kept beside the spec's
``tokenizer.json``, per encoder, fastsft and tokenizers version, ``split_special_tokens`` and probe texts.
``auto`` chooses by input size, as ``docs/benchmarks.md`` ("Encoder choice") measured (``choose_encoder``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import unicodedata
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from fastsft.cores import available_cores
from fastsft.errors import ConfigError, DataError
from fastsft.tokenizer import KINDS
from fastsft.tokenizer.bpe import (
    BPE_FORMAT,
    ByteLevelTables,
    NotByteLevelBPE,
    char_classes,
    nfc_sensitive,
    tokenizer_tables,
)
from fastsft.tokenizer.cache import read_checked, read_checked_bytes, write_checked, write_checked_bytes
from fastsft.tokenizer.spec import TokenizerSpec, json_derived
from fastsft.tokenizer.unicode_classes import TOKENIZERS_VERSION

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ENV_VAR",
    "BPEEncoder",
    "FastokensEncoder",
    "PythonEncoder",
    "RustEncoder",
    "TextEncoder",
    "choose_encoder",
    "encoder_for",
    "invalid_unicode",
    "probe_texts",
]

logger = logging.getLogger(__name__)

ENV_VAR = "FASTSFT_TOKENIZER"

# From this many characters of input per vocabulary entry, fastokens with its build is faster than
# the BPE (docs/benchmarks.md, "Encoder choice").
FASTOKENS_CHARS_PER_TOKEN = 1000

# Where the BPE cannot be used, fastokens pays for its build from this many characters per
# vocabulary entry (HF encodes 4-5 M characters a second on the 2-core VM, fastokens about ten times that).
BREAK_EVEN_CHARS_PER_TOKEN = 50


def invalid_unicode(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (a lone surrogate, which JSON's ``\\ud800`` escape
    gives and no tokenizer encodes: the character, its position and the cause), or ``None``."""
    if text.isascii():  # O(1) in CPython
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"{text[error.start]!r} at character {error.start} ({error.reason})"
    return None


class TextEncoder:
    """Encodes text segments exactly like ``tokenizer.encode(text, add_special_tokens=False)``.

    An encoder implements ``_encode_flat``; a text that is not valid Unicode is a ``DataError``
    naming why (``invalid_unicode``), whatever the encoder raised."""

    name: str
    ready = True  # whether encoding starts without waiting for a build under way (fastokens')

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ids as ``int32[T]`` and ``int64[len(texts) + 1]`` offsets (text ``i`` is ``ids[o[i]:o[i+1]]``)."""
        texts = list(texts)
        try:
            return self._encode_flat(texts)
        except (UnicodeEncodeError, TypeError):  # HF's Rust tokenizer raises TypeError
            for reason in (invalid_unicode(text) for text in texts if isinstance(text, str)):
                if reason is not None:
                    raise DataError(f"text is not valid Unicode: {reason}") from None
            raise

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text."""
        ids, offsets = self.encode_batch_flat(texts)
        flat, bounds = ids.tolist(), offsets.tolist()
        return [flat[start:end] for start, end in itertools.pairwise(bounds)]

    def single_threaded(self) -> TextEncoder:
        """The same encoder, encoding in the calling thread only (for worker processes)."""
        return self

    def _encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class RustEncoder(TextEncoder):
    """The tokenizer's Rust tokenizer from its ``tokenizer.json``: one batched call (multi-threaded
    in Rust, as ``TOKENIZERS_PARALLELISM`` says), or one call per string (``per_string``, the python
    path). Built on first use."""

    def __init__(self, tokenizer_json: str, split_special_tokens: bool, *, per_string: bool = False) -> None:
        self._json, self._split, self._per_string = tokenizer_json, split_special_tokens, per_string
        self.name = "hf (per string)" if per_string else "hf"
        self._rust: Any = None

    def _tokenizer(self) -> Any:
        if self._rust is None:
            from tokenizers import Tokenizer

            rust = Tokenizer.from_str(self._json)
            rust.no_truncation()  # what ``tokenizer.encode`` sets before encoding
            rust.no_padding()
            rust.encode_special_tokens = self._split
            self._rust = rust
        return self._rust

    def _encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rust = self._tokenizer()
        if self._per_string:
            return _flatten([rust.encode(text, add_special_tokens=False).ids for text in texts])
        return _flatten([e.ids for e in rust.encode_batch_fast(texts, add_special_tokens=False)])

    def encodings(self, texts: Sequence[str]) -> list[Any]:
        """HF's ``Encoding`` of each text, character offsets included (slower than the ids alone)."""
        return self._tokenizer().encode_batch(list(texts), add_special_tokens=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (partial(RustEncoder, per_string=self._per_string), (self._json, self._split))


class PythonEncoder(TextEncoder):
    """``tokenizer.encode(text, add_special_tokens=False)`` once per text, for a tokenizer that does
    not encode through its Rust tokenizer (a slow tokenizer, a class overriding encoding)."""

    name = "hf (python tokenizer)"

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer

    def _encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return _flatten([self._tokenizer.encode(text, add_special_tokens=False) for text in texts])


class FastokensEncoder(TextEncoder):
    """fastokens over a ``tokenizer.json`` text. Faster than the BPE once built, but its build takes
    a core for 1-2 s: it starts on a thread at construction (``background``), overlapping the run's
    reading and rendering, else on first use. ``single_thread``: it encodes in the calling thread
    only (a worker process's encoder). Pickles as the JSON text: a worker builds its own on first use."""

    name = "fastokens"

    def __init__(
        self,
        tokenizer_json: str,
        split_special_tokens: bool,
        *,
        single_thread: bool = False,
        background: bool = True,
    ) -> None:
        self._json, self._split, self._single_thread = tokenizer_json, split_special_tokens, single_thread
        self._encoder: Any = None
        self._error: Exception | None = None
        # Not a daemon: the interpreter waits for it rather than ending it inside Rust (which aborts).
        self._thread = threading.Thread(target=self._build, name="fastokens-build") if background else None
        if self._thread is not None:
            self._thread.start()

    def _build(self) -> None:
        try:
            import fastokens
        except ImportError:
            self._error = ConfigError("fastokens is not installed (pip install fastokens)")
            return
        if self._single_thread:
            os.environ["FASTOKENS_BPE_THREADS"] = "1"  # read when it first encodes in a process
        try:
            encoder = fastokens.Tokenizer.from_json_str(self._json)
        except ValueError as error:
            self._error = ConfigError(f"fastokens cannot load this tokenizer: {error}")
            return
        encoder.no_truncation()
        encoder.no_padding()
        self._encoder = encoder

    @property
    def ready(self) -> bool:  # type: ignore[override]
        return self._thread is None or not self._thread.is_alive()

    def _encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._thread is not None:
            self._thread.join()
        elif self._encoder is None and self._error is None:
            self._build()
        if self._error is not None:
            raise self._error
        ids, offsets = self._encoder.encode_batch_flat(texts, False, self._split)
        # uint32 ids below 2**31 and uint64 offsets below 2**63 read the same as int32 / int64.
        return np.frombuffer(ids, dtype=np.int32), np.frombuffer(offsets, dtype=np.int64)

    def single_threaded(self) -> FastokensEncoder:
        return FastokensEncoder(self._json, self._split, single_thread=True, background=False)

    def __reduce__(self) -> tuple[Any, ...]:
        worker = partial(FastokensEncoder, single_thread=self._single_thread, background=False)
        return (worker, (self._json, self._split))


class BPEEncoder(TextEncoder):
    """fastsft's byte-level BPE over ``bpe.tokenizer_tables``' tables (kept on disk: ready in
    milliseconds); thread-safe. HF's own algorithm, in ``fastsft._core.ByteLevelBPE``
    (``csrc/bpe.pxi``) but for NFC::

        text ─▶ split at added tokens ─▶ NFC, if the normaliser is ─▶ split regex ─▶ BPE per piece
                (leftmost-longest)       (HF's own, in Python, only    (compiled     (lowest-rank
                                          for text NFC may change)      scanner)      merge first)

    ``threads``: the most native threads the compiled encoder spreads a batch over (default: the
    CPUs this process may use). Pickles as its tables."""

    name = "fastsft-bpe"

    def __init__(self, tables: ByteLevelTables, threads: int | None = None) -> None:
        from fastsft._core import ByteLevelBPE, nfc_unchanged

        if threads is None:
            threads = available_cores()
        self.tables, self._threads, self._nfc_unchanged = tables, threads, nfc_unchanged
        self._core = ByteLevelBPE(
            char_classes(),
            tables.merges,
            tables.byte_ids,
            tables.max_digits,
            tables.whole_words,
            tables.added,
            threads=threads,
        )
        self._nfc: Any = None

    def _unit(self, text: str) -> str | list[str | int]:
        """The text as the compiled encoder takes it: as it is (it splits at added tokens itself)
        unless NFC may change it; then split at added tokens, the text between them normalised by
        HF's own NFC (Python's ``unicodedata`` may be another Unicode version)."""
        if not self.tables.nfc or text.isascii() or self._nfc_unchanged(text, nfc_sensitive()):
            return text
        if self._nfc is None:
            from tokenizers.normalizers import NFC

            self._nfc = NFC()
        return [
            part if isinstance(part, int) else self._nfc.normalize_str(part)
            for part in self._core.split_added(text)
        ]

    def _encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._core.encode_texts([self._unit(text) for text in texts])

    def single_threaded(self) -> BPEEncoder:
        return BPEEncoder(self.tables, threads=1)

    def __reduce__(self) -> tuple[Any, ...]:
        return (BPEEncoder, (self.tables, self._threads))


def _flatten(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids as one ``int32`` array plus ``int64`` offsets."""
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)), out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return ids, offsets


# --------------------------------------------------------------------------------------------------
# Probing

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
    """Texts that exercise every part of a tokenizer: scripts, emoji, NFC/NFD forms, case and
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


def _probe(candidate: TextEncoder, spec: TokenizerSpec, tokenizer_json: str) -> None:
    """Raise ``ConfigError`` unless ``candidate`` gives the Rust tokenizer's ids on every probe text,
    and for BPE dropout, whose ids are random (a probe may pass by chance)."""
    reference = RustEncoder(tokenizer_json, spec.split_special_tokens, per_string=True)
    rust = reference._tokenizer()
    if getattr(rust.model, "dropout", None) not in (None, 0.0):
        raise ConfigError("BPE dropout is set (HF's ids are random; a probe may pass by chance)")
    texts = probe_texts([token.content for token in rust.get_added_tokens_decoder().values()])
    for text, ids, want in zip(texts, candidate.encode_batch(texts), reference.encode_batch(texts)):
        if ids != want:
            raise ConfigError(f"{candidate.name} gives other ids than HF on the probe text {text[:60]!r}")


_E = TypeVar("_E", bound=TextEncoder)


def _verdict(spec: TokenizerSpec, name: str, verify: Callable[[], _E], build: Callable[[], _E]) -> _E:
    """``build()`` if ``name`` passed the probe before, else ``verify()`` (which makes the encoder
    and probes it), its verdict recorded; ``ConfigError`` with the reason of a failure, new or recorded."""
    from importlib.metadata import version

    import fastsft

    path = json_derived(spec.backend_digest or "", "verdicts.json")
    # The probe compares with the installed tokenizers' ids, through fastsft's wrapper of the
    # encoder: a verdict holds for those versions.
    key = (
        f"{name} split_special_tokens={spec.split_special_tokens} fastsft {fastsft.__version__} "
        f"tokenizers {version('tokenizers')} probes {_probes_digest()}"
    )
    verdicts = read_checked(path)
    verdicts = verdicts if isinstance(verdicts, dict) else {}
    recorded = verdicts.get(key)
    if isinstance(recorded, str):
        raise ConfigError(f"{recorded} (recorded with the tokenizer)")
    if recorded is True:
        return build()
    try:
        encoder = verify()
    except ConfigError as error:
        verdicts[key] = str(error)
        write_checked(path, verdicts)
        raise
    verdicts[key] = True
    write_checked(path, verdicts)
    return encoder


def _probes_digest() -> str:
    return hashlib.sha256("\0".join(probe_texts(["<t>"])).encode("utf-8")).hexdigest()[:16]


def _fastokens(spec: TokenizerSpec, tokenizer_json: str) -> FastokensEncoder:
    """fastokens, probed once per tokenizer (then built on a thread); ``ConfigError`` if not exact."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        name = f"fastokens {version('fastokens')}"
    except PackageNotFoundError:
        raise ConfigError("fastokens is not installed (pip install fastokens)") from None
    try:
        import fastokens  # noqa: F401
    except ImportError as error:  # this environment's fault, not the tokenizer's: no verdict kept
        raise ConfigError(f"fastokens cannot be imported: {error}") from None

    def verify() -> FastokensEncoder:
        encoder = FastokensEncoder(tokenizer_json, spec.split_special_tokens, background=False)
        _probe(encoder, spec, tokenizer_json)
        return encoder

    return _verdict(spec, name, verify, lambda: FastokensEncoder(tokenizer_json, spec.split_special_tokens))


def _bpe(spec: TokenizerSpec, tokenizer_json: str) -> BPEEncoder:
    """fastsft's BPE, probed once per tokenizer, its tables kept beside the spec's JSON."""
    path = json_derived(spec.backend_digest or "", f"bpe-{BPE_FORMAT}-{int(spec.split_special_tokens)}.npz")

    def verify() -> BPEEncoder:
        try:
            made = tokenizer_tables(tokenizer_json, spec.split_special_tokens)
        except NotByteLevelBPE as error:
            raise ConfigError(f"fastsft-bpe does not reproduce it: {error}") from None
        encoder = BPEEncoder(made)
        _probe(encoder, spec, tokenizer_json)
        write_checked_bytes(path, made.to_bytes())
        return encoder

    def build() -> BPEEncoder:
        try:
            return BPEEncoder(ByteLevelTables.from_bytes(read_checked_bytes(path) or b""))
        except ValueError:  # tables missing or damaged: made and probed again
            return verify()

    return _verdict(spec, f"fastsft-bpe {BPE_FORMAT} classes {TOKENIZERS_VERSION}", verify, build)


def choose_encoder(
    spec: TokenizerSpec,
    kind: str | None = None,
    *,
    expected_chars: int = 0,
    per_string: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> TextEncoder:
    """The encoder of a run, chosen once: ``kind`` ``"hf"``, ``"bpe"``, ``"fast"`` (each of the last
    two, or a ``ConfigError`` saying why not) or ``"auto"`` (module docstring), for about
    ``expected_chars`` characters of text (0: unknown). ``per_string``: HF once per string, as
    LLaMA-Factory calls it (the python path). ``tokenizer``: the real tokenizer, needed only when
    ``spec`` has no ``tokenizer.json`` (it does not encode through Rust).

    ``kind`` defaults to the ``FASTSFT_TOKENIZER`` environment variable, then ``"auto"``.
    """
    kind = kind or os.environ.get(ENV_VAR) or "auto"
    if kind not in KINDS:
        raise ConfigError(
            f"tokenizer backend {kind!r} is not one of {', '.join(KINDS)} (option or {ENV_VAR})"
        )
    probed = {  # the encoders probed before use: name, description, maker
        "bpe": (BPEEncoder.name, "fastsft's byte-level BPE", _bpe),
        "fast": (FastokensEncoder.name, "fastokens", _fastokens),
    }
    text = spec.backend_json
    if text is None:
        if kind in probed:
            raise ConfigError(
                f"tokenizer backend {kind!r} needs a Rust-backed (fast) tokenizer; this one encodes in Python"
            )
        if tokenizer is None:
            raise ValueError("a spec without tokenizer.json encodes with its real tokenizer: pass it")
        return PythonEncoder(tokenizer)
    if per_string or kind == "hf":
        return RustEncoder(text, spec.split_special_tokens, per_string=per_string)
    if kind in probed:
        _, what, make = probed[kind]
        try:
            return make(spec, text)
        except ConfigError as error:
            raise ConfigError(
                f"tokenizer backend {kind!r} ({what}) cannot reproduce this tokenizer: {error}"
            ) from None
    size = expected_chars / max(len(spec), 1)
    order = ["bpe"]
    if size >= FASTOKENS_CHARS_PER_TOKEN:
        order.insert(0, "fast")
    elif size >= BREAK_EVEN_CHARS_PER_TOKEN:
        order.append("fast")
    for name, _, make in (probed[each] for each in order):
        try:
            encoder = make(spec, text)
        except ConfigError as error:
            logger.info("tokenizer backend: %s cannot be used: %s", name, error)
            continue
        logger.info("tokenizer backend: %s (auto, %.0f characters per vocabulary entry)", name, size)
        return encoder
    return RustEncoder(text, spec.split_special_tokens)


def encoder_for(
    tokenizer: PreTrainedTokenizerBase, kind: str | None = None, *, expected_chars: int = 0
) -> TextEncoder:
    """``choose_encoder``'s encoder for a HF tokenizer as it is (no template's fixes)."""
    spec = TokenizerSpec.from_tokenizer(tokenizer, slot_tokens=(), fingerprints={})
    return choose_encoder(spec, kind, expected_chars=expected_chars, tokenizer=tokenizer)
