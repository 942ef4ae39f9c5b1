"""The text encoder of a warm run: the verdict recorded beside the spec's tokenizer.json decides
without a probe. A pass builds fastokens straight from the saved JSON on a background thread,
without the HF Rust tokenizer; a fail is replayed with its reason."""

from __future__ import annotations

import json
import logging
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from conftest import load_tokenizer as real
from conftest import pretend_upgraded

from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import prepare_run
from fastsft.errors import ConfigError
from fastsft.safe_output import MARKER
from fastsft.tokenizer import encoders
from fastsft.tokenizer.cache import cache_dir, read_checked
from fastsft.tokenizer.encoders import FastokensEncoder, RustEncoder, choose_encoder, probe_texts
from fastsft.tokenizer.spec import TokenizerSpec

DATASETS = "sharegpt_chat,alpaca_mix,sharegpt_tools"
LARGE = 10**12  # characters: auto tries fastokens first


def warm_spec(path: Path, template: str = "llama3") -> TokenizerSpec:
    """The spec of ``path`` fixed for ``template`` as a warm run reads it (saved first if need be)."""
    prepare_run(DataArgs(template=template), str(path))
    run = prepare_run(DataArgs(template=template), str(path))
    assert run.tokenizer is None
    return run.spec


def recorded(path: Path) -> TokenizerSpec:
    """A warm spec of ``path`` with a fastokens pass verdict recorded (by a cold run's probe)."""
    spec = warm_spec(path)
    choose_encoder(spec, "fast").encode_batch(["x"])
    assert list(fastokens_verdicts().values()) == [True]
    return warm_spec(path)


def verdicts() -> dict[str, Any]:
    """Every verdict recorded in this test's cache, by encoder and conditions."""
    found: dict[str, Any] = {}
    for path in (cache_dir() / "tokenizer_json").glob("*.verdicts.json"):
        found.update(read_checked(path))
    return found


def fastokens_verdicts() -> dict[str, Any]:
    return {name: value for name, value in verdicts().items() if name.startswith("fastokens")}


def reference(path: Path, texts: list[str]) -> list[list[int]]:
    tokenizer = real(path)
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def counted_probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the encoders probed from now on."""
    probed: list[str] = []
    probe = encoders._probe

    def counting(candidate: Any, *args: Any) -> None:
        probed.append(candidate.name)
        probe(candidate, *args)

    monkeypatch.setattr(encoders, "_probe", counting)
    return probed


def no_rust_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError("the HF Rust tokenizer was built or a probe ran")

    monkeypatch.setattr(tokenizers.Tokenizer, "from_str", refuse)
    monkeypatch.setattr(encoders, "_probe", refuse)


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


# chatglm3 has {"token": ...} slots: their ids come from the spec.
@pytest.mark.parametrize(("kind", "template"), [("auto", "llama3"), ("fast", "llama3"), ("auto", "chatglm3")])
def test_a_warm_run_with_a_pass_verdict_builds_no_rust_tokenizer_and_writes_the_same_rows(
    kind: str,
    template: str,
    fixture_tokenizer_path: Path,
    tmp_path: Path,
    fastsft_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastsft.data import pipeline

    monkeypatch.setattr(encoders, "FASTOKENS_CHARS_PER_TOKEN", 0)  # auto: fastokens for any input
    expected = built_rows(
        tmp_path / "real", real(fixture_tokenizer_path), template=template, tokenizer_backend="hf"
    )
    cold = built_rows(
        tmp_path / "cold", str(fixture_tokenizer_path), template=template, tokenizer_backend=kind
    )
    assert cold == expected
    assert list(verdicts().values()) == [True]  # fastokens' pass; the BPE was not needed
    no_rust_tokenizer(monkeypatch)
    monkeypatch.setattr(
        pipeline, "load_tokenizer", lambda *args: pytest.fail("the real tokenizer was loaded")
    )
    with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.encoders"):
        warm = built_rows(
            tmp_path / "warm", str(fixture_tokenizer_path), template=template, tokenizer_backend=kind
        )
    assert warm == expected
    assert kind == "fast" or "tokenizer backend: fastokens" in caplog.text


def test_a_verdict_holds_for_every_spec_with_the_same_json(
    fixture_tokenizer_path: Path, fastsft_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Templates whose fixes leave the tokenizer.json alone (llama3 and alpaca on the fixture
    tokenizer, which has llama3's tokens) share its verdicts."""
    first = recorded(fixture_tokenizer_path)
    other = warm_spec(fixture_tokenizer_path, "alpaca")
    assert other.backend_digest == first.backend_digest and other != first
    no_rust_tokenizer(monkeypatch)
    expected = reference(fixture_tokenizer_path, ["Hello world"])
    assert choose_encoder(other, "fast").encode_batch(["Hello world"]) == expected
    assert len(verdicts()) == 1


@pytest.fixture
def held_build(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """fastokens builds on background threads wait for the returned event (builds in the calling
    thread do not)."""
    import fastokens

    release = threading.Event()
    built = fastokens.Tokenizer

    class Held:
        @staticmethod
        def from_json_str(text: str) -> Any:
            if threading.current_thread() is not threading.main_thread():
                assert release.wait(30)
            return built.from_json_str(text)

    monkeypatch.setattr(fastokens, "Tokenizer", Held)
    yield release
    release.set()  # never leave a build waiting


@pytest.mark.parametrize("kind", ["auto", "fast"])
def test_a_pass_verdict_builds_fastokens_on_a_background_thread_without_a_probe(
    kind: str,
    fixture_tokenizer_path: Path,
    fastsft_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    held_build: threading.Event,
) -> None:
    spec = recorded(fixture_tokenizer_path)
    no_rust_tokenizer(monkeypatch)
    encoder = choose_encoder(spec, kind, expected_chars=LARGE)
    assert isinstance(encoder, FastokensEncoder) and encoder.name == "fastokens"
    assert not encoder.ready  # built on its thread, held
    texts = probe_texts(["<|eot_id|>"])
    expected = reference(fixture_tokenizer_path, texts)
    copy = pickle.loads(pickle.dumps(encoder))  # mid-build: the copy builds its own
    assert copy.encode_batch(texts) == expected and copy.ready
    held_build.set()
    assert encoder.encode_batch(texts) == expected
    assert encoder.ready
    assert RustEncoder(spec.backend_json or "", False).ready  # nothing to wait for


def refusing(message: str) -> type:
    class Refusing:
        @staticmethod
        def from_json_str(text: str) -> Any:
            raise ValueError(message)

    return Refusing


def test_an_error_in_the_background_build_is_raised_at_first_encode_as_the_synchronous_one(
    fixture_tokenizer_path: Path, fastsft_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastokens
    from tokenizers import models

    wordpiece = tokenizers.Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).to_str()
    synchronous = FastokensEncoder(wordpiece, False, background=False)
    with pytest.raises(ConfigError) as sync_error:
        synchronous.encode_batch(["a"])
    background = FastokensEncoder(wordpiece, False)  # no error until it is used
    with pytest.raises(ConfigError) as raised:
        background.encode_batch(["a"])
    assert str(raised.value) == str(sync_error.value)
    assert "fastokens cannot load this tokenizer" in str(raised.value)

    # A pass verdict whose build then fails: the run's encoder raises at its first encode.
    spec = recorded(fixture_tokenizer_path)
    monkeypatch.setattr(fastokens, "Tokenizer", refusing("refused in the test"))
    with pytest.raises(ConfigError) as sync_error:
        FastokensEncoder(spec.backend_json or "", False, background=False).encode_batch(["hello"])
    fast = choose_encoder(spec, "fast")
    with pytest.raises(ConfigError) as background_error:
        fast.encode_batch(["hello"])
    assert str(background_error.value) == str(sync_error.value)
    assert "refused in the test" in str(sync_error.value)


def test_a_recorded_fail_verdict_is_replayed(
    fixture_tokenizer_path: Path,
    fastsft_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = warm_spec(fixture_tokenizer_path)
    original = FastokensEncoder.encode_batch

    def off_by_one_on_emoji(self: FastokensEncoder, batch: list[str]) -> list[list[int]]:
        return [ids[:-1] if "😀" in text else ids for text, ids in zip(batch, original(self, batch))]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FastokensEncoder, "encode_batch", off_by_one_on_emoji)
        with pytest.raises(ConfigError, match=r"'fast'.*other ids than HF on the probe text"):
            choose_encoder(spec, "fast")
    [verdict] = fastokens_verdicts().values()
    assert "other ids than HF on the probe text" in verdict
    # A probe now would pass: the recorded verdict decides.
    probed = counted_probes(monkeypatch)
    with pytest.raises(ConfigError, match=r"'fast'.*other ids than HF.*recorded with the tokenizer"):
        choose_encoder(warm_spec(fixture_tokenizer_path), "fast")
    with caplog.at_level(logging.INFO, logger="fastsft.tokenizer.encoders"):
        auto = choose_encoder(warm_spec(fixture_tokenizer_path), "auto", expected_chars=LARGE)
    assert "fastokens cannot be used" in caplog.text and "recorded with the tokenizer" in caplog.text
    assert auto.name != "fastokens" and "fastokens" not in probed
    assert auto.encode_batch(["hello 😀"]) == reference(fixture_tokenizer_path, ["hello 😀"])


@pytest.mark.parametrize(
    ("package", "kind"),
    [
        ("fastokens", "fast"),
        ("tokenizers", "fast"),
        ("tokenizers", "bpe"),
        ("fastsft", "fast"),
        ("fastsft", "bpe"),
    ],
)
def test_a_verdict_of_another_version_is_not_reused(
    package: str,
    kind: str,
    fixture_tokenizer_path: Path,
    fastsft_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A verdict holds for the encoder's version, fastsft's (which wraps it, or is it) and the
    tokenizers version whose ids it compared with (HF's reference): after an upgrade of any, the
    encoder is probed again."""
    spec = warm_spec(fixture_tokenizer_path)
    choose_encoder(spec, kind)  # probed, recorded
    [first] = verdicts()
    pretend_upgraded(monkeypatch, package)
    probed = counted_probes(monkeypatch)
    encoder = choose_encoder(spec, kind)
    assert len(probed) == 1
    assert encoder.encode_batch(["Hello world"]) == reference(fixture_tokenizer_path, ["Hello world"])
    assert len(verdicts()) == 2 and first in verdicts()


@pytest.mark.parametrize("lost", ["verdicts", "tokenizer.json"])
def test_a_pass_verdict_without_its_file_probes_again(
    lost: str, fixture_tokenizer_path: Path, fastsft_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the verdicts file the encoder is probed again. Without the saved tokenizer.json the
    spec is made again from the real tokenizer, and the JSON with it: the verdict, about exactly that
    text (its digest names the file), then holds."""
    spec = recorded(fixture_tokenizer_path)
    digest = spec.backend_digest or ""
    saved = encoders.json_derived(digest, "verdicts.json")
    if lost == "tokenizer.json":
        saved = saved.with_name(f"{digest}.json")
    saved.unlink()
    probed = counted_probes(monkeypatch)
    run = prepare_run(DataArgs(template="llama3"), str(fixture_tokenizer_path))
    assert (run.tokenizer is not None) == (lost == "tokenizer.json")
    encoder = choose_encoder(run.spec, "fast")
    assert probed == (["fastokens"] if lost == "verdicts" else [])
    assert saved.is_file()
    texts = probe_texts(["<|eot_id|>"])
    assert encoder.encode_batch(texts) == reference(fixture_tokenizer_path, texts)
