"""``fastsft.tokenizer.spec``: a spec read back from fastsft's cache is the one the real tokenizer,
fixed for the same template, gives, and encodes as it does; what cannot be kept is not kept, and
damaged files are made again."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import load_tokenizer as real
from conftest import pretend_upgraded

from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import PreparedRun, prepare_run
from fastsft.errors import ConfigError
from fastsft.tokenizer.encoders import PythonEncoder, choose_encoder, probe_texts

# Templates that leave the tokenizer as it is, replace eos, add stop words (one or several), set
# pad, set a jinja chat template, or look up {"token": ...} slots (chatglm3, yuan).
TEMPLATES = [
    "qwen", "llama3", "chatml", "glm4", "glm4v", "alpaca", "default", "empty", "mistral", "llama4", "chatglm3",
    "yuan",
]  # fmt: skip
REAL_TEMPLATES = ["qwen", "llama3", "glm4v"]  # for the large tokenizers, where each load takes seconds


def run_of(tokenizer: Any, template: str | None) -> PreparedRun:
    return prepare_run(DataArgs(template=template), tokenizer)


def reference_ids(run: PreparedRun) -> tuple[list[str], list[list[int]]]:
    """The probe texts of the run's real, fixed tokenizer, and its ids for each."""
    tokenizer = run.tokenizer
    assert tokenizer is not None
    texts = probe_texts(sorted(tokenizer.get_added_vocab()))
    return texts, [tokenizer.encode(text, add_special_tokens=False) for text in texts]


@pytest.mark.parametrize("which", ["fixture", "qwen2", "llama3"])
def test_a_saved_spec_is_the_real_tokenizers_and_encodes_as_it_does(
    which: str, request: pytest.FixtureRequest, fastsft_cache: Path
) -> None:
    path = request.getfixturevalue(f"{which}_tokenizer_path")
    # fastsft's BPE and fastokens too on the small tokenizer (their parity on the large ones is
    # tests/test_bpe_backend.py's and tests/test_parity_property.py's).
    kinds = ["hf", "bpe", "fast"] if which == "fixture" else ["hf"]
    for template in TEMPLATES if which == "fixture" else REAL_TEMPLATES:
        expected = run_of(real(path), template)
        cold, warm = run_of(str(path), template), run_of(str(path), template)
        assert cold.tokenizer is not None, f"{template}: read from an empty cache"
        assert warm.tokenizer is None, f"{template}: not read back from the cache"
        assert cold.spec == warm.spec == expected.spec, template
        assert warm.spec.backend_json == expected.spec.backend_json, template
        texts, ids = reference_ids(expected)
        for kind in kinds:
            assert choose_encoder(warm.spec, kind).encode_batch(texts) == ids, (template, kind)


def test_a_spec_and_its_encoders_pickle_for_worker_processes(
    fixture_tokenizer_path: Path, fastsft_cache: Path
) -> None:
    texts, ids = reference_ids(run_of(real(fixture_tokenizer_path), "llama3"))
    run_of(str(fixture_tokenizer_path), "llama3")
    spec = run_of(str(fixture_tokenizer_path), "llama3").spec
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and copy.backend_json is None  # a worker gets its encoder, not the JSON
    for kind in ("hf", "bpe", "fast"):
        encoder = pickle.loads(pickle.dumps(choose_encoder(spec, kind)))
        assert encoder.encode_batch(texts) == ids, kind
        assert encoder.single_threaded().encode_batch(texts) == ids, kind


def preprocess(output: Path, tokenizer: Path, data: Path, backend: str) -> tuple[list[str], dict[str, bytes]]:
    """``fastsft preprocess`` in a new process: the heavy modules it imported, and the bytes of
    every file it wrote but ``state.json`` (which holds a random fingerprint of datasets')."""
    code = (
        "import sys\nfrom fastsft.cli import main\n"
        f"main(['preprocess', '--dataset', 'sharegpt_chat,alpaca_mix,sharegpt_tools', '--dataset-dir', {str(data)!r},"
        f" '--template', 'llama3', '--tokenizer', {str(tokenizer)!r}, '--output', {str(output)!r},"
        f" '--tokenizer-backend', {backend!r}, '--quiet'])\n"
        "print(sorted({'transformers', 'torch'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=os.environ, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = {
        str(file.relative_to(output)): file.read_bytes()
        for file in sorted(output.rglob("*"))
        if file.is_file() and file.name != "state.json"
    }
    return result.stdout.splitlines()[-1], written


def test_a_warm_preprocess_imports_neither_transformers_nor_torch_and_writes_the_same_bytes(
    fixture_tokenizer_path: Path, test_data_dir: Path, tmp_path: Path, fastsft_cache: Path
) -> None:
    imported, cold = preprocess(tmp_path / "cold", fixture_tokenizer_path, test_data_dir, "auto")
    assert imported == "['torch', 'transformers']"  # the check can see them
    assert {"fastsft_output.json", "train/data-00000-of-00001.arrow"} <= cold.keys()
    for backend in ("auto", "hf", "fast"):  # the BPE, the saved JSON itself, fastokens
        imported, warm = preprocess(tmp_path / backend, fixture_tokenizer_path, test_data_dir, backend)
        assert imported == "[]", backend
        assert warm == cold, backend


@pytest.mark.parametrize("package", ["fastsft", "transformers", "tokenizers"])
def test_a_spec_of_another_version_is_made_again(
    package: str, fixture_tokenizer_path: Path, fastsft_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spec holds for the versions that fixed the tokenizer: after an upgrade of fastsft,
    transformers or tokenizers, the tokenizer is loaded and fixed again."""
    first = run_of(str(fixture_tokenizer_path), "llama3")
    assert run_of(str(fixture_tokenizer_path), "llama3").tokenizer is None  # read back
    pretend_upgraded(monkeypatch, package)
    again = run_of(str(fixture_tokenizer_path), "llama3")
    assert again.tokenizer is not None and again.spec == first.spec


def test_an_unset_template_is_never_cached(fixture_tokenizer_path: Path, fastsft_cache: Path) -> None:
    """The template is then parsed from the tokenizer's own chat template: the real one is loaded."""
    expected = run_of(real(fixture_tokenizer_path), None).spec
    for _ in range(2):
        run = run_of(str(fixture_tokenizer_path), None)
        assert run.tokenizer is not None and run.spec == expected
    assert not (fastsft_cache / "tokenizer_specs").exists()
    run_of(str(fixture_tokenizer_path), "qwen")
    assert (fastsft_cache / "tokenizer_specs").is_dir()  # where a kept spec would have been


def test_a_tokenizer_encoding_in_python_is_not_cached_and_encodes_in_python(
    fixture_tokenizer_path: Path, fastsft_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import PreTrainedTokenizerFast

    from fastsft.data import pipeline

    class Lowercasing(PreTrainedTokenizerFast):
        def encode(self, text: Any, *args: Any, **kwargs: Any) -> Any:
            return super().encode(text.lower(), *args, **kwargs)

    monkeypatch.setattr(pipeline, "load_tokenizer", lambda path: Lowercasing.from_pretrained(path))
    plain = real(fixture_tokenizer_path).encode("Hello World", add_special_tokens=False)
    for _ in range(2):
        run = run_of(str(fixture_tokenizer_path), "qwen")
        assert run.tokenizer is not None and run.spec.backend_digest is None
        encoder = run.text_encoder("compiled")
        assert isinstance(encoder, PythonEncoder)
        [ids] = encoder.encode_batch(["Hello World"])
        assert ids == run.tokenizer.encode("Hello World", add_special_tokens=False) != plain
        with pytest.raises(ConfigError, match="encodes in Python"):
            choose_encoder(run.spec, "bpe")
    assert not (fastsft_cache / "tokenizer_specs").exists()
    assert not (fastsft_cache / "tokenizer_json").exists()


DAMAGES = {
    "flipped bit": lambda data: data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :],
    "truncated": lambda data: data[: len(data) // 2],
    "appended": lambda data: data + b" ",
    "empty": lambda data: b"",
    "deleted": None,
}  # fmt: skip


def test_damaged_files_are_ignored_and_made_again(fixture_tokenizer_path: Path, fastsft_cache: Path) -> None:
    expected = run_of(real(fixture_tokenizer_path), "llama3")
    texts, ids = reference_ids(expected)

    def checked_run() -> PreparedRun:
        run = run_of(str(fixture_tokenizer_path), "llama3")
        assert run.spec == expected.spec
        for kind in ("hf", "bpe", "fast"):
            assert choose_encoder(run.spec, kind).encode_batch(texts) == ids, kind
        return run

    checked_run()  # saves the spec, its tokenizer.json, the verdicts and the BPE's tables
    saved = {file: file.read_bytes() for file in sorted(fastsft_cache.rglob("*")) if file.is_file()}
    suffixes = sorted(file.name.split(".", 1)[1] for file in saved)
    assert suffixes == ["bpe-1-0.npz", "json", "json", "verdicts.json"], suffixes
    for file, original in saved.items():
        loads_the_tokenizer = file.suffixes == [".json"]  # the spec or its tokenizer.json
        for name, damage in DAMAGES.items():
            if damage is None:
                file.unlink()
            else:
                file.write_bytes(damage(original))
            run = checked_run()
            assert (run.tokenizer is not None) == loads_the_tokenizer, (file.name, name)
            assert file.read_bytes() == original, f"{file.name} {name}: not made again"
