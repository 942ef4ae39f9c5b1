"""``fastsft.tokenizer.snapshot``: a replayed tokenizer answers as the real one, in every state the
pipeline takes it to, and falls back to the real one for anything it did not record."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastsft.data.chat.registry import SLOT_TOKENS, get_template
from fastsft.data.chat.template import fix_tokenizer
from fastsft.data.store.provenance import tokenizer_fingerprint
from fastsft.safe_output import MARKER
from fastsft.tokenizer.backends import probe_texts
from fastsft.tokenizer.cache import read_checked, write_checked
from fastsft.tokenizer.loader import CACHE_ENV_VAR, load_tokenizer
from fastsft.tokenizer.snapshot import FOLDER, RECORDED, TokenizerSnapshot, _state_id

# Templates that leave the tokenizer as it is, replace eos, add stop words (one or several calls),
# set pad, or set a jinja chat template.
TEMPLATES = ["qwen", "llama3", "chatml", "glm4", "glm4v", "alpaca", "default", "empty", "mistral", "llama4"]
REAL_TEMPLATES = ["qwen", "llama3", "glm4v"]  # for the large tokenizers, where each load takes seconds


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


def real(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def fixed(tokenizer: Any, template: str) -> Any:
    fix_tokenizer(get_template(template, tokenizer=tokenizer), tokenizer)
    return tokenizer


def observed(tokenizer: Any) -> dict[str, Any]:
    """Everything the pipeline reads from a tokenizer, with ``encode`` on every probe text."""
    vocab = tokenizer.get_vocab()
    added = sorted(token for token, index in vocab.items() if index >= 0 and token.startswith("<"))[:400]
    lookups = [*SLOT_TOKENS, "no such token", *added]
    return {
        "attributes": {name: getattr(tokenizer, name) for name in RECORDED},
        "length": len(tokenizer),
        "vocab": vocab,
        "lookups": [tokenizer.convert_tokens_to_ids(token) for token in lookups],
        "lookup_list": tokenizer.convert_tokens_to_ids(lookups),
        "ids": [tokenizer.encode(text, add_special_tokens=False) for text in probe_texts(added)],
        "backend": tokenizer.backend_tokenizer.to_str(),
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


@pytest.mark.parametrize("which", ["fixture", "qwen2", "llama3"])
def test_replay_answers_as_the_real_tokenizer(
    which: str, request: pytest.FixtureRequest, cache: Path
) -> None:
    path = request.getfixturevalue(f"{which}_tokenizer_path")
    for template in TEMPLATES if which == "fixture" else REAL_TEMPLATES:
        expected = observed(fixed(real(path), template))
        recording = load_tokenizer(str(path), snapshot=True)
        assert isinstance(recording, TokenizerSnapshot)
        assert observed(fixed(recording, template)) == expected, template
        replayed = fixed(load_tokenizer(str(path), snapshot=True), template)
        assert replayed.replaying, f"{template}: a recorded change was not replayed"
        assert observed(replayed) == expected, template
        assert replayed.replaying, f"{template}: a read needed the real tokenizer"


def test_an_unrecorded_call_loads_the_real_tokenizer_in_the_same_state(
    fixture_tokenizer_path: Path, cache: Path
) -> None:
    reference = fixed(real(fixture_tokenizer_path), "llama3")
    fixed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True), "llama3")  # records
    snapshot = fixed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True), "llama3")
    assert snapshot.replaying
    ids = reference.encode("hi there", add_special_tokens=True)
    assert snapshot.decode(ids) == reference.decode(ids)  # not recorded: loads the real one
    assert not snapshot.replaying
    assert snapshot.encode("hi there") == ids
    assert observed(snapshot) == observed(reference)
    # A change made then is recorded, and replayed by the next load.
    added = {"additional_special_tokens": ["<new>"]}
    assert snapshot.add_special_tokens(added) == reference.add_special_tokens(added)
    again = fixed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True), "llama3")
    again.add_special_tokens(added)
    assert again.replaying
    assert observed(again) == observed(reference)


def test_replay_imports_neither_transformers_nor_torch(fixture_tokenizer_path: Path, cache: Path) -> None:
    code = (
        "import sys\nfrom fastsft.tokenizer.loader import load_tokenizer\n"
        "from fastsft.data.chat import fix_tokenizer, get_template\n"
        "from fastsft.data.store.provenance import tokenizer_fingerprint\n"
        f"tokenizer = load_tokenizer({str(fixture_tokenizer_path)!r}, snapshot=True)\n"
        "fingerprint = tokenizer_fingerprint(tokenizer)\n"
        "fix_tokenizer(get_template('llama3', tokenizer=tokenizer), tokenizer)\n"
        "ids = tokenizer.encode('hello <|eot_id|>', add_special_tokens=False)\n"
        "print(sorted({'transformers', 'torch'} & set(sys.modules)), fingerprint, ids)\n"
    )
    env = {**os.environ, CACHE_ENV_VAR: str(cache)}
    first, second = (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    )
    assert "'transformers'" in first.split("]", 1)[0]
    assert second.startswith("[] ")
    assert first.split("]", 1)[1] == second.split("]", 1)[1]


def records(cache: Path) -> list[Path]:
    return sorted((cache / FOLDER).iterdir())


def test_damaged_files_are_ignored_and_recorded_again(fixture_tokenizer_path: Path, cache: Path) -> None:
    expected = observed(fixed(real(fixture_tokenizer_path), "llama3"))
    fixed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True), "llama3")
    (folder,) = records(cache)
    backends = sorted(p for p in folder.iterdir() if p.name != "record.json")
    assert backends, "no Rust JSON written"
    for backend in backends:
        backend.write_text(backend.read_text() + " ")  # still JSON, not its digest
    snapshot = fixed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True), "llama3")
    assert observed(snapshot) == expected
    assert not snapshot.replaying  # the Rust tokenizer came from the real one
    (folder / "record.json").write_text("{not json")
    snapshot = load_tokenizer(str(fixture_tokenizer_path), snapshot=True)
    assert not snapshot.replaying  # an unreadable record: loaded and recorded again
    assert observed(fixed(snapshot, "llama3")) == expected
    assert read_checked(folder / "record.json")["states"]


def test_a_changed_folder_is_not_replayed(fixture_tokenizer_path: Path, tmp_path: Path, cache: Path) -> None:
    import shutil

    folder = tmp_path / "tokenizer"
    shutil.copytree(fixture_tokenizer_path, folder)
    assert load_tokenizer(str(folder), snapshot=True).eos_token == real(folder).eos_token
    assert load_tokenizer(str(folder), snapshot=True).replaying
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>" if config.get("eos_token") != "<|endoftext|>" else "<|im_end|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    snapshot = load_tokenizer(str(folder), snapshot=True)
    assert not snapshot.replaying
    assert snapshot.eos_token == config["eos_token"] == real(folder).eos_token


def test_a_record_that_disagrees_with_the_tokenizer_is_dropped(
    fixture_tokenizer_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_tokenizer(str(fixture_tokenizer_path), snapshot=True)
    (folder,) = records(cache)
    record = read_checked(folder / "record.json")
    assert not record["changes"]
    state = record["states"].pop(record["initial"])
    state["length"] += 1  # a state the real tokenizer is not in
    record["states"]["0" * 16] = record["states"][record["initial"]] = state
    write_checked(folder / "record.json", record)
    # Ids that are not their states' digests: the record is not read.
    assert not load_tokenizer(str(fixture_tokenizer_path), snapshot=True).replaying

    load_tokenizer(str(fixture_tokenizer_path), snapshot=True)
    record["initial"] = _state_id(state)
    record["states"] = {record["initial"]: state}
    write_checked(folder / "record.json", record)
    snapshot = load_tokenizer(str(fixture_tokenizer_path), snapshot=True)
    assert snapshot.replaying and len(snapshot) == state["length"]
    snapshot.decode([1])  # loads the real tokenizer, which is in another state
    assert "does not match the tokenizer" in caplog.text
    assert len(snapshot) == len(real(fixture_tokenizer_path))
    assert not folder.exists()


def test_pickled_snapshots_answer_the_same(fixture_tokenizer_path: Path, cache: Path) -> None:
    reference = fixed(real(fixture_tokenizer_path), "glm4")
    live = fixed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True), "glm4")
    replayed = fixed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True), "glm4")
    assert replayed.replaying
    expected = observed(reference)
    assert observed(pickle.loads(pickle.dumps(live))) == expected  # the real tokenizer itself
    copy = pickle.loads(pickle.dumps(replayed))
    assert isinstance(copy, TokenizerSnapshot) and copy.replaying
    assert observed(copy) == expected
    copy.decode([1])  # materialising the copy repeats the changes made before pickling
    assert observed(copy) == expected


def test_a_tokenizer_replay_cannot_reproduce_is_returned_as_it_is(
    fixture_tokenizer_path: Path, cache: Path
) -> None:
    from transformers import PreTrainedTokenizerFast

    class Lowercasing(PreTrainedTokenizerFast):
        def convert_tokens_to_ids(self, tokens: Any) -> Any:
            return super().convert_tokens_to_ids(tokens)

    from fastsft.tokenizer.snapshot import load_snapshot

    def load(path: str) -> Any:
        return Lowercasing.from_pretrained(path)

    loaded = load_snapshot(str(fixture_tokenizer_path), "key", load, cache / FOLDER)
    assert type(loaded) is Lowercasing
    assert not (cache / FOLDER).exists()


def test_preprocess_output_is_the_same_replayed(
    fixture_tokenizer_path: Path, test_data_dir: Path, tmp_path: Path, cache: Path
) -> None:
    from datasets import load_from_disk

    from fastsft.data.data_args import DataArgs
    from fastsft.data.pipeline import build_to_disk

    args = DataArgs(
        dataset="sharegpt_chat,alpaca_mix,sharegpt_tools", dataset_dir=str(test_data_dir), template="llama3"
    )
    outputs = []
    for name, tokenizer in [
        ("real", real(fixture_tokenizer_path)),
        ("recording", load_tokenizer(str(fixture_tokenizer_path), snapshot=True)),
        ("replayed", load_tokenizer(str(fixture_tokenizer_path), snapshot=True)),
    ]:
        build_to_disk(args, tokenizer, tmp_path / name)
        outputs.append(load_from_disk(str(tmp_path / name))["train"].to_dict())
        outputs.append(json.loads((tmp_path / name / MARKER).read_text())["tokenizer"])
    assert outputs[0::2] == [outputs[0]] * 3
    assert outputs[1::2] == [outputs[1]] * 3
