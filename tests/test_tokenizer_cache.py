"""The tokenizer cache cannot go stale: a folder whose files changed while keeping their names, sizes
and times is loaded again, a damaged or odd-shaped record is recorded again, and a cache the user
cannot use is skipped with one line."""

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

from fastsft.data.chat.registry import SLOT_TOKENS, get_template
from fastsft.data.chat.template import fix_tokenizer
from fastsft.data.store.provenance import tokenizer_fingerprint
from fastsft.safe_output import MARKER
from fastsft.tokenizer.cache import read_checked, write_checked
from fastsft.tokenizer.loader import CACHE_ENV_VAR, load_tokenizer
from fastsft.tokenizer.snapshot import FOLDER

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x + 1  # <|im_end|> inside",
    "数据处理和模型训练 <|endoftext|> emoji 😀",
    "<new_token> a<new_token>b",
]
TEMPLATE = "alpaca"  # leaves eos and pad as the folder sets them


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


def real(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def observed(tokenizer: Any) -> dict[str, Any]:
    """What rows and their provenance take from a tokenizer fixed for ``TEMPLATE``."""
    fix_tokenizer(get_template(TEMPLATE, tokenizer=tokenizer), tokenizer)
    return {
        "specials": [getattr(tokenizer, f"{n}_token{s}") for n in ("bos", "eos", "pad") for s in ("", "_id")],
        "length": len(tokenizer),
        "lookups": [tokenizer.convert_tokens_to_ids(token) for token in [*SLOT_TOKENS, "<new_token>"]],
        "ids": [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS],
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


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
def test_a_file_changed_with_its_size_and_mtime_kept_is_not_replayed(
    fixture_tokenizer_path: Path,
    tmp_path: Path,
    cache: Path,
    edit: Callable[..., Any],
    way: Callable[..., None],
) -> None:
    folder = tokenizer_folder(fixture_tokenizer_path, tmp_path, way)
    before = observed(load_tokenizer(str(folder), snapshot=True))  # recorded
    assert load_tokenizer(str(folder), snapshot=True).replaying
    name, content = edit(folder)
    sizes = {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()}
    way(folder, name, content)
    assert {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()} == sizes
    expected = observed(real(folder))
    assert expected != before, "the edit changes nothing the rows depend on"
    assert observed(load_tokenizer(str(folder), snapshot=True)) == expected


@pytest.mark.parametrize("kind", ["hf", "fast"])
def test_preprocess_after_a_same_size_edit_writes_the_new_ids(
    fixture_tokenizer_path: Path, test_data_dir: Path, tmp_path: Path, cache: Path, kind: str
) -> None:
    from datasets import load_from_disk

    from fastsft.data.data_args import DataArgs
    from fastsft.data.pipeline import build_to_disk

    folder = tokenizer_folder(fixture_tokenizer_path, tmp_path, in_place_mtime_kept)
    args = DataArgs(
        dataset="sharegpt_chat", dataset_dir=str(test_data_dir), template="qwen", tokenizer_backend=kind
    )

    def built(name: str, tokenizer: Any) -> tuple[Any, Any]:
        build_to_disk(args, tokenizer, tmp_path / name)
        rows = load_from_disk(str(tmp_path / name))["train"].to_dict()
        return rows, json.loads((tmp_path / name / MARKER).read_text())["tokenizer"]

    old = built("warm", load_tokenizer(str(folder), snapshot=True))
    built("warmer", load_tokenizer(str(folder), snapshot=True))  # replayed, verdicts recorded
    in_place_mtime_kept(folder, *swapped_vocab_ids(folder))
    expected = built("cold", real(folder))
    assert expected != old
    assert built("after", load_tokenizer(str(folder), snapshot=True)) == expected


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


def record_file(cache: Path) -> Path:
    (folder,) = sorted((cache / FOLDER).iterdir())
    return folder / "record.json"


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


def test_a_flipped_bit_in_any_recorded_part_is_recorded_again(
    fixture_tokenizer_path: Path, cache: Path
) -> None:
    expected = observed(real(fixture_tokenizer_path))
    observed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True))  # records
    assert observed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True)) == expected  # records lookups
    path = record_file(cache)
    original = path.read_bytes()
    head, newline, body = original.partition(b"\n")
    if not body:  # a record without a digest line
        head, newline, body = b"", b"", original
    record = json.loads(body)
    # One leaf of each part: the key, the initial state, each state field, each change, each derived value.
    chosen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for leaf in leaves(record):
        chosen.setdefault(leaf[:1] if leaf[0] in ("key", "initial") else leaf[:3], leaf)
    parts = {part[0] for part in chosen}
    assert {"key", "initial", "states", "derived"} <= parts, parts
    for leaf in chosen.values():
        damaged = json.loads(body)
        holder = damaged
        for step in leaf[:-1]:
            holder = holder[step]
        holder[leaf[-1]] = flipped(holder[leaf[-1]])
        path.write_bytes(head + newline + json.dumps(damaged).encode("utf-8"))
        snapshot = load_tokenizer(str(fixture_tokenizer_path), snapshot=True)
        assert not snapshot.replaying, f"replayed a record with {leaf} flipped"
        assert observed(snapshot) == expected, leaf
        path.write_bytes(original)


@pytest.mark.parametrize(
    "shape",
    [[], {"key": 1}, {"changes": []}, {"states": {"x": []}}, {"derived": {"x": 1}}, {"changes": {"x": [0]}}],
    ids=["list", "key", "changes list", "state list", "derived value", "short change"],
)
def test_a_record_of_another_shape_is_recorded_again(
    fixture_tokenizer_path: Path, cache: Path, shape: Any
) -> None:
    expected = observed(real(fixture_tokenizer_path))
    observed(load_tokenizer(str(fixture_tokenizer_path), snapshot=True))
    path = record_file(cache)
    record = read_checked(path)
    damaged = shape if isinstance(shape, list) else {**record, **shape}
    write_checked(path, damaged)  # the digest matches: only the shape is wrong
    for _ in range(2):  # the first run records again, the second replays the new record
        snapshot = load_tokenizer(str(fixture_tokenizer_path), snapshot=True)
        assert observed(snapshot) == expected
    assert snapshot.replaying


def test_a_class_record_of_another_shape_is_ignored(fixture_tokenizer_path: Path, cache: Path) -> None:
    load_tokenizer(str(fixture_tokenizer_path))
    record = read_checked(cache / "tokenizer_classes.json")
    for value in (5, "os.path.join", "transformers.no.Such"):
        write_checked(cache / "tokenizer_classes.json", dict.fromkeys(record, value))
        assert load_tokenizer(str(fixture_tokenizer_path)).encode("hi", add_special_tokens=False)
    assert read_checked(cache / "tokenizer_classes.json") == record  # written again


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
    assert (cache / FOLDER).is_dir()
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
