"""The tokenizer backend of a warm run: a replayed snapshot with a recorded fastokens verdict builds
fastokens from the recorded JSON on a background thread, without the HF Rust tokenizer or the probe."""

from __future__ import annotations

import json
import logging
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tokenizers

from fastsft.data.data_args import DataArgs
from fastsft.errors import ConfigError
from fastsft.safe_output import MARKER
from fastsft.tokenizer import backends
from fastsft.tokenizer.backends import (
    AutoBackend,
    FastokensBackend,
    HFBackend,
    UnsupportedTokenizer,
    load_backend,
    probe_texts,
)
from fastsft.tokenizer.cache import read_checked
from fastsft.tokenizer.loader import CACHE_ENV_VAR, load_tokenizer
from fastsft.tokenizer.snapshot import FOLDER, TokenizerSnapshot

# These tests are about fastokens (its background build, its place in auto); fastsft's own BPE,
# which auto tries first, has its own in tests/test_bpe_backend.py.
pytestmark = pytest.mark.usefixtures("fastokens_only")

DATASETS = "sharegpt_chat,alpaca_mix,sharegpt_tools"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each load as in a new process: no backend verified earlier in this one."""
    monkeypatch.setattr(backends, "_VERIFIED", {})


def real(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def snapshot(path: Path) -> TokenizerSnapshot:
    loaded = load_tokenizer(str(path), snapshot=True)
    assert isinstance(loaded, TokenizerSnapshot)
    return loaded


def recorded(path: Path) -> TokenizerSnapshot:
    """A replaying snapshot of ``path`` whose state has a fastokens verdict recorded (a cold run first)."""
    load_backend(snapshot(path), "fast")
    backends._VERIFIED.clear()
    replayed = snapshot(path)
    assert replayed.replaying
    return replayed


def verdicts(cache: Path) -> dict[str, Any]:
    """Every recorded fastokens verdict, by name."""
    found: dict[str, Any] = {}
    for record in (cache / FOLDER).glob("*/record.json"):
        for values in read_checked(record)["derived"].values():
            found.update({name: value for name, value in values.items() if name.startswith("fastokens")})
    return found


def no_rust_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError("the HF Rust tokenizer was built")

    monkeypatch.setattr(tokenizers.Tokenizer, "from_str", refuse)
    monkeypatch.setattr(backends, "_probe_fastokens_backend", refuse)


def built_rows(output: Path, tokenizer: Any, **options: Any) -> tuple[Any, Any]:
    from datasets import load_from_disk

    from fastsft.data.pipeline import build_to_disk

    # skip_malformed: chatglm3 refuses the parallel function calls of sharegpt_tools.
    args = DataArgs(
        dataset=DATASETS, dataset_dir=str(Path(__file__).parent / "data"), skip_malformed=True, **options
    )
    build_to_disk(args, tokenizer, output)
    marker = json.loads((output / MARKER).read_text())["tokenizer"]
    return load_from_disk(str(output))["train"].to_dict(), marker


# chatglm3 has {"token": ...} slots: their ids are looked up (SpecialTokens.from_tokenizer).
@pytest.mark.parametrize(("kind", "template"), [("auto", "llama3"), ("fast", "llama3"), ("auto", "chatglm3")])
def test_a_warm_replay_builds_no_rust_tokenizer_and_writes_the_same_rows(
    kind: str,
    template: str,
    fixture_tokenizer_path: Path,
    tmp_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(backends, "BREAK_EVEN_CHARS_PER_TOKEN", 0)  # auto: fastokens from the start
    expected = built_rows(tmp_path / "real", real(fixture_tokenizer_path), template=template)
    cold = built_rows(
        tmp_path / "cold", snapshot(fixture_tokenizer_path), template=template, tokenizer_backend=kind
    )
    assert cold == expected
    assert [value["exact"] for value in verdicts(cache).values()] == [True]
    backends._VERIFIED.clear()
    no_rust_tokenizer(monkeypatch)
    warm = snapshot(fixture_tokenizer_path)
    with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.backends"):
        assert built_rows(tmp_path / "warm", warm, template=template, tokenizer_backend=kind) == expected
    assert warm.replaying
    assert "tokenizer backend: fastokens" in caplog.text


def test_a_verdict_holds_for_every_state_with_the_same_json(
    fixture_tokenizer_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verdict taken as loaded is found after a change that leaves the Rust JSON alone (``pad_token``,
    as LLaMA-Factory's fixes set it): ``fastsft preprocess`` starts the build before the template's
    fixes, and the encoder asks again after them."""
    live = snapshot(fixture_tokenizer_path)
    live.pad_token = live.eos_token  # recorded: the change and the state it leads to
    load_backend(snapshot(fixture_tokenizer_path), "fast")  # the verdict, taken in the first state
    backends._VERIFIED.clear()
    no_rust_tokenizer(monkeypatch)
    warm = snapshot(fixture_tokenizer_path)
    warm.pad_token = warm.eos_token
    assert warm.replaying
    expected = real(fixture_tokenizer_path).encode("Hello world", add_special_tokens=False)
    assert load_backend(warm, "fast").encode_batch(["Hello world"]) == [expected]
    assert len(verdicts(cache)) == 1


def test_slot_token_lookups_are_replayed_from_the_record(fixture_tokenizer_path: Path, cache: Path) -> None:
    tokens = ["<|eot_id|>", "<|start_header_id|>", "no such token"]
    reference = real(fixture_tokenizer_path)
    expected = [reference.convert_tokens_to_ids(token) for token in tokens]
    cold = snapshot(fixture_tokenizer_path)
    assert [cold.convert_tokens_to_ids(token) for token in tokens] == expected
    assert cold.convert_tokens_to_ids(tokens) == expected
    warm = snapshot(fixture_tokenizer_path)
    warm_lookups = [warm.convert_tokens_to_ids(token) for token in tokens], warm.convert_tokens_to_ids(tokens)
    assert warm._rust is None  # answered from the record
    assert warm_lookups == (expected, expected)
    assert warm.convert_tokens_to_ids(["<|begin_of_text|>"]) == [
        reference.convert_tokens_to_ids("<|begin_of_text|>")
    ]  # not recorded: from the Rust tokenizer, then recorded
    assert snapshot(fixture_tokenizer_path).convert_tokens_to_ids("<|begin_of_text|>") == (
        reference.convert_tokens_to_ids("<|begin_of_text|>")
    )


def test_a_warm_replay_loads_fastokens_in_the_background(fixture_tokenizer_path: Path, cache: Path) -> None:
    warm = recorded(fixture_tokenizer_path)
    backend = load_backend(warm, "auto", expected_chars=10**12)
    assert isinstance(backend, AutoBackend) and backend._hf is None  # no HF backend made
    assert backend.name == "fastokens"
    texts = probe_texts(["<|eot_id|>"])
    reference = real(fixture_tokenizer_path)
    assert backend.encode_batch(texts) == [reference.encode(text, add_special_tokens=False) for text in texts]
    assert backend.ready and warm.replaying and warm._rust is None


def fail_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    original = FastokensBackend.encode_batch

    def off_by_one_on_emoji(self: FastokensBackend, batch: list[str]) -> list[list[int]]:
        return [ids[:-1] if "😀" in text else ids for text, ids in zip(batch, original(self, batch))]

    monkeypatch.setattr(FastokensBackend, "encode_batch", off_by_one_on_emoji)


def test_a_recorded_fail_verdict_is_replayed(
    fixture_tokenizer_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        fail_probe(patch)
        assert load_backend(snapshot(fixture_tokenizer_path), "auto", expected_chars=10**12).name == "hf"
    [verdict] = verdicts(cache).values()
    assert verdict["exact"] is False and "other ids than HF on the probe text" in verdict["reason"]
    backends._VERIFIED.clear()
    with pytest.MonkeyPatch.context() as patch:  # a probe now would pass: the verdict decides
        patch.setattr(backends, "_probe_fastokens_backend", lambda *args: pytest.fail("probed again"))
        with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.backends"):
            backend = load_backend(snapshot(fixture_tokenizer_path), "auto", expected_chars=10**12)
        assert "other ids than HF on the probe text" in caplog.text and "recorded" in caplog.text
        assert backend.name == "hf"
        reference = real(fixture_tokenizer_path)
        assert backend.encode_batch(["hello 😀"]) == [reference.encode("hello 😀", add_special_tokens=False)]
        with pytest.raises(ConfigError, match=r"'fast'.*other ids than HF on the probe text"):
            load_backend(snapshot(fixture_tokenizer_path), "fast")


def test_a_verdict_of_another_fastokens_version_is_not_reused(
    fixture_tokenizer_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    recorded(fixture_tokenizer_path)
    [first] = verdicts(cache)
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        return "999.0" if name == "fastokens" else real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    probes: list[Any] = []
    probe = backends._probe_fastokens_backend
    monkeypatch.setattr(backends, "_probe_fastokens_backend", lambda *args: probes.append(1) or probe(*args))
    assert load_backend(snapshot(fixture_tokenizer_path), "fast").name == "fastokens"
    assert probes == [1]
    assert sorted(verdicts(cache)) == sorted([first, first.replace(first.split()[2], "999.0")])


@pytest.fixture
def held_build(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Background builds wait for the returned event (builds in the calling thread do not)."""
    release = threading.Event()
    build = backends._fastokens_encoder

    def held(*args: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            assert release.wait(30)
        return build(*args)

    monkeypatch.setattr(backends, "_fastokens_encoder", held)
    return release


def test_ready_turns_true_once_built_and_a_backend_pickles_mid_build(
    fixture_tokenizer_path: Path, held_build: threading.Event
) -> None:
    reference = real(fixture_tokenizer_path)
    texts = probe_texts(["<|eot_id|>"])
    expected = [reference.encode(text, add_special_tokens=False) for text in texts]
    backend = FastokensBackend(reference.backend_tokenizer.to_str(), False)
    assert backend.ready  # nothing under way: the first encode builds it
    assert backend.start_build() is backend
    assert not backend.ready
    copy = pickle.loads(pickle.dumps(backend))  # mid-build
    assert copy.encode_batch(texts) == expected
    held_build.set()
    assert backend.encode_batch(texts) == expected
    assert backend.ready
    assert HFBackend(reference).ready


def refusing(message: str) -> Callable[..., Any]:
    def refuse(*args: Any) -> Any:
        raise UnsupportedTokenizer(message)

    return refuse


def test_an_error_in_the_background_build_is_raised_as_the_synchronous_one(
    fixture_tokenizer_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tokenizers import models

    wordpiece = tokenizers.Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).to_str()
    with pytest.raises(UnsupportedTokenizer) as synchronous:
        FastokensBackend(wordpiece, False).encode_batch(["a"])
    background = FastokensBackend(wordpiece, False).start_build()
    with pytest.raises(UnsupportedTokenizer) as raised:
        background.encode_batch(["a"])
    assert str(raised.value) == str(synchronous.value) and "fastokens cannot load it" in str(raised.value)

    # A pass verdict whose build then fails: "fast" raises load_backend's ConfigError, "auto" uses HF.
    warm = recorded(fixture_tokenizer_path)
    monkeypatch.setattr(backends, "_fastokens_encoder", refusing("refused in the test"))
    with pytest.raises(ConfigError) as sync_error:
        load_backend(real(fixture_tokenizer_path), "fast")
    fast = load_backend(warm, "fast")
    with pytest.raises(ConfigError) as background_error:
        fast.encode_batch(["hello"])
    assert str(background_error.value) == str(sync_error.value)
    assert "refused in the test" in str(sync_error.value)
    auto = load_backend(warm, "auto", expected_chars=10**12)
    with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.backends"):
        ids = auto.encode_batch(["hello"])
    assert ids == [real(fixture_tokenizer_path).encode("hello", add_special_tokens=False)]
    assert auto.name == "hf" and "refused in the test" in caplog.text


def test_auto_keeps_hf_until_a_background_build_is_ready(
    fixture_tokenizer_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, held_build: threading.Event
) -> None:
    warm = recorded(fixture_tokenizer_path)
    monkeypatch.setattr(backends, "BREAK_EVEN_CHARS_PER_TOKEN", 1 / len(warm))  # one character
    backend = load_backend(warm, "auto")
    reference = real(fixture_tokenizer_path)
    for _ in range(2):  # the first batch reaches the break-even point; the build is held
        assert backend.encode_batch(["hello"]) == [reference.encode("hello", add_special_tokens=False)]
        assert backend.name == "hf" and backend.ready
    held_build.set()
    backend._fast._build._thread.join()
    assert backend.encode_batch(["hello"]) == [reference.encode("hello", add_special_tokens=False)]
    assert backend.name == "hf, then fastokens"


def test_auto_is_ready_once_its_background_build_is(
    fixture_tokenizer_path: Path, cache: Path, held_build: threading.Event
) -> None:
    backend = load_backend(recorded(fixture_tokenizer_path), "auto", expected_chars=10**12)
    assert backend.name == "fastokens" and not backend.ready
    held_build.set()
    assert backend.encode_batch(["hello"]) == [
        real(fixture_tokenizer_path).encode("hello", add_special_tokens=False)
    ]
    assert backend.ready


def test_a_pass_verdict_without_its_json_file_probes_as_before(
    fixture_tokenizer_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = recorded(fixture_tokenizer_path)
    for backend_json in (cache / FOLDER).glob("*/[0-9a-f]*.json"):
        backend_json.unlink()
    probes: list[Any] = []
    probe = backends._probe_fastokens_backend
    monkeypatch.setattr(backends, "_probe_fastokens_backend", lambda *args: probes.append(1) or probe(*args))
    backend = load_backend(warm, "fast")
    assert probes == [1] and not warm.replaying  # the real tokenizer, probed
    reference = real(fixture_tokenizer_path)
    texts = probe_texts(["<|eot_id|>"])
    assert backend.encode_batch(texts) == [reference.encode(text, add_special_tokens=False) for text in texts]


def test_a_large_lookup_is_answered_but_not_recorded(fixture_tokenizer_path: Path, cache: Path) -> None:
    from fastsft.tokenizer import snapshot as snapshot_module

    reference = real(fixture_tokenizer_path)
    tokens = [reference.convert_ids_to_tokens(index) for index in range(len(reference))]
    assert len(tokens) > snapshot_module._MAX_TOKEN_IDS
    cold = snapshot(fixture_tokenizer_path)
    assert cold.convert_tokens_to_ids(tokens) == reference.convert_tokens_to_ids(tokens)
    [record] = (cache / FOLDER).glob("*/record.json")
    assert "convert_tokens_to_ids" not in json.dumps(read_checked(record)["derived"])
