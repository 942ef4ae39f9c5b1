"""The tokenizer cache cannot go stale: a folder whose files changed while keeping their names, sizes
and times is fixed again from the real tokenizer, a saved part with a flipped bit or of another
shape is made again, and a cache the user cannot use is skipped with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import load_tokenizer as real

from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import PreparedRun, prepare_run
from fastsft.safe_output import MARKER
from fastsft.tokenizer.cache import CACHE_ENV_VAR, read_checked, write_checked
from fastsft.tokenizer.encoders import choose_encoder

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x + 1  # <|im_end|> inside",
    "数据处理和模型训练 <|endoftext|> emoji 😀",
    "<new_token> a<new_token>b",
]
TEMPLATE = "alpaca"  # leaves eos and pad as the folder sets them
SPECS = "tokenizer_specs"


def run_of(tokenizer: Any, template: str = TEMPLATE) -> PreparedRun:
    return prepare_run(DataArgs(template=template), tokenizer)


def observed(run: PreparedRun, kind: str = "hf") -> dict[str, Any]:
    """What rows and their provenance take from a run: its spec (specials, length, slot-token ids,
    fingerprint, tokenizer.json digest) and the ids of ``TEXTS`` from the ``kind`` encoder it makes."""
    return {
        "spec": run.spec,
        "ids": choose_encoder(run.spec, kind, tokenizer=run.tokenizer).encode_batch(TEXTS),
    }


def expected(folder: Path, template: str = TEMPLATE) -> dict[str, Any]:
    """``observed`` of the real tokenizer in ``folder`` fixed for ``template``, encoding itself."""
    run = run_of(real(folder), template)
    assert run.tokenizer is not None
    return {"spec": run.spec, "ids": [run.tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]}


def same_size(original: bytes, data: Any) -> bytes:
    """``data`` as compact JSON padded with trailing blanks to the size of ``original``."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert len(text) <= len(original)
    return text + b" " * (len(original) - len(text))


# Edits that keep every file's size (the probe's cases); each returns (file name, new content).
def swapped_vocab_ids(folder: Path) -> tuple[str, bytes]:
    original = (folder / "tokenizer.json").read_bytes()
    data = json.loads(original)
    vocab = data["model"]["vocab"]
    ids = [i for text in TEXTS[:1] for i in real(folder).encode(text, add_special_tokens=False)]
    first = next(i for i in ids if i >= 100)
    second = next(i for i in ids if i >= 100 and i != first and len(str(i)) == len(str(first)))
    names = {index: token for token, index in vocab.items()}
    vocab[names[first]], vocab[names[second]] = second, first
    return "tokenizer.json", same_size(original, data)


def added_token_in_config(folder: Path) -> tuple[str, bytes]:
    original = (folder / "tokenizer_config.json").read_bytes()
    data = json.loads(original)
    data["added_tokens_decoder"][str(len(real(folder)))] = {
        "content": "<new_token>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    return "tokenizer_config.json", same_size(original, data)


def changed_eos_token(folder: Path) -> tuple[str, bytes]:
    original = (folder / "tokenizer_config.json").read_bytes()
    data = json.loads(original)
    data["eos_token"] = "<|im_end|>" if data.get("eos_token") != "<|im_end|>" else "<|endoftext|>"
    return "tokenizer_config.json", same_size(original, data)


def reordered_merges(folder: Path) -> tuple[str, bytes]:
    original = (folder / "tokenizer.json").read_bytes()
    data = json.loads(original)
    data["model"]["merges"].reverse()
    return "tokenizer.json", same_size(original, data)


EDITS = [swapped_vocab_ids, added_token_in_config, changed_eos_token, reordered_merges]


# Ways the edited content lands with the name, size and mtime of the file it replaces.
def in_place_mtime_kept(folder: Path, name: str, content: bytes) -> None:
    path = folder / name
    st = path.stat()
    path.write_bytes(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def cp_p(folder: Path, name: str, content: bytes) -> None:
    staged = folder.parent / f"staged-{name}"
    staged.write_bytes(content)
    st = (folder / name).stat()
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    subprocess.run(["cp", "-p", str(staged), str(folder / name)], check=True)


def symlinked_blob(folder: Path, name: str, content: bytes) -> None:
    """As the HF cache lays out a snapshot: the file is a symlink to a blob, now pointed at another."""
    link = folder / name
    old_blob = link.resolve()
    blob = old_blob.parent / f"{old_blob.name}-other"
    blob.write_bytes(content)
    st = old_blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    (folder / f".{name}.new").symlink_to(os.path.relpath(blob, folder))
    os.replace(folder / f".{name}.new", link)


WAYS = [in_place_mtime_kept, cp_p, symlinked_blob]


def tokenizer_folder(source: Path, tmp_path: Path, way: Callable[..., None]) -> Path:
    """A copy of ``source``; for ``symlinked_blob`` laid out as an HF cache snapshot."""
    folder = tmp_path / "snapshots" / "tokenizer"
    if way is not symlinked_blob:
        shutil.copytree(source, folder)
        return folder
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    folder.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        shutil.copy2(file, blobs / file.name)
        (folder / file.name).symlink_to(os.path.relpath(blobs / file.name, folder))
    return folder


@pytest.mark.parametrize("way", WAYS, ids=lambda way: way.__name__)
@pytest.mark.parametrize("edit", EDITS, ids=lambda edit: edit.__name__)
def test_a_file_changed_with_its_size_and_mtime_kept_is_fixed_again(
    fixture_tokenizer_path: Path,
    tmp_path: Path,
    fastsft_cache: Path,
    edit: Callable[..., Any],
    way: Callable[..., None],
) -> None:
    folder = tokenizer_folder(fixture_tokenizer_path, tmp_path, way)
    before = observed(run_of(str(folder)))  # kept
    assert run_of(str(folder)).tokenizer is None  # read back
    name, content = edit(folder)
    sizes = {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()}
    way(folder, name, content)
    assert {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()} == sizes
    want = expected(folder)
    assert want != before, "the edit changes nothing the rows depend on"
    after = run_of(str(folder))
    assert after.tokenizer is not None, "the spec of the folder before the edit was read back"
    assert observed(after) == want


def test_a_changed_template_definition_fixes_the_tokenizer_again(
    fixture_tokenizer_path: Path, fastsft_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after an upgrade of fastsft that gives a template another stop word: a spec kept for the
    old definition has the old tokenizer (length, added token, chat template)."""
    import copy

    from fastsft.data.chat import registry

    path = str(fixture_tokenizer_path)
    before = observed(run_of(path, "qwen"))
    assert run_of(path, "qwen").tokenizer is None  # read back
    changed = copy.deepcopy(registry.TEMPLATES["qwen"])
    changed.stop_words = [*changed.stop_words, "<new_token>"]
    monkeypatch.setitem(registry.TEMPLATES, "qwen", changed)
    want = expected(fixture_tokenizer_path, "qwen")
    assert want != before
    assert observed(run_of(path, "qwen")) == want


@pytest.mark.parametrize("kind", ["hf", "bpe", "fast"])
def test_preprocess_after_a_same_size_edit_writes_the_new_ids(
    fixture_tokenizer_path: Path, test_data_dir: Path, tmp_path: Path, fastsft_cache: Path, kind: str
) -> None:
    from datasets import load_from_disk

    from fastsft.data.pipeline import build_to_disk

    folder = tokenizer_folder(fixture_tokenizer_path, tmp_path, in_place_mtime_kept)
    args = DataArgs(
        dataset="sharegpt_chat", dataset_dir=str(test_data_dir), template="qwen", tokenizer_backend=kind
    )

    def built(name: str, tokenizer: Any) -> tuple[Any, Any]:
        build_to_disk(args, tokenizer, tmp_path / name)  # what fastsft preprocess runs
        rows = load_from_disk(str(tmp_path / name))["train"].to_dict()
        return rows, json.loads((tmp_path / name / MARKER).read_text())["tokenizer"]

    old = built("warm", str(folder))  # the spec kept
    assert built("warmer", str(folder)) == old  # read back, the encoder's verdict too
    in_place_mtime_kept(folder, *swapped_vocab_ids(folder))
    want = built("cold", real(folder))
    assert want != old
    assert built("after", str(folder)) == want


@pytest.mark.parametrize("way", WAYS, ids=lambda way: way.__name__)
@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_the_folder_digest_sees_a_same_size_same_mtime_change(
    tmp_path: Path, way: Callable[..., None], name: str
) -> None:
    """Weights enter the digest by identity (inode, ctime, resolved path), other files by content."""
    from fastsft.tokenizer.cache import folder_digest

    source = tmp_path / "source"
    source.mkdir()
    for file in ("model.safetensors", "tokenizer.json"):
        (source / file).write_bytes(b"a" * 64)
    folder = tokenizer_folder(source, tmp_path, way)
    before = folder_digest(folder)
    assert folder_digest(folder) == before
    way(folder, name, b"b" * 64)
    assert folder_digest(folder) != before


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every int, bool and non-empty string in ``value``."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in leaves(item, (*path, key))]
    if isinstance(value, list):
        return [leaf for index, item in enumerate(value) for leaf in leaves(item, (*path, index))]
    return [path] if isinstance(value, (int, str)) and value != "" else []


def flipped(value: Any) -> Any:
    """``value`` with one bit flipped (in its last character, for a string)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ 1
    return value[:-1] + chr(ord(value[-1]) ^ 1)


def flipped_bits(data: bytes) -> list[bytes]:
    """``data`` with one bit flipped at its start, middle and end."""
    return [data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :] for i in (0, len(data) // 2, len(data) - 1)]


def saved_file(cache: Path, part: str) -> Path:
    """The one saved file of ``part``: the spec, its tokenizer.json, the encoders' verdicts or the BPE's tables."""
    pattern = {"spec": f"{SPECS}/*.json", "json": "tokenizer_json/*[0-9a-f].json"}.get(
        part, f"tokenizer_json/*.{part}"
    )
    (path,) = cache.glob(pattern)
    return path


# chatglm3 has {"token": ...} slots, so the spec holds slot-token ids.
FLIP_TEMPLATE = "chatglm3"
KINDS = ("hf", "bpe", "fast")


@pytest.mark.parametrize("part", ["spec", "json", "verdicts.json", "bpe-1-0.npz"])
def test_a_flipped_bit_in_any_saved_part_is_made_again(
    fixture_tokenizer_path: Path, fastsft_cache: Path, part: str
) -> None:
    want = expected(fixture_tokenizer_path, FLIP_TEMPLATE)

    def check() -> PreparedRun:
        run = run_of(str(fixture_tokenizer_path), FLIP_TEMPLATE)
        for kind in KINDS:
            assert observed(run, kind) == want, kind
        return run

    check()  # saves every part
    path = saved_file(fastsft_cache, part)
    original = path.read_bytes()
    damaged = flipped_bits(original)
    if part == "spec":  # also each field's value flipped under the record's digest (its first 32 bytes)
        head, body = original[:32], original[32:]
        record = json.loads(body)
        fields = {leaf[0]: leaf for leaf in leaves(record)}
        assert {"length", "eos_token_id", "token_ids", "fingerprints", "backend_digest"} <= fields.keys()
        for leaf in fields.values():
            copy = json.loads(body)
            holder = copy
            for step in leaf[:-1]:
                holder = holder[step]
            holder[leaf[-1]] = flipped(holder[leaf[-1]])
            damaged.append(head + json.dumps(copy).encode("utf-8"))
    for data in damaged:
        path.write_bytes(data)
        run = check()
        assert (run.tokenizer is not None) == (part in ("spec", "json"))
        assert path.read_bytes() == original, "not made again"


def spec_field(name: str, value: Any) -> Callable[[Any], Any]:
    return lambda record: {**record, name: value}


def verdicts_of(value: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Every recorded verdict replaced by ``value(verdict)``."""
    return lambda record: {key: value(verdict) for key, verdict in record.items()}


SHAPES = {
    "spec list": ("spec", lambda record: []),
    "spec string": ("spec", lambda record: "spec"),
    "missing field": ("spec", lambda record: {k: v for k, v in record.items() if k != "eos_token_id"}),
    "extra field": ("spec", spec_field("vocab", {})),
    "length string": ("spec", lambda record: {**record, "length": str(record["length"])}),
    "bool id": ("spec", spec_field("eos_token_id", True)),
    "token ids list": ("spec", spec_field("token_ids", [])),
    "token id float": (
        "spec",
        lambda record: {**record, "token_ids": dict.fromkeys(record["token_ids"], 1.5)},
    ),
    "fingerprint key": ("spec", lambda record: {**record, "fingerprints": {"x": "0"}}),
    "no fingerprint": ("spec", spec_field("fingerprints", {})),
    "fingerprints list": ("spec", spec_field("fingerprints", [])),
    "no digest": ("spec", spec_field("backend_digest", None)),
    "verdicts list": ("verdicts.json", lambda record: []),
    "verdict number": ("verdicts.json", verdicts_of(lambda verdict: 1)),
    "verdict list": ("verdicts.json", verdicts_of(lambda verdict: [verdict])),
}


@pytest.mark.parametrize(("part", "shape"), SHAPES.values(), ids=SHAPES.keys())
def test_a_saved_part_of_another_shape_is_made_again(
    fixture_tokenizer_path: Path, fastsft_cache: Path, part: str, shape: Callable[[Any], Any]
) -> None:
    want = expected(fixture_tokenizer_path, FLIP_TEMPLATE)
    spec = run_of(str(fixture_tokenizer_path), FLIP_TEMPLATE).spec  # saved
    for kind in KINDS:  # their verdicts recorded
        choose_encoder(spec, kind)
    path = saved_file(fastsft_cache, part)
    original = path.read_bytes()
    write_checked(path, shape(read_checked(path)))  # the digest matches: only the shape is wrong
    for first in (True, False):  # the first run makes it again, the second reads it back
        run = run_of(str(fixture_tokenizer_path), FLIP_TEMPLATE)
        assert [observed(run, kind) for kind in KINDS] == [want] * len(KINDS)
        assert (run.tokenizer is not None) == (first and part == "spec")
    assert path.read_bytes() == original


def test_a_cache_folder_that_cannot_be_searched_is_skipped_with_one_line(
    fixture_tokenizer_path: Path, test_data_dir: Path, tmp_path: Path
) -> None:
    """As another user's cache (umask 077): ``fastsft preprocess`` runs without it, saying so once.

    Root searches any folder, so as root the command runs without the capabilities that let it
    (``setpriv``); mode 000 then stops it as it stops another user."""
    cache = tmp_path / "cache"
    env = {**os.environ, CACHE_ENV_VAR: str(cache)}
    command = [
        sys.executable, "-m", "fastsft", "preprocess", "--dataset", "sharegpt_chat", "--dataset-dir",
        str(test_data_dir), "--template", "qwen", "--tokenizer", str(fixture_tokenizer_path), "--output",
    ]  # fmt: skip
    subprocess.run([*command, str(tmp_path / "first")], env=env, check=True, capture_output=True)
    assert (cache / SPECS).is_dir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a folder's mode does not stop root")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    cache.chmod(0)
    try:
        result = subprocess.run(
            [*prefix, *command, str(tmp_path / "second")], env=env, capture_output=True, text=True
        )
    finally:
        cache.chmod(0o755)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "cache" in line]
    assert len(warnings) == 1 and str(cache) in warnings[0], result.stderr
    assert (tmp_path / "second" / MARKER).is_file()
