"""Text encoders (``fastsft.tokenizer.encoders``): fastokens and HF's Rust tokenizer rebuilt from
the JSON must give exactly ``tokenizer.encode(text, add_special_tokens=False)``; ``choose_encoder``
picks one per run, by input size, falling back when an encoder is not exact.

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
from fastsft.tokenizer import encoders
from fastsft.tokenizer.encoders import (
    BREAK_EVEN_CHARS_PER_TOKEN,
    ENV_VAR,
    FASTOKENS_CHARS_PER_TOKEN,
    FastokensEncoder,
    PythonEncoder,
    RustEncoder,
    choose_encoder,
    encoder_for,
    probe_texts,
)
from fastsft.tokenizer.spec import TokenizerSpec

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


def auto(tokenizer: Any, expected_chars: int = 10**12) -> Any:
    """Auto's encoder for ``tokenizer``; by default for an input large enough for fastokens."""
    return encoder_for(tokenizer, "auto", expected_chars=expected_chars)


def rust_json(tokenizer: Any) -> str:
    return tokenizer.backend_tokenizer.to_str()


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
def fixture_pair(fixture_tokenizer_path: Path) -> tuple[Any, FastokensEncoder]:
    tokenizer = load_tokenizer(fixture_tokenizer_path)
    backend = encoder_for(tokenizer, "fast")
    assert isinstance(backend, FastokensEncoder)
    return tokenizer, backend


@given(data=st.data())
@PROPERTY_SETTINGS
def test_fastokens_matches_hf_on_fixture(
    fixture_pair: tuple[Any, FastokensEncoder], data: st.DataObject
) -> None:
    tokenizer, backend = fixture_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


@pytest.fixture(scope="module")
def fixed_fixture_pair(fixture_tokenizer_path: Path) -> tuple[Any, FastokensEncoder]:
    tokenizer = load_tokenizer(fixture_tokenizer_path)
    apply_llamafactory_fixes(tokenizer, ["<|eot_id|>", "<|custom_stop|>"], ["<plain>", "café"])
    return tokenizer, encoder_for(tokenizer, "fast")


@given(data=st.data())
@PROPERTY_SETTINGS
def test_fastokens_matches_hf_after_fixes_on_fixture(
    fixed_fixture_pair: tuple[Any, FastokensEncoder], data: st.DataObject
) -> None:
    tokenizer, backend = fixed_fixture_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


def test_fixes_change_the_added_tokens_the_backend_sees(fixture_tokenizer: Any) -> None:
    before = encoder_for(fixture_tokenizer, "fast")
    apply_llamafactory_fixes(fixture_tokenizer, ["<|im_end|>", "<|custom_stop|>"], ["<plain>"])
    after = encoder_for(fixture_tokenizer, "fast")
    text = "a<|custom_stop|>b<plain>"
    assert before.encode_batch([text]) != after.encode_batch([text])
    assert after.encode_batch([text]) == hf_ids(fixture_tokenizer, [text])
    new_id = fixture_tokenizer.convert_tokens_to_ids("<|custom_stop|>")
    assert new_id in after.encode_batch([text])[0]


def test_split_special_tokens(fixture_tokenizer: Any) -> None:
    fixture_tokenizer.add_tokens(["<plain>"])
    fixture_tokenizer.split_special_tokens = True
    backend = encoder_for(fixture_tokenizer, "fast")
    batch = ["<|im_end|>x<plain>", "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n"]
    assert_backend_matches(backend, fixture_tokenizer, batch)
    assert fixture_tokenizer.convert_tokens_to_ids("<|im_end|>") not in backend.encode_batch(batch)[0]


OVERLAPPING_PLAIN = ["ab", "bc", "\n\n", "\n\n\n", "e\u0301"]
OVERLAPPING_SPECIAL = ["<|x|>", "<|x|>y", "b!"]


@pytest.fixture(scope="module")
def overlapping_pair(fixture_tokenizer_path: Path) -> tuple[Any, FastokensEncoder]:
    """Added tokens a leftmost-longest scan could split differently: "ab"/"bc" overlap, "\n\n" is a prefix
    of "\n\n\n", the special "b!" is cut before the plain (normalised) "ab" is looked for, and the
    normalised "e\u0301" ("é") is matched only after NFC."""
    tokenizer = load_tokenizer(fixture_tokenizer_path)
    tokenizer.add_tokens(OVERLAPPING_PLAIN)
    tokenizer.add_special_tokens({"additional_special_tokens": OVERLAPPING_SPECIAL})
    return tokenizer, encoder_for(tokenizer, "fast")


def test_overlapping_added_tokens(
    overlapping_pair: tuple[Any, FastokensEncoder],
) -> None:
    tokenizer, backend = overlapping_pair
    batch = ["abc", "xbcab", "ab!", "\n\n\n\n", "<|x|>y<|x|>", "e\u0301e\u0301ab", "é", "c\n\n\nab"]
    assert_backend_matches(backend, tokenizer, batch)


@given(batch=st.lists(texts([*OVERLAPPING_PLAIN, *OVERLAPPING_SPECIAL, "é"]), max_size=6))
@settings(max_examples=50, deadline=None)
def test_overlapping_added_tokens_property(
    overlapping_pair: tuple[Any, FastokensEncoder], batch: list[str]
) -> None:
    tokenizer, backend = overlapping_pair
    assert_backend_matches(backend, tokenizer, batch)


def test_single_threaded_backend(fixture_pair: tuple[Any, FastokensEncoder]) -> None:
    tokenizer, backend = fixture_pair
    single = backend.single_threaded()
    assert isinstance(single, FastokensEncoder) and single.name == backend.name
    rng = np.random.default_rng(0)
    batch = ["".join(rng.choice(FRAGMENTS, size=int(n))) for n in rng.integers(0, 60, size=200)]
    assert_backend_matches(single, tokenizer, batch)
    assert_backend_matches(pickle.loads(pickle.dumps(single)), tokenizer, batch)
    hf = RustEncoder(rust_json(tokenizer), False)
    assert hf.single_threaded() is hf
    python = PythonEncoder(tokenizer)
    assert python.single_threaded() is python


def test_a_worker_encoder_is_not_built_in_the_parent(
    fixture_pair: tuple[Any, FastokensEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``single_threaded()`` is pickled to worker processes: the parent neither builds it (1-2 s for a
    real vocabulary) nor sets its one-thread setting in its own environment."""
    import fastokens

    tokenizer, backend = fixture_pair
    builds: list[str] = []
    real = fastokens.Tokenizer.from_json_str
    monkeypatch.setattr(fastokens.Tokenizer, "from_json_str", lambda text: builds.append(text) or real(text))
    monkeypatch.delenv("FASTOKENS_BPE_THREADS", raising=False)
    worker = pickle.dumps(backend.single_threaded())
    assert builds == [] and "FASTOKENS_BPE_THREADS" not in os.environ
    assert_backend_matches(pickle.loads(worker), tokenizer, ["hello world", "数据"])  # built on first use
    assert len(builds) == 1


SINGLE_THREAD_CHILD = """
import os, pickle, sys
backend = pickle.loads(sys.stdin.buffer.read()).single_threaded()
before = len(os.listdir("/proc/self/task"))
backend.encode_batch_flat(["hello world, this is some text " * 40] * 4000)
print(len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_single_threaded_starts_no_threads(fixture_pair: tuple[Any, FastokensEncoder]) -> None:
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


def test_separator_character_inside_text(fixture_pair: tuple[Any, FastokensEncoder]) -> None:
    tokenizer, backend = fixture_pair
    assert_backend_matches(backend, tokenizer, ["a\U0010ffffb", "", "\U0010ffff", "x"])


def test_empty_batch(fixture_pair: tuple[Any, FastokensEncoder]) -> None:
    _, backend = fixture_pair
    ids, offsets = backend.encode_batch_flat([])
    assert ids.tolist() == [] and offsets.tolist() == [0]
    assert backend.encode_batch([]) == []


def test_hf_backend_matches_encode(fixture_pair: tuple[Any, FastokensEncoder]) -> None:
    """HF's Rust tokenizer rebuilt from the spec's JSON (no transformers), batched and per string."""
    tokenizer, _ = fixture_pair
    spec = TokenizerSpec.from_tokenizer(tokenizer, slot_tokens=(), fingerprints={})
    batched = choose_encoder(spec, "hf")
    per_string = choose_encoder(spec, "auto", per_string=True)  # the python path, whatever the kind
    assert isinstance(batched, RustEncoder) and batched.name == "hf"
    assert isinstance(per_string, RustEncoder) and per_string.name == "hf (per string)"
    for backend in (batched, per_string):
        assert_backend_matches(backend, tokenizer, probe_texts(added_contents(tokenizer)))
        assert_backend_matches(backend, tokenizer, [])


def test_backends_pickle(fixture_pair: tuple[Any, FastokensEncoder]) -> None:
    tokenizer, backend = fixture_pair
    batch = probe_texts(added_contents(tokenizer))
    hf = RustEncoder(rust_json(tokenizer), False)
    for original in (backend, hf, RustEncoder(rust_json(tokenizer), False, per_string=True)):
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is type(original) and copy.name == original.name
        assert copy.encode_batch(batch) == original.encode_batch(batch) == hf_ids(tokenizer, batch)


def test_lone_surrogate_is_a_data_error(fixture_pair: tuple[Any, FastokensEncoder]) -> None:
    tokenizer, backend = fixture_pair
    text = rust_json(tokenizer)
    for candidate in (backend, RustEncoder(text, False), RustEncoder(text, False, per_string=True)):
        with pytest.raises(DataError, match="not valid Unicode"):
            candidate.encode_batch(["fine", "bad \ud800 text"])
        with pytest.raises(DataError, match="not valid Unicode"):
            candidate.encode_batch_flat(["fine", "bad \ud800 text"])
    with pytest.raises(DataError, match="not valid Unicode"):
        backend.encode_batch(["cafe\u0301 \udfff"])  # the exact split path


def test_fastokens_builds_on_a_thread(
    fixture_pair: tuple[Any, FastokensEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new fastokens encoder is building, not ready, until its build ends; the first encode waits."""
    import threading

    import fastokens

    tokenizer, _ = fixture_pair
    release = threading.Event()
    build = fastokens.Tokenizer.from_json_str

    def held(text: str) -> Any:
        release.wait(timeout=60)
        return build(text)

    monkeypatch.setattr(fastokens.Tokenizer, "from_json_str", held)
    encoder = FastokensEncoder(rust_json(tokenizer), False)
    assert not encoder.ready
    release.set()
    assert_backend_matches(encoder, tokenizer, ["built on a thread, 数据 <|im_end|>"])
    assert encoder.ready


def test_fastokens_build_error_is_raised_at_first_encode() -> None:
    rust = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    encoder = FastokensEncoder(rust.to_str(), False)  # the build fails on its thread
    with pytest.raises(ConfigError, match=r"fastokens cannot load this tokenizer: .*WordLevel"):
        encoder.encode_batch(["a"])


# --------------------------------------------------------------------------------------------------
# Choosing an encoder: once, before the first batch, by characters of input per vocabulary entry


def test_kind_from_environment(
    fixture_pair: tuple[Any, FastokensEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer, _ = fixture_pair
    monkeypatch.setenv(ENV_VAR, "hf")
    assert isinstance(encoder_for(tokenizer, expected_chars=10**12), RustEncoder)
    assert auto(tokenizer).name == "fastokens"  # an explicit kind wins
    monkeypatch.setenv(ENV_VAR, "fast")
    assert encoder_for(tokenizer).name == "fastokens"
    monkeypatch.setenv(ENV_VAR, "bpe")
    assert encoder_for(tokenizer, expected_chars=10**12).name == "fastsft-bpe"
    monkeypatch.setenv(ENV_VAR, "turbo")
    with pytest.raises(
        ConfigError, match=f"'turbo' is not one of auto, hf, bpe, fast \\(option or {ENV_VAR}\\)"
    ):
        encoder_for(tokenizer)
    monkeypatch.delenv(ENV_VAR)
    assert encoder_for(tokenizer, expected_chars=10**12).name == "fastokens"  # unset: auto


def test_auto_chooses_by_characters_per_vocabulary_entry(
    fixture_pair: tuple[Any, FastokensEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fastokens from FASTOKENS_CHARS_PER_TOKEN, else fastsft's BPE; where the BPE is not exact,
    fastokens from BREAK_EVEN_CHARS_PER_TOKEN, else HF. Each gives HF's ids."""
    tokenizer, _ = fixture_pair
    entries = len(tokenizer)
    batch = probe_texts(added_contents(tokenizer))
    chosen = {
        chars: auto(tokenizer, chars)
        for chars in (0, BREAK_EVEN_CHARS_PER_TOKEN * entries, FASTOKENS_CHARS_PER_TOKEN * entries - 1)
    }
    chosen[FASTOKENS_CHARS_PER_TOKEN * entries] = auto(tokenizer, FASTOKENS_CHARS_PER_TOKEN * entries)
    assert [encoder.name for encoder in chosen.values()] == ["fastsft-bpe"] * 3 + ["fastokens"]
    with monkeypatch.context() as patch:
        patch.setattr(encoders, "_bpe", refused_bpe)
        for chars in (BREAK_EVEN_CHARS_PER_TOKEN * entries - 1, BREAK_EVEN_CHARS_PER_TOKEN * entries):
            chosen[-chars] = auto(tokenizer, chars)
    assert [encoder.name for encoder in chosen.values()][4:] == ["hf", "fastokens"]
    assert isinstance(chosen[-(BREAK_EVEN_CHARS_PER_TOKEN * entries - 1)], RustEncoder)
    for encoder in chosen.values():
        assert_backend_matches(encoder, tokenizer, batch)


def refused_bpe(*args: Any) -> Any:
    raise ConfigError("fastsft-bpe switched off for this test")


def test_auto_logs_its_choice(
    fixture_pair: tuple[Any, FastokensEncoder], caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer, _ = fixture_pair
    entries = len(tokenizer)
    with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.encoders"):
        assert auto(tokenizer, 2000 * entries).name == "fastokens"
        assert auto(tokenizer, 20 * entries).name == "fastsft-bpe"
    assert "tokenizer backend: fastokens (auto, 2000 characters per vocabulary entry)" in caplog.text
    assert "tokenizer backend: fastsft-bpe (auto, 20 characters per vocabulary entry)" in caplog.text


def test_probe_mismatch_falls_back(
    fixture_pair: tuple[Any, FastokensEncoder],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fastsft_cache: Path,
) -> None:
    """An encoder that differs from HF on one probe text is not used (a fresh cache: probed now)."""
    tokenizer, _ = fixture_pair
    original = FastokensEncoder.encode_batch

    def off_by_one_on_emoji(self: FastokensEncoder, batch: list[str]) -> list[list[int]]:
        return [ids[:-1] if "😀" in text else ids for text, ids in zip(batch, original(self, batch))]

    monkeypatch.setattr(FastokensEncoder, "encode_batch", off_by_one_on_emoji)
    with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.encoders"):
        assert auto(tokenizer).name == "fastsft-bpe"
        monkeypatch.setattr(encoders, "_bpe", refused_bpe)
        assert isinstance(auto(tokenizer), RustEncoder)
    assert "fastokens cannot be used: fastokens gives other ids than HF on the probe text" in caplog.text
    with pytest.raises(
        ConfigError,
        match=r"tokenizer backend 'fast' \(fastokens\) cannot reproduce this tokenizer: "
        "fastokens gives other ids than HF on the probe text",
    ):
        encoder_for(tokenizer, "fast")


def test_the_choice_is_kept_for_the_run(fixture_tokenizer: Any, test_data_dir: Path) -> None:
    """``PreparedRun.text_encoder`` chooses once: later calls, and the splits built after, get the
    same encoder whatever their size (nothing switches mid-run)."""
    from fastsft.data.data_args import DataArgs
    from fastsft.data.pipeline import build_dataset, prepare_run

    args = DataArgs(dataset="sharegpt_chat", dataset_dir=str(test_data_dir), template="qwen")
    run = prepare_run(args, fixture_tokenizer, fingerprint=False)
    first = run.text_encoder("compiled", expected_chars=10**12)
    assert first.name == "fastokens"
    assert run.text_encoder("compiled", expected_chars=0) is first
    assert run.encoder(expected_chars=0).text_encoder is first
    assert run.encoder(encode_path="python").text_encoder.name == "hf (per string)"
    _, summary = build_dataset(args, fixture_tokenizer, run=run)  # a few kB: alone, it would get the BPE
    assert summary.tokenizer_backend == "fastokens"
    assert run.text_encoder("compiled") is first


def wrap(rust_tokenizer: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=rust_tokenizer)


def assert_falls_back_to_hf(tokenizer: Any, fast_reason: str, bpe_reason: str) -> None:
    """Auto gives HF's Rust tokenizer for any input size; ``fast`` and ``bpe`` say why not."""
    for chars in (0, 10**12):
        backend = auto(tokenizer, chars)
        assert isinstance(backend, RustEncoder) and backend.name == "hf"
        assert_backend_matches(backend, tokenizer, ["hello worlds!", "unknown ab", ""])
    with pytest.raises(
        ConfigError,
        match=r"tokenizer backend 'fast' \(fastokens\) cannot reproduce this tokenizer: " + fast_reason,
    ):
        encoder_for(tokenizer, "fast")
    with pytest.raises(
        ConfigError,
        match=r"tokenizer backend 'bpe' \(fastsft's byte-level BPE\) cannot reproduce this tokenizer: "
        + bpe_reason,
    ):
        encoder_for(tokenizer, "bpe")


def test_wordpiece_falls_back_to_hf() -> None:
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "##s": 3, "!": 4}
    rust = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    assert_falls_back_to_hf(
        wrap(rust),
        "fastokens cannot load this tokenizer: .*unsupported",
        "fastsft-bpe does not reproduce it: ",
    )


def test_unigram_falls_back_to_hf() -> None:
    rust = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0), ("ab", -1.5)], unk_id=0))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert_falls_back_to_hf(
        wrap(rust), "fastokens cannot load this tokenizer: .*Unigram", "fastsft-bpe does not reproduce it: "
    )


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
) -> tuple[Any, FastokensEncoder]:
    """The fixture tokenizer (rich enough merges to show where pieces end) with another pre-tokenizer."""
    tokenizer = load_tokenizer(fixture_tokenizer_path)
    tokenizer.backend_tokenizer.pre_tokenizer = PRE_TOKENIZERS[request.param]()
    return tokenizer, encoder_for(tokenizer, "fast")


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_other_pre_tokenizers(pre_tokenizer_pair: tuple[Any, FastokensEncoder], data: st.DataObject) -> None:
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
    backend = encoder_for(plain, "fast")
    assert_backend_matches(backend, plain, batch)
    assert 258 not in [token for ids in backend.encode_batch(batch) for token in ids]

    # With ignore_merges HF emits "abc" for the word "abc" but never inside longer words.
    shortcut = byte_level_bpe(extra, merges, ignore_merges=True)
    assert shortcut.encode("abc", add_special_tokens=False) == [258]
    backend = encoder_for(shortcut, "fast")
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
    assert_falls_back_to_hf(
        fixture_tokenizer,
        "fastokens cannot load this tokenizer: .*Whitespace",
        "fastsft-bpe does not reproduce it: pre-tokenizer is not Split then ByteLevel",
    )


def test_bpe_dropout_falls_back_to_hf(fixture_tokenizer: Any) -> None:
    """With dropout HF's ids are random: both compiled encoders refuse it by name (a probe could
    pass by chance at a small dropout)."""
    fixture_tokenizer.backend_tokenizer.model.dropout = 1e-9  # a probe would pass
    for chars in (0, 10**12):
        assert isinstance(auto(fixture_tokenizer, chars), RustEncoder)
    with pytest.raises(ConfigError, match=r"'fast' .* BPE dropout is set"):
        encoder_for(fixture_tokenizer, "fast")
    with pytest.raises(ConfigError, match=r"'bpe' .* BPE dropout is set"):
        encoder_for(fixture_tokenizer, "bpe")


def test_python_side_encoding_falls_back_to_hf(fixture_tokenizer_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    class Shouting(PreTrainedTokenizerFast):
        def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
            return super().encode(text.upper(), *args, **kwargs)

    tokenizer = Shouting.from_pretrained(str(fixture_tokenizer_path), local_files_only=True)
    spec = TokenizerSpec.from_tokenizer(tokenizer, slot_tokens=(), fingerprints={})
    assert spec.backend_json is None and spec.backend_digest is None
    for chars in (0, 10**12):
        backend = auto(tokenizer, chars)
        assert isinstance(backend, PythonEncoder) and backend.name == "hf (python tokenizer)"
        assert_backend_matches(backend, tokenizer, ["quiet words", "<|im_end|>x"])
    assert backend.encode_batch(["quiet"]) != RustEncoder(rust_json(tokenizer), False).encode_batch(["quiet"])
    for kind in ("fast", "bpe"):
        with pytest.raises(ConfigError, match=f"'{kind}' needs a Rust-backed .*this one encodes in Python"):
            encoder_for(tokenizer, kind)
    with pytest.raises(ValueError, match="pass it"):
        choose_encoder(spec, "auto")  # the spec alone cannot encode


def test_missing_fastokens(
    fixture_pair: tuple[Any, FastokensEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without fastokens, auto takes the BPE where fastokens would pay, and HF where the BPE is not exact."""
    import importlib.metadata

    tokenizer, _ = fixture_pair
    installed = importlib.metadata.version

    def version(name: str) -> str:
        if name == "fastokens":
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setitem(sys.modules, "fastokens", None)
    assert auto(tokenizer).name == "fastsft-bpe"
    with pytest.raises(ConfigError, match=r"'fast' .* fastokens is not installed"):
        encoder_for(tokenizer, "fast")
    monkeypatch.setattr(encoders, "_bpe", refused_bpe)
    assert isinstance(auto(tokenizer), RustEncoder)


def test_a_failed_fastokens_import_is_not_kept_as_a_verdict(
    fixture_pair: tuple[Any, FastokensEncoder], monkeypatch: pytest.MonkeyPatch, fastsft_cache: Path
) -> None:
    """fastokens installed but not importable is this environment's fault: refused now, and used
    once it imports again (not recorded as the tokenizer's verdict)."""
    tokenizer, _ = fixture_pair
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "fastokens", None)
        with pytest.raises(ConfigError, match=r"'fast' .* fastokens cannot be imported"):
            encoder_for(tokenizer, "fast")
        assert auto(tokenizer).name == "fastsft-bpe"
    assert_backend_matches(encoder_for(tokenizer, "fast"), tokenizer, ["imports again"])


# --------------------------------------------------------------------------------------------------
# Real Qwen2 tokenizer


@pytest.fixture(scope="module")
def qwen2_pair(qwen2_tokenizer_path: Path) -> tuple[Any, FastokensEncoder]:
    tokenizer = load_tokenizer(qwen2_tokenizer_path)
    backend = encoder_for(tokenizer, "fast")
    assert isinstance(backend, FastokensEncoder), "fastokens must reproduce Qwen2"
    return tokenizer, backend


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_fastokens_matches_hf_on_qwen2(qwen2_pair: tuple[Any, FastokensEncoder], data: st.DataObject) -> None:
    tokenizer, backend = qwen2_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


@pytest.fixture(scope="module")
def fixed_qwen2_pair(qwen2_tokenizer_path: Path) -> tuple[Any, FastokensEncoder]:
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
    fixed_qwen2_pair: tuple[Any, FastokensEncoder], data: st.DataObject
) -> None:
    tokenizer, backend = fixed_qwen2_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


def test_qwen2_probe_and_long_realistic_text(qwen2_pair: tuple[Any, FastokensEncoder]) -> None:
    tokenizer, backend = qwen2_pair
    assert_backend_matches(backend, tokenizer, probe_texts(added_contents(tokenizer)))
    long_text = "".join(FRAGMENTS) * 40
    assert_backend_matches(backend, tokenizer, [long_text, unicodedata.normalize("NFD", long_text)])


# --------------------------------------------------------------------------------------------------
# Meta's Llama 3 tokenizer (scripts/make_llama3_tokenizer.py)


@pytest.fixture(scope="module")
def llama3_pair(llama3_tokenizer_path: Path) -> tuple[Any, FastokensEncoder]:
    tokenizer = load_tokenizer(llama3_tokenizer_path)
    backend = encoder_for(tokenizer, "fast")
    assert isinstance(backend, FastokensEncoder), "fastokens must reproduce Llama 3"
    return tokenizer, backend


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_fastokens_matches_hf_on_llama3(
    llama3_pair: tuple[Any, FastokensEncoder], data: st.DataObject
) -> None:
    tokenizer, backend = llama3_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


@pytest.fixture(scope="module")
def fixed_llama3_pair(llama3_tokenizer_path: Path) -> tuple[Any, FastokensEncoder]:
    tokenizer = load_tokenizer(llama3_tokenizer_path)
    apply_llamafactory_fixes(tokenizer, ["<|eot_id|>", "<|eom_id|>", "<|im_end|>"], ["<think>", "Ωmega"])
    backend = auto(tokenizer)
    assert backend.name == "fastokens"
    return tokenizer, backend


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_fastokens_matches_hf_after_fixes_on_llama3(
    fixed_llama3_pair: tuple[Any, FastokensEncoder], data: st.DataObject
) -> None:
    tokenizer, backend = fixed_llama3_pair
    batch = data.draw(st.lists(texts(added_contents(tokenizer)), max_size=6))
    assert_backend_matches(backend, tokenizer, batch)


def test_llama3_tokenizer_is_metas(llama3_pair: tuple[Any, FastokensEncoder]) -> None:
    """The built folder has Meta's 128,000 + 256 tokens, BOS/EOS, and digits in groups of three."""
    tokenizer, backend = llama3_pair
    assert len(tokenizer) == 128_256
    assert tokenizer.bos_token == "<|begin_of_text|>" and tokenizer.bos_token_id == 128_000
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.eos_token_id == 128_009
    assert tokenizer.convert_tokens_to_ids("<|reserved_special_token_245|>") == 128_255
    assert len(backend.encode_batch(["1234567"])[0]) == 3
    long_text = "".join(FRAGMENTS) * 40
    assert_backend_matches(backend, tokenizer, [long_text, unicodedata.normalize("NFD", long_text)])
