"""fastsft's byte-level BPE encoder (``fastsft.tokenizer.bpe``, ``csrc/bpe.pxi``) against HF tokenizers.

The reference is the HF tokenizer itself: ``tokenizer.encode(text, add_special_tokens=False)``.
Checked on the fixture tokenizer (always), the real Qwen2 tokenizer and Meta's Llama 3 tokenizer
(when present): every code point in several contexts, random text (hypothesis), long pieces (the
heap path), added tokens, ``split_special_tokens``, NFC, threads, a cache that overflows, and the
character classes and NFC table against the installed tokenizers' own regex engine and normaliser.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FIXTURE_TOKENIZER_DIR, load_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsft._core import ByteLevelBPE
from fastsft.errors import ConfigError, DataError
from fastsft.tokenizer import bpe, encoders, unicode_classes
from fastsft.tokenizer.bpe import ByteLevelTables, NotByteLevelBPE, tokenizer_tables
from fastsft.tokenizer.encoders import (
    BREAK_EVEN_CHARS_PER_TOKEN,
    FASTOKENS_CHARS_PER_TOKEN,
    BPEEncoder,
    choose_encoder,
    encoder_for,
)
from fastsft.tokenizer.spec import TokenizerSpec

KINDS = ("fixture", "qwen2", "llama3")


@pytest.fixture(scope="module", params=KINDS)
def hf_tokenizer(request: pytest.FixtureRequest) -> Any:
    """Each tokenizer the encoder reproduces (the real ones skip when absent)."""
    path: Path = request.getfixturevalue(f"{request.param}_tokenizer_path")
    return load_tokenizer(path)


def _json(tokenizer: Any) -> str:
    return tokenizer.backend_tokenizer.to_str()


_TABLES: dict[int, tuple[Any, ByteLevelTables]] = {}  # by id(tokenizer); the tokenizer kept alive


def _backend(tokenizer: Any, threads: int = 1) -> BPEEncoder:
    """A fresh backend (empty caches) over the tokenizer's tables, read from its JSON once."""
    if id(tokenizer) not in _TABLES:
        split = bool(getattr(tokenizer, "split_special_tokens", False))
        _TABLES[id(tokenizer)] = (tokenizer, tokenizer_tables(_json(tokenizer), split))
    return BPEEncoder(_TABLES[id(tokenizer)][1], threads=threads)


_SHARED: dict[int, BPEEncoder] = {}


def _shared_backend(tokenizer: Any) -> BPEEncoder:
    """One backend per tokenizer across a test's examples: its cache fills as in a long run."""
    if id(tokenizer) not in _SHARED:
        _SHARED[id(tokenizer)] = _backend(tokenizer)
    return _SHARED[id(tokenizer)]


def _hf_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def _assert_same(tokenizer: Any, backend: BPEEncoder, texts: list[str]) -> None:
    ours = backend.encode_batch(texts)
    for text, expected, got in zip(texts, _hf_ids(tokenizer, texts), ours):
        assert got == expected, f"text {text[:80]!r}: HF {expected[:20]} ours {got[:20]}"


def _added(tokenizer: Any) -> list[str]:
    return [token.content for token in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()]


# --------------------------------------------------------------------------------------------------
# Every code point, and random text


def _all_code_point_texts(added: list[str]) -> list[str]:
    """Every Unicode scalar value (planes 4-13, unassigned, sampled) in chunks: alone and next to
    letters, spaces, apostrophes, digits, newlines and combining marks, so that each boundary of the
    split regex and NFC meets it."""
    points = [c for c in [*range(0x40000), *range(0x40000, 0xE0000, 97), *range(0xE0000, 0x110000)]]
    points = [c for c in points if not 0xD800 <= c <= 0xDFFF]
    texts = []
    for start in range(0, len(points), 2048):
        chars = [chr(c) for c in points[start : start + 2048]]
        texts += [
            "".join(chars),
            "a".join(chars),
            " ".join(chars) + " ",
            "'".join(chars),
            "".join(f"{c}1\n {c}\u0301{c}{c}\t" for c in chars[::5]),
        ]
    texts += [f"{token}{chr(c)}" for token in added[:4] for c in range(0x300, 0x370)]
    return texts


def test_every_code_point_in_context(hf_tokenizer: Any) -> None:
    backend = _backend(hf_tokenizer)
    texts = _all_code_point_texts(_added(hf_tokenizer))
    expected = [e.ids for e in hf_tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    for text, ids, got in zip(texts, expected, backend.encode_batch(texts)):
        if got != ids:
            first = next(i for i, (a, b) in enumerate(zip([*got, -1], [*ids, -1])) if a != b)
            pytest.fail(f"differs from HF at id {first} of a text starting {text[:40]!r}")


_ALPHABET = st.sampled_from(
    [
        *"abcXYZ sStTrReEvVmMlLdD'ſ",
        *"0123456789٣١২",
        *" \t\n\r\u00a0\u3000\u2028\u000b\u000c\x85",
        *'.,!?;:-_()[]{}<>|/\\"`~@#$%^&*+=',
        *"数据处理模型こんにちは안녕하세요",
        *"éüñçÅ\u0301\u0327\u030a\u1100\u1161\u11a8가\u212b",
        "😀",
        "👍",
        "🏽",
        "\u200d",
        "\ufe0f",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_text_matches_hf(hf_tokenizer: Any, data: st.DataObject) -> None:
    added = _added(hf_tokenizer)
    pieces = st.one_of(st.text(_ALPHABET, max_size=40), st.sampled_from(added or ["x"]))
    texts = data.draw(st.lists(st.lists(pieces, max_size=8).map("".join), min_size=1, max_size=6))
    _assert_same(hf_tokenizer, _shared_backend(hf_tokenizer), texts)


def test_long_pieces_take_the_heap_path(hf_tokenizer: Any) -> None:
    """Pieces past 48 bytes merge with a heap; both paths give HF's ids (a whole CJK sentence is one
    piece; so is a long run of letters or of punctuation)."""
    texts = (
        ["数据处理和模型训练" * n + "。" for n in (1, 2, 5, 17, 60)]
        + ["a" * n for n in (47, 48, 49, 50, 97, 500)]
        + ["=" * 300, "-_" * 200, "x" + "y" * 3000]
    )
    _assert_same(hf_tokenizer, _backend(hf_tokenizer), texts)


@pytest.mark.parametrize("layout", ["even", "large first", "large last"])
def test_threads_give_the_same_ids(hf_tokenizer: Any, layout: str) -> None:
    """A batch of over 3 MiB is spread over 3 native threads (1 MiB each at least); the ids and
    offsets equal one thread's, however the bytes fall between the texts (later threads may get none)."""
    texts = [f"Sample {i}: 数据 {i * 7919} it's\n\n" + "word " * (i % 50) for i in range(400)]
    large = "".join(texts) * 60
    texts = {"even": texts * 60, "large first": [large, *texts], "large last": [*texts, large]}[layout]
    assert sum(len(text.encode()) for text in texts) > 3 << 20
    single = _backend(hf_tokenizer).encode_batch_flat(texts)
    threaded = _backend(hf_tokenizer, threads=3)
    for _ in range(2):  # the second batch reuses each thread's cache
        ids, offsets = threaded.encode_batch_flat(texts)
        np.testing.assert_array_equal(single[0], ids)
        np.testing.assert_array_equal(single[1], offsets)
    _assert_same(hf_tokenizer, threaded, texts[:50])


def test_concurrent_callers_take_turns(hf_tokenizer: Any) -> None:
    """Python threads sharing one encoder get their own batches' ids (calls take turns on its
    per-thread caches and scratch)."""
    from concurrent.futures import ThreadPoolExecutor

    shared = _backend(hf_tokenizer, threads=2)
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzéü数据"))
    words = ["".join(rng.choice(letters, size=rng.integers(3, 12))) for _ in range(40_000)]
    # Words new to each batch: every call inserts into the caches, and may grow them.
    batches = [[" ".join(words[i : i + 50]) for i in range(b * 5000, (b + 1) * 5000, 50)] for b in range(8)]
    expected = [_backend(hf_tokenizer).encode_batch(batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(shared.encode_batch, batches)) == expected


def test_a_full_cache_is_cleared_and_stays_exact(hf_tokenizer: Any) -> None:
    tables = _backend(hf_tokenizer).tables
    core = ByteLevelBPE(
        bpe.char_classes(),
        tables.merges,
        tables.byte_ids,
        tables.max_digits,
        tables.whole_words,
        tables.added,
        8,
    )
    texts = [f"word{i} other{i % 13} 数据{i}" for i in range(200)]
    ids, offsets = core.encode_texts(texts)
    assert core.cached_words <= 8
    expected = _hf_ids(hf_tokenizer, texts)
    assert [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))] == expected


def test_split_special_tokens_keeps_special_tokens_as_text(hf_tokenizer: Any) -> None:
    added = _added(hf_tokenizer)
    texts = [f"a{token}b {token}" for token in added[:5]] + ["plain"]
    hf_tokenizer.backend_tokenizer.encode_special_tokens = True
    try:
        expected = [
            e.ids for e in hf_tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        ]
    finally:
        hf_tokenizer.backend_tokenizer.encode_special_tokens = False
    backend = BPEEncoder(tokenizer_tables(_json(hf_tokenizer), True))
    assert backend.encode_batch(texts) == expected


def test_pickles_and_single_threaded(hf_tokenizer: Any) -> None:
    backend = _backend(hf_tokenizer, threads=2)
    texts = ["Hello, world! 数据", "<|im_start|>user\nhi<|im_end|>"]
    assert pickle.loads(pickle.dumps(backend)).encode_batch(texts) == backend.encode_batch(texts)
    assert backend.single_threaded().encode_batch(texts) == backend.encode_batch(texts)


def test_invalid_unicode_is_a_located_data_error() -> None:
    backend = BPEEncoder(tokenizer_tables(_json(load_tokenizer(_fixture_path())), False))
    with pytest.raises(
        DataError, match=r"not valid Unicode: '\\ud800' at character 5 \(surrogates not allowed\)"
    ):
        backend.encode_batch(["ok", "lone \ud800 surrogate"])


# --------------------------------------------------------------------------------------------------
# Character classes and NFC against the installed tokenizers


def _onig_members(pattern: str, points: list[int]) -> set[int]:
    from tokenizers import Regex, pre_tokenizers

    text = "".join(map(chr, points))
    unmatched = np.zeros(len(points), dtype=bool)
    for _, (start, end) in pre_tokenizers.Split(Regex(pattern), "removed").pre_tokenize_str(text):
        unmatched[start:end] = True
    return {point for point, flag in zip(points, unmatched) if not flag}


def test_character_classes_are_the_regex_engines() -> None:
    """``unicode_classes`` (made by ``scripts/make_unicode_classes.py``) is what Oniguruma in the
    installed tokenizers matches, over every assigned plane (4-13 are unassigned: checked sampled)."""
    points = [
        c
        for c in [*range(0x40000), *range(0xE0000, 0x110000), *range(0x40000, 0xE0000, 97)]
        if not 0xD800 <= c <= 0xDFFF
    ]
    table = bpe.char_classes()
    for bit, pattern in ((1, r"\p{L}"), (2, r"\p{N}"), (4, r"\s")):
        ours = {c for c in points if table[c] & bit}
        assert ours == _onig_members(pattern, points), pattern
    ascii_and_latin = list(range(0x250))
    for letter, found in unicode_classes.CONTRACTION_FOLDS.items():
        assert _onig_members(f"(?i:{letter})", [*ascii_and_latin, 0x212A, 0x212B]) == set(found)


def test_text_without_nfc_sensitive_characters_is_its_own_nfc() -> None:
    from tokenizers.normalizers import NFC

    sensitive = bpe.nfc_sensitive()
    inert = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and not sensitive[c])
    assert NFC().normalize_str(inert) == inert
    assert NFC().normalize_str(inert[::-1]) == inert[::-1]


# --------------------------------------------------------------------------------------------------
# What the encoder refuses, and its tables


def _fixture_path() -> Path:
    return FIXTURE_TOKENIZER_DIR


def _changed(change: Any) -> str:
    spec = json.loads(_json(load_tokenizer(_fixture_path())))
    change(spec)
    return json.dumps(spec)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: s.update(normalizer={"type": "NFKC"}), "normalizer 'NFKC'"),
        (lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\w+"), "split regex"),
        (lambda s: s["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True), "ByteLevel"),
        (lambda s: s["model"].update(byte_fallback=True), "byte_fallback"),
        (lambda s: s["model"].update(dropout=0.1), "dropout"),
        (lambda s: s["model"].update(type="WordPiece"), "not BPE"),
        (lambda s: s["added_tokens"][0].update(lstrip=True), "sets lstrip"),
        (lambda s: s["added_tokens"][0].update(normalized=True), "sets normalized"),
        (lambda s: s["model"]["vocab"].pop("Ġ"), "byte characters are not in the vocabulary"),
        (lambda s: s["model"]["merges"].append(["Ġ", "zzq"]), "a merge uses 'zzq' outside the vocabulary"),
    ],
)
def test_refuses_what_it_does_not_implement(change: Any, reason: str) -> None:
    with pytest.raises(NotByteLevelBPE, match=reason):
        tokenizer_tables(_changed(change), False)


def test_tables_round_trip_and_damaged_tables_are_refused(hf_tokenizer: Any) -> None:
    tables = _backend(hf_tokenizer).tables
    again = ByteLevelTables.from_bytes(tables.to_bytes())
    texts = ["round trip: it's 数据 12345 <|im_start|>"]
    assert BPEEncoder(again).encode_batch(texts) == BPEEncoder(tables).encode_batch(texts)
    with pytest.raises(ValueError, match="not byte-level BPE tables"):
        ByteLevelTables.from_bytes(tables.to_bytes()[:1000])


def test_compiled_encoder_checks_its_tables() -> None:
    tables = tokenizer_tables(_json(load_tokenizer(_fixture_path())), False)
    classes = bpe.char_classes()
    with pytest.raises(ValueError, match="0x110000"):
        ByteLevelBPE(classes[:10], tables.merges, tables.byte_ids, 1)
    with pytest.raises(ValueError, match="256"):
        ByteLevelBPE(classes, tables.merges, tables.byte_ids[:10], 1)
    bad = tables.merges.copy()
    bad[0, 2] = 1 << 20
    with pytest.raises(ValueError, match="outside"):
        ByteLevelBPE(classes, bad, tables.byte_ids, 1)


def test_bpe_kind(fixture_tokenizer: Any) -> None:
    backend = encoder_for(fixture_tokenizer, "bpe")
    assert isinstance(backend, BPEEncoder) and backend.name == "fastsft-bpe"
    assert backend.encode_batch(["hello world"]) == [
        fixture_tokenizer.encode("hello world", add_special_tokens=False)
    ]


# --------------------------------------------------------------------------------------------------
# The verdict and the tables are kept beside the spec's tokenizer.json, and a later choice reads them


def _spec(path: Path) -> TokenizerSpec:
    return TokenizerSpec.from_tokenizer(load_tokenizer(path), slot_tokens=(), fingerprints={})


def test_a_later_choice_reads_the_recorded_tables_and_verdict(
    fixture_tokenizer_path: Path, fastsft_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tokenizers

    texts = ["Hello, world! it's 数据 <|im_start|>x", "e\u0301 café"]
    expected = _hf_ids(load_tokenizer(fixture_tokenizer_path), texts)
    assert choose_encoder(_spec(fixture_tokenizer_path), "bpe").encode_batch(texts) == expected
    tables = list(fastsft_cache.rglob("*.bpe-*.npz"))
    assert len(tables) == 1

    spec = _spec(fixture_tokenizer_path)

    def refuse(*args: Any) -> Any:
        raise AssertionError("the later choice built the HF Rust tokenizer, made the tables again or probed")

    monkeypatch.setattr(tokenizers.Tokenizer, "from_str", refuse)
    monkeypatch.setattr(encoders, "_probe", refuse)
    monkeypatch.setattr(encoders, "tokenizer_tables", refuse)
    backend = choose_encoder(spec, "auto")
    assert backend.name == "fastsft-bpe"
    assert backend.encode_batch(texts) == expected


def test_damaged_recorded_tables_are_made_again(fixture_tokenizer_path: Path, fastsft_cache: Path) -> None:
    choose_encoder(_spec(fixture_tokenizer_path), "bpe")
    (tables,) = fastsft_cache.rglob("*.bpe-*.npz")
    tables.write_bytes(tables.read_bytes()[:-100])  # its checksum no longer matches
    texts = ["damaged tables: rebuilt 12345"]
    expected = _hf_ids(load_tokenizer(fixture_tokenizer_path), texts)
    assert choose_encoder(_spec(fixture_tokenizer_path), "bpe").encode_batch(texts) == expected
    assert ByteLevelTables.from_bytes(tables.read_bytes()[32:])  # written again, whole


def test_a_recorded_refusal_is_replayed(
    fixture_tokenizer_path: Path, fastsft_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise NotByteLevelBPE("normalizer 'NFKC'")

    with monkeypatch.context() as patch:
        patch.setattr(encoders, "tokenizer_tables", refused)
        with pytest.raises(ConfigError, match="fastsft-bpe does not reproduce it: normalizer 'NFKC'"):
            choose_encoder(_spec(fixture_tokenizer_path), "bpe")
    with pytest.raises(ConfigError, match=r"normalizer 'NFKC' \(recorded with the tokenizer\)"):
        choose_encoder(_spec(fixture_tokenizer_path), "bpe")


# --------------------------------------------------------------------------------------------------
# Auto: fastsft's BPE below fastokens' threshold; fastokens or HF where the BPE is not exact


def test_auto_picks_the_bpe_and_falls_back(fixture_tokenizer: Any) -> None:
    entries = len(fixture_tokenizer)
    below_fastokens = FASTOKENS_CHARS_PER_TOKEN * entries - 1
    assert encoder_for(fixture_tokenizer, "auto", expected_chars=below_fastokens).name == "fastsft-bpe"
    # GPT-2's ByteLevel regex: fastokens implements it, fastsft's BPE does not
    from tokenizers import pre_tokenizers

    fixture_tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = ["GPT-2's pre-tokenizer, 123 数据"]
    for chars, name in ((BREAK_EVEN_CHARS_PER_TOKEN * entries, "fastokens"), (0, "hf")):
        backend = encoder_for(fixture_tokenizer, "auto", expected_chars=chars)
        assert backend.name == name
        assert backend.encode_batch(texts) == _hf_ids(fixture_tokenizer, texts)
