"""Tokenizer backends: fastokens must give exactly ``tokenizer.encode(text, add_special_tokens=False)``.

Property tests run on the fixture tokenizer and, when present, the real Qwen2 and Llama 3
tokenizers, before and after LLaMA-Factory-style fixes (EOS replacement, stop words and plain
tokens added), and on small tokenizers with other BPE structures.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

from fastsft.errors import ConfigError, DataError
from fastsft.tokenizer.backends import (
    ENV_VAR,
    AutoBackend,
    FastokensBackend,
    HFBackend,
    UnsupportedTokenizer,
    load_backend,
    probe_texts,
)

# These tests are about fastokens (its background build, its place in auto); fastsft's own BPE,
# which auto tries first, has its own in tests/test_bpe_backend.py.
pytestmark = pytest.mark.usefixtures("fastokens_only")

# The split patterns of Qwen2's and Meta's Llama 3 tokenizer.json.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

FRAGMENTS = [
    # English, contractions (any case), code
    "hello", "World", " the", " quick", "I", "'s", "'S", "'t", "'re", "'VE", "'m", "'LL", "'d", "'ſ",
    "def ", "f(x):", " return", " {'a': [1, 2]}", "==", "->", "//", "# ", "&&", "\\n", "`", '"', ";",
    # CJK, other scripts
    "数据", "模型训练", "你好，世界！", "こんにちは", "カタカナ", "안녕하세요", "Привет", "مرحبا", "नमस्ते", "ภาษาไทย",
    # emoji: skin tone, ZWJ family, flag, keycap, variation selector
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷", "1\ufe0f\u20e3", "❤\ufe0f\u200d🔥",
    # combining marks, composed and decomposed forms, compatibility characters
    "\u0301", "\u0327", "\u0308", "e\u0301", "é", "A\u030a", "Å", "\u212b", "\u2126", "\u212a", "\u037e",
    "\u1100\u1161\u11a8", "각", "ﬁ", "ｆｕｌｌ",
    # whitespace and newline runs
    " ", "  ", "   ", "\n", "\n\n", "\r\n", "\r", "\t", "\t\t", " \n ", "\u3000", "\u00a0", "\u2003", "\u200b",
    "\u200c", "\u200d", "\u2060", "\ufeff", "\r\n\r\n", " \t \r\n  ", "\u00a0\u00a0", "\u0085", "\u2028",
    # digits
    "0", "7", "12", "345", "2024", "3.14", "1,000", "٣", "²",
]  # fmt: skip


@st.composite
def texts(draw: st.DrawFn, added_tokens: list[str]) -> str:
    """Random text built from the fragments above, added tokens and arbitrary characters, in a random
    normal form (NFD splits what NFC composes, also around added tokens)."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.sampled_from(FRAGMENTS),
                st.sampled_from(added_tokens),
                st.text(max_size=4),
            ),
            max_size=24,
        )
    )
    text = "".join(pieces)
    form = draw(st.sampled_from([None, "NFC", "NFD"]))
    return unicodedata.normalize(form, text) if form else text


def load_tokenizer(path: Path) -> Any:
    """A fresh HF tokenizer (module-scoped fixtures below modify their own copy)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def auto(tokenizer: Any) -> Any:
    """``load_backend(tokenizer, "auto")`` for input long enough to decide at once."""
    return load_backend(tokenizer, "auto", expected_chars=10**12)


def hf_ids(tokenizer: Any, batch: list[str]) -> list[list[int]]:
    return [tokenizer.encode(text, add_special_tokens=False) for text in batch]


def assert_backend_matches(backend: Any, tokenizer: Any, batch: list[str]) -> None:
    """``encode_batch`` and ``encode_batch_flat`` both equal per-string HF ``encode``."""
    expected = hf_ids(tokenizer, batch)
    assert backend.encode_batch(batch) == expected
    ids, offsets = backend.encode_batch_flat(batch)
    assert ids.dtype == np.int32 and offsets.dtype == np.int64
    assert offsets.tolist() == np.cumsum([0] + [len(e) for e in expected]).tolist()
    assert ids.tolist() == [token for e in expected for token in e]


def added_contents(tokenizer: Any) -> list[str]:
    return [token.content for token in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()]


def apply_llamafactory_fixes(tokenizer: Any, stop_words: list[str], plain_tokens: list[str]) -> None:
    """What ``fix_special_tokens`` (eos replaced by the first stop word, the others added as special
    tokens) and ``add_tokens`` (plain tokens, matched after normalisation) do to a tokenizer."""
    tokenizer.add_special_tokens({"eos_token": stop_words[0]})
    tokenizer.add_special_tokens({"additional_special_tokens": stop_words[1:]})
    tokenizer.add_tokens(plain_tokens)


PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# --------------------------------------------------------------------------------------------------
# Fixture tokenizer


@pytest.fixture(scope="module")
def fixture_pair(fixture_tokenizer_path: Path) -> tuple[Any, FastokensBackend]:
    tokenizer = load_tokenizer(fixture_tokenizer_path)
    backend = load_backend(tokenizer, "fast")
    assert isinstance(backend, FastokensBackend)
    return tokenizer, backend


@given(data=st.data())
@PROPERTY_SETTINGS
def test_fastokens_matches_hf_on_fixture(
    fixture_pair: tuple[Any, FastokensBackend], data: st.DataObject
) -> None:
    tokenizer, backend = fixture_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


@pytest.fixture(scope="module")
def fixed_fixture_pair(fixture_tokenizer_path: Path) -> tuple[Any, FastokensBackend]:
    tokenizer = load_tokenizer(fixture_tokenizer_path)
    apply_llamafactory_fixes(tokenizer, ["<|eot_id|>", "<|custom_stop|>"], ["<plain>", "café"])
    return tokenizer, load_backend(tokenizer, "fast")


@given(data=st.data())
@PROPERTY_SETTINGS
def test_fastokens_matches_hf_after_fixes_on_fixture(
    fixed_fixture_pair: tuple[Any, FastokensBackend], data: st.DataObject
) -> None:
    tokenizer, backend = fixed_fixture_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


def test_fixes_change_the_added_tokens_the_backend_sees(fixture_tokenizer: Any) -> None:
    before = load_backend(fixture_tokenizer, "fast")
    apply_llamafactory_fixes(fixture_tokenizer, ["<|im_end|>", "<|custom_stop|>"], ["<plain>"])
    after = load_backend(fixture_tokenizer, "fast")
    text = "a<|custom_stop|>b<plain>"
    assert before.encode_batch([text]) != after.encode_batch([text])
    assert after.encode_batch([text]) == hf_ids(fixture_tokenizer, [text])
    new_id = fixture_tokenizer.convert_tokens_to_ids("<|custom_stop|>")
    assert new_id in after.encode_batch([text])[0]


def test_split_special_tokens(fixture_tokenizer: Any) -> None:
    fixture_tokenizer.add_tokens(["<plain>"])
    fixture_tokenizer.split_special_tokens = True
    backend = load_backend(fixture_tokenizer, "fast")
    batch = ["<|im_end|>x<plain>", "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n"]
    assert_backend_matches(backend, fixture_tokenizer, batch)
    assert fixture_tokenizer.convert_tokens_to_ids("<|im_end|>") not in backend.encode_batch(batch)[0]


OVERLAPPING_PLAIN = ["ab", "bc", "\n\n", "\n\n\n", "e\u0301"]
OVERLAPPING_SPECIAL = ["<|x|>", "<|x|>y", "b!"]


@pytest.fixture(scope="module")
def overlapping_pair(fixture_tokenizer_path: Path) -> tuple[Any, FastokensBackend]:
    """Added tokens a leftmost-longest scan could split differently: "ab"/"bc" overlap, "\n\n" is a prefix
    of "\n\n\n", the special "b!" is cut before the plain (normalised) "ab" is looked for, and the
    normalised "e\u0301" ("é") is matched only after NFC."""
    tokenizer = load_tokenizer(fixture_tokenizer_path)
    tokenizer.add_tokens(OVERLAPPING_PLAIN)
    tokenizer.add_special_tokens({"additional_special_tokens": OVERLAPPING_SPECIAL})
    return tokenizer, load_backend(tokenizer, "fast")


def test_overlapping_added_tokens(
    overlapping_pair: tuple[Any, FastokensBackend],
) -> None:
    tokenizer, backend = overlapping_pair
    batch = ["abc", "xbcab", "ab!", "\n\n\n\n", "<|x|>y<|x|>", "e\u0301e\u0301ab", "é", "c\n\n\nab"]
    assert_backend_matches(backend, tokenizer, batch)


@given(batch=st.lists(texts([*OVERLAPPING_PLAIN, *OVERLAPPING_SPECIAL, "é"]), max_size=6))
@settings(max_examples=50, deadline=None)
def test_overlapping_added_tokens_property(
    overlapping_pair: tuple[Any, FastokensBackend], batch: list[str]
) -> None:
    tokenizer, backend = overlapping_pair
    assert_backend_matches(backend, tokenizer, batch)


def test_single_threaded_backend(fixture_pair: tuple[Any, FastokensBackend]) -> None:
    tokenizer, backend = fixture_pair
    single = backend.single_threaded()
    assert isinstance(single, FastokensBackend) and single.name == backend.name
    rng = np.random.default_rng(0)
    batch = ["".join(rng.choice(FRAGMENTS, size=int(n))) for n in rng.integers(0, 60, size=200)]
    assert_backend_matches(single, tokenizer, batch)
    assert_backend_matches(pickle.loads(pickle.dumps(single)), tokenizer, batch)
    hf = HFBackend(tokenizer)
    assert hf.single_threaded() is hf


SINGLE_THREAD_CHILD = """
import os, pickle, sys
backend = pickle.loads(sys.stdin.buffer.read()).single_threaded()
before = len(os.listdir("/proc/self/task"))
backend.encode_batch_flat(["hello world, this is some text " * 40] * 4000)
print(len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_single_threaded_starts_no_threads(fixture_pair: tuple[Any, FastokensBackend]) -> None:
    """In a fresh process, as in a spawned worker, the single-threaded backend encodes in the caller only
    (the default one starts encoder threads where there is more than one CPU)."""
    _, backend = fixture_pair
    env = {key: value for key, value in os.environ.items() if key != "FASTOKENS_BPE_THREADS"}
    child = subprocess.run(
        [sys.executable, "-c", SINGLE_THREAD_CHILD],
        input=pickle.dumps(backend),
        capture_output=True,
        env=env,
        check=True,
    )
    assert child.stdout.decode().strip() == "0"


def test_separator_character_inside_text(fixture_pair: tuple[Any, FastokensBackend]) -> None:
    tokenizer, backend = fixture_pair
    assert_backend_matches(backend, tokenizer, ["a\U0010ffffb", "", "\U0010ffff", "x"])


def test_empty_batch(fixture_pair: tuple[Any, FastokensBackend]) -> None:
    _, backend = fixture_pair
    ids, offsets = backend.encode_batch_flat([])
    assert ids.tolist() == [] and offsets.tolist() == [0]
    assert backend.encode_batch([]) == []


def test_hf_backend_matches_encode(fixture_pair: tuple[Any, FastokensBackend]) -> None:
    tokenizer, _ = fixture_pair
    backend = load_backend(tokenizer, "hf")
    assert isinstance(backend, HFBackend) and backend.name == "hf"
    assert_backend_matches(backend, tokenizer, probe_texts(added_contents(tokenizer)))
    assert_backend_matches(backend, tokenizer, [])


def test_backends_pickle(fixture_pair: tuple[Any, FastokensBackend]) -> None:
    tokenizer, backend = fixture_pair
    batch = probe_texts(added_contents(tokenizer))
    for original in (backend, HFBackend(tokenizer)):
        copy = pickle.loads(pickle.dumps(original))
        assert copy.name == original.name
        assert copy.encode_batch(batch) == original.encode_batch(batch)


def test_lone_surrogate_is_a_data_error(fixture_pair: tuple[Any, FastokensBackend]) -> None:
    tokenizer, backend = fixture_pair
    for candidate in (backend, HFBackend(tokenizer)):
        with pytest.raises(DataError, match="not valid Unicode"):
            candidate.encode_batch(["fine", "bad \ud800 text"])
    with pytest.raises(DataError, match="not valid Unicode"):
        backend.encode_batch(["cafe\u0301 \udfff"])  # the exact split path


# --------------------------------------------------------------------------------------------------
# Choosing a backend


def test_kind_from_environment(
    fixture_pair: tuple[Any, FastokensBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer, _ = fixture_pair
    monkeypatch.setenv(ENV_VAR, "hf")
    assert load_backend(tokenizer, expected_chars=10**12).name == "hf"
    assert auto(tokenizer).name == "fastokens"  # an explicit kind wins
    monkeypatch.setenv(ENV_VAR, "fast")
    assert load_backend(tokenizer).name == "fastokens"
    monkeypatch.setenv(ENV_VAR, "turbo")
    with pytest.raises(ConfigError, match="'turbo'"):
        load_backend(tokenizer)


def test_auto_logs_its_choice(
    fixture_pair: tuple[Any, FastokensBackend], caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer, _ = fixture_pair
    with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.backends"):
        assert auto(tokenizer).name == "fastokens"
    assert "tokenizer backend: fastokens" in caplog.text


def test_auto_switches_to_fastokens_once_the_text_pays_for_it(
    fixture_pair: tuple[Any, FastokensBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer, _ = fixture_pair
    batch = probe_texts(added_contents(tokenizer))
    chars = sum(map(len, batch))
    monkeypatch.setattr("fastsft.tokenizer.backends.BREAK_EVEN_CHARS_PER_TOKEN", 5.5 * chars / len(tokenizer))
    assert load_backend(tokenizer, "auto", expected_chars=6 * chars).name == "fastokens"
    backend = load_backend(tokenizer, "auto", expected_chars=2 * chars)
    assert isinstance(backend, AutoBackend) and backend.name == "hf"
    assert isinstance(backend.single_threaded(), HFBackend)  # workers do not switch
    for _ in range(3):  # two calls a round: the sixth reaches the break-even point
        assert_backend_matches(backend, tokenizer, batch)
        assert backend.name == "hf"
    assert_backend_matches(backend, tokenizer, batch)
    assert backend.name == "hf, then fastokens"
    assert isinstance(backend.single_threaded(), FastokensBackend)


def test_auto_stays_on_hf_when_fastokens_is_not_exact(
    fixture_pair: tuple[Any, FastokensBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer, _ = fixture_pair
    monkeypatch.setattr("fastsft.tokenizer.backends.BREAK_EVEN_CHARS_PER_TOKEN", 0.001)
    monkeypatch.setitem(sys.modules, "fastokens", None)
    monkeypatch.setattr("fastsft.tokenizer.backends._VERIFIED", {})
    backend = load_backend(tokenizer, "auto")
    for _ in range(2):
        assert_backend_matches(backend, tokenizer, ["long enough to pass the break-even point"])
    assert backend.name == "hf"


def test_verified_backend_is_built_once_per_tokenizer_state(new_fixture_tokenizer: Any) -> None:
    tokenizer = new_fixture_tokenizer()
    first = load_backend(tokenizer, "fast")
    assert load_backend(new_fixture_tokenizer(), "fast") is first  # same tokenizer.json: not probed again
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|brand_new|>"]})
    changed = load_backend(tokenizer, "fast")
    assert changed is not first
    assert changed.encode_batch(["a<|brand_new|>b"]) == [
        tokenizer.encode("a<|brand_new|>b", add_special_tokens=False)
    ]


def test_probe_mismatch_falls_back_to_hf(
    fixture_pair: tuple[Any, FastokensBackend],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokenizer, _ = fixture_pair
    original = FastokensBackend.encode_batch

    def off_by_one_on_emoji(self: FastokensBackend, batch: list[str]) -> list[list[int]]:
        return [ids[:-1] if "😀" in text else ids for text, ids in zip(batch, original(self, batch))]

    monkeypatch.setattr(FastokensBackend, "encode_batch", off_by_one_on_emoji)
    monkeypatch.setattr("fastsft.tokenizer.backends._VERIFIED", {})  # verify again with the broken encoder
    with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.backends"):
        assert auto(tokenizer).name == "hf"
    assert "other ids than HF on the probe text" in caplog.text
    with pytest.raises(ConfigError, match="other ids than HF on the probe text"):
        load_backend(tokenizer, "fast")


def wrap(rust_tokenizer: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=rust_tokenizer)


def test_wordpiece_falls_back_to_hf() -> None:
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "##s": 3, "!": 4}
    rust = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = wrap(rust)
    backend = auto(tokenizer)
    assert backend.name == "hf"
    assert_backend_matches(backend, tokenizer, ["hello worlds!", "unknown", ""])
    with pytest.raises(ConfigError, match=r"'fast'.*model is WordPiece, not BPE"):
        load_backend(tokenizer, "fast")


def test_unigram_falls_back_to_hf() -> None:
    rust = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0), ("ab", -1.5)], unk_id=0))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = wrap(rust)
    assert auto(tokenizer).name == "hf"
    with pytest.raises(ConfigError, match="not BPE"):
        load_backend(tokenizer, "fast")


def byte_level_bpe(extra: dict[str, int], merges: list[tuple[str, str]], *, ignore_merges: bool) -> Any:
    """A byte-level BPE with Qwen2's pre-tokenizer and normaliser over the 256 bytes plus ``extra``."""
    vocab = {char: i for i, char in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab.update(extra)
    rust = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    rust.normalizer = normalizers.NFC()
    rust.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return wrap(rust)


def split_then_byte_level(pattern: str) -> Any:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


PRE_TOKENIZERS = {
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "gpt2 with prefix space": lambda: pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    "llama3": lambda: split_then_byte_level(LLAMA3_PATTERN),
    # Skips spaces and punctuation: HF keeps each skipped run as one piece, fastokens must too.
    "gappy": lambda: split_then_byte_level(r"\p{L}+|\p{N}|'s"),
}


@pytest.fixture(scope="module", params=sorted(PRE_TOKENIZERS))
def pre_tokenizer_pair(
    request: pytest.FixtureRequest, fixture_tokenizer_path: Path
) -> tuple[Any, FastokensBackend]:
    """The fixture tokenizer (rich enough merges to show where pieces end) with another pre-tokenizer."""
    tokenizer = load_tokenizer(fixture_tokenizer_path)
    tokenizer.backend_tokenizer.pre_tokenizer = PRE_TOKENIZERS[request.param]()
    return tokenizer, load_backend(tokenizer, "fast")


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_other_pre_tokenizers(pre_tokenizer_pair: tuple[Any, FastokensBackend], data: st.DataObject) -> None:
    tokenizer, backend = pre_tokenizer_pair
    assert_backend_matches(backend, tokenizer, ["hello, world!! it's 12 ab  \n x--y", " the the  the"])
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


def test_merges_out_of_id_order() -> None:
    # A merge-rank encoder (tiktoken) would merge "a"+"b" first (lower id); HF merges "b"+"c" first.
    tokenizer = byte_level_bpe({"ab": 256, "bc": 257}, [("b", "c"), ("a", "b")], ignore_merges=False)
    assert tokenizer.encode("abc", add_special_tokens=False) == [tokenizer.convert_tokens_to_ids("a"), 257]
    backend = auto(tokenizer)
    assert backend.name == "fastokens"
    assert_backend_matches(backend, tokenizer, ["abc", "xabcab", "ab bc abcabc", "cab"])


def test_entries_the_merges_never_build() -> None:
    # "abc" is in the vocab, but HF's BPE stops at ["a", "bc"]: its merge needs "ab", which "bc" consumed.
    extra = {"bc": 256, "ab": 257, "abc": 258}
    merges = [("b", "c"), ("a", "b"), ("ab", "c")]
    batch = ["abc", "xabc abc", "ab", "abcd"]
    plain = byte_level_bpe(extra, merges, ignore_merges=False)
    backend = load_backend(plain, "fast")
    assert_backend_matches(backend, plain, batch)
    assert 258 not in [token for ids in backend.encode_batch(batch) for token in ids]

    # With ignore_merges HF emits "abc" for the word "abc" but never inside longer words.
    shortcut = byte_level_bpe(extra, merges, ignore_merges=True)
    assert shortcut.encode("abc", add_special_tokens=False) == [258]
    backend = load_backend(shortcut, "fast")
    assert_backend_matches(backend, shortcut, batch)
    assert backend.encode_batch(["abc"]) == [[258]]


def test_added_token_flags(fixture_tokenizer: Any) -> None:
    fixture_tokenizer.add_tokens(
        [
            AddedToken("<mask>", lstrip=True),
            AddedToken("<r>", rstrip=True),
            AddedToken("word", single_word=True),
            AddedToken("<raw>", normalized=False),
        ]
    )
    backend = auto(fixture_tokenizer)
    assert backend.name == "fastokens"
    batch = ["a  <mask>b", "<r>  x", "words word sword word.", " <raw><mask> <r>\n", "\t<mask>\r\n<r>"]
    assert_backend_matches(backend, fixture_tokenizer, batch)


def test_bpe_pre_tokenizer_fastokens_lacks_falls_back_to_hf(fixture_tokenizer: Any) -> None:
    fixture_tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    assert auto(fixture_tokenizer).name == "hf"
    with pytest.raises(ConfigError, match=r"fastokens cannot load it.*Whitespace"):
        load_backend(fixture_tokenizer, "fast")


def test_bpe_dropout_falls_back_to_hf(fixture_tokenizer: Any) -> None:
    fixture_tokenizer.backend_tokenizer.model.dropout = 0.1
    assert auto(fixture_tokenizer).name == "hf"
    with pytest.raises(ConfigError, match="dropout"):
        load_backend(fixture_tokenizer, "fast")


def test_python_side_encoding_falls_back_to_hf(fixture_tokenizer_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    class Shouting(PreTrainedTokenizerFast):
        def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
            return super().encode(text.upper(), *args, **kwargs)

    tokenizer = Shouting.from_pretrained(str(fixture_tokenizer_path), local_files_only=True)
    backend = auto(tokenizer)
    assert backend.name == "hf"
    assert_backend_matches(backend, tokenizer, ["quiet words", "<|im_end|>x"])
    with pytest.raises(ConfigError, match="Shouting changes encoding in Python"):
        load_backend(tokenizer, "fast")


def test_missing_fastokens(
    fixture_pair: tuple[Any, FastokensBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer, _ = fixture_pair
    monkeypatch.setitem(sys.modules, "fastokens", None)
    assert auto(tokenizer).name == "hf"
    with pytest.raises(ConfigError, match="fastokens is not installed"):
        load_backend(tokenizer, "fast")


def test_from_tokenizer_reports_the_reason() -> None:
    with pytest.raises(UnsupportedTokenizer, match="not BPE"):
        FastokensBackend.from_tokenizer(
            wrap(Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
        )


# --------------------------------------------------------------------------------------------------
# Real Qwen2 tokenizer


@pytest.fixture(scope="module")
def qwen2_pair(qwen2_tokenizer_path: Path) -> tuple[Any, FastokensBackend]:
    tokenizer = load_tokenizer(qwen2_tokenizer_path)
    # "fast", not auto: this module-scoped fixture runs before fastokens_only, and auto would
    # pick fastsft's BPE
    backend = load_backend(tokenizer, "fast")
    assert isinstance(backend, FastokensBackend), "fastokens must reproduce Qwen2"
    return tokenizer, backend


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_fastokens_matches_hf_on_qwen2(qwen2_pair: tuple[Any, FastokensBackend], data: st.DataObject) -> None:
    tokenizer, backend = qwen2_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


@pytest.fixture(scope="module")
def fixed_qwen2_pair(qwen2_tokenizer_path: Path) -> tuple[Any, FastokensBackend]:
    tokenizer = load_tokenizer(qwen2_tokenizer_path)
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") is None
    apply_llamafactory_fixes(tokenizer, ["<|im_end|>", "<|eot_id|>"], ["<think>", "Ωmega"])
    # <|eot_id|> is not in the Qwen2 vocab: it gets a new id, as LLaMA-Factory's stop word would.
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") == 151646
    backend = auto(tokenizer)
    assert backend.name == "fastokens"
    return tokenizer, backend


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_fastokens_matches_hf_after_fixes_on_qwen2(
    fixed_qwen2_pair: tuple[Any, FastokensBackend], data: st.DataObject
) -> None:
    tokenizer, backend = fixed_qwen2_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


def test_qwen2_probe_and_long_realistic_text(qwen2_pair: tuple[Any, FastokensBackend]) -> None:
    tokenizer, backend = qwen2_pair
    assert_backend_matches(backend, tokenizer, probe_texts(added_contents(tokenizer)))
    long_text = "".join(FRAGMENTS) * 40
    assert_backend_matches(backend, tokenizer, [long_text, unicodedata.normalize("NFD", long_text)])


# --------------------------------------------------------------------------------------------------
# Meta's Llama 3 tokenizer (scripts/make_llama3_tokenizer.py)


@pytest.fixture(scope="module")
def llama3_pair(llama3_tokenizer_path: Path) -> tuple[Any, FastokensBackend]:
    tokenizer = load_tokenizer(llama3_tokenizer_path)
    # "fast", not auto: this module-scoped fixture runs before fastokens_only, and auto would
    # pick fastsft's BPE
    backend = load_backend(tokenizer, "fast")
    assert isinstance(backend, FastokensBackend), "fastokens must reproduce Llama 3"
    return tokenizer, backend


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_fastokens_matches_hf_on_llama3(
    llama3_pair: tuple[Any, FastokensBackend], data: st.DataObject
) -> None:
    tokenizer, backend = llama3_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


@pytest.fixture(scope="module")
def fixed_llama3_pair(llama3_tokenizer_path: Path) -> tuple[Any, FastokensBackend]:
    tokenizer = load_tokenizer(llama3_tokenizer_path)
    apply_llamafactory_fixes(tokenizer, ["<|eot_id|>", "<|eom_id|>", "<|im_end|>"], ["<think>", "Ωmega"])
    backend = auto(tokenizer)
    assert backend.name == "fastokens"
    return tokenizer, backend


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_fastokens_matches_hf_after_fixes_on_llama3(
    fixed_llama3_pair: tuple[Any, FastokensBackend], data: st.DataObject
) -> None:
    tokenizer, backend = fixed_llama3_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


def test_llama3_tokenizer_is_metas(llama3_pair: tuple[Any, FastokensBackend]) -> None:
    """The built folder has Meta's 128,000 + 256 tokens, BOS/EOS, and digits in groups of three."""
    tokenizer, backend = llama3_pair
    assert len(tokenizer) == 128_256
    assert tokenizer.bos_token == "<|begin_of_text|>" and tokenizer.bos_token_id == 128_000
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.eos_token_id == 128_009
    assert tokenizer.convert_tokens_to_ids("<|reserved_special_token_245|>") == 128_255
    assert len(backend.encode_batch(["1234567"])[0]) == 3
    long_text = "".join(FRAGMENTS) * 40
    assert_backend_matches(backend, tokenizer, [long_text, unicodedata.normalize("NFD", long_text)])
