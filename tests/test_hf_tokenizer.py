"""``fastsft.tokenizer.loader.load_tokenizer``: the tokenizer ``AutoTokenizer`` loads, with the class remembered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastsft.errors import ConfigError
from fastsft.tokenizer.cache import read_checked
from fastsft.tokenizer.loader import CACHE_ENV_VAR, cache_dir, load_tokenizer

TEXTS = ["Hello, world!", "数据 <|im_start|>user\n hi<|im_end|>\n", "  \r\n\tx 😀👍🏽", ""]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


def described(tokenizer: Any) -> dict[str, Any]:
    """What decides a tokenizer's behaviour in the pipeline."""
    return {
        "class": type(tokenizer),
        "backend": tokenizer.backend_tokenizer.to_str(),
        "special": tokenizer.special_tokens_map,
        "added": {i: str(t) for i, t in tokenizer.added_tokens_decoder.items()},
        "init": {k: repr(v) for k, v in tokenizer.init_kwargs.items()},
        "chat_template": tokenizer.chat_template,
        "eos": (tokenizer.eos_token, tokenizer.eos_token_id),
        "pad": (tokenizer.pad_token, tokenizer.pad_token_id),
        "bos": (tokenizer.bos_token, tokenizer.bos_token_id),
        "padding_side": tokenizer.padding_side,
        "ids": [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS],
        "ids_special": [tokenizer.encode(text) for text in TEXTS],
    }


@pytest.mark.parametrize("which", ["fixture", "qwen2", "llama3"])
def test_remembered_class_loads_the_same_tokenizer(
    which: str, request: pytest.FixtureRequest, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    path = str(request.getfixturevalue(f"{which}_tokenizer_path"))
    reference = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    first = load_tokenizer(path)  # through AutoTokenizer, records the class
    assert read_checked(cache / "tokenizer_classes.json")

    def no_auto(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("AutoTokenizer was used although the class is recorded")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_auto)
    second = load_tokenizer(path)
    assert described(first) == described(reference)
    assert described(second) == described(reference)


def test_changed_file_is_loaded_through_auto_tokenizer_again(
    fixture_tokenizer_path: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import transformers

    folder = tmp_path / "tok"
    shutil.copytree(fixture_tokenizer_path, folder)
    load_tokenizer(str(folder))
    calls = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        transformers.AutoTokenizer,
        "from_pretrained",
        lambda *a, **k: calls.append(a) or real(*a, **k),
    )
    load_tokenizer(str(folder))
    assert calls == []
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    load_tokenizer(str(folder))
    assert len(calls) == 1


def test_unusable_cache_still_loads(
    fixture_tokenizer_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV_VAR, str(blocker / "cache"))
    assert load_tokenizer(str(fixture_tokenizer_path)).encode("hi", add_special_tokens=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "tokenizer_classes.json").write_text("{not json")
    monkeypatch.setenv(CACHE_ENV_VAR, str(corrupt))
    assert load_tokenizer(str(fixture_tokenizer_path)).encode("hi", add_special_tokens=False)
    assert read_checked(corrupt / "tokenizer_classes.json")  # rewritten whole


def test_bad_folder_is_one_line(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer folder not found"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load a tokenizer from") as info:
        load_tokenizer(str(tmp_path / "empty"))
    assert "\n" not in str(info.value)


def test_remembered_load_does_not_import_torch(fixture_tokenizer_path: Path, cache: Path) -> None:
    code = (
        "import sys\nfrom fastsft.tokenizer.loader import load_tokenizer\n"
        f"load_tokenizer({str(fixture_tokenizer_path)!r})\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, CACHE_ENV_VAR: str(cache)}
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert [run.stdout.strip() for run in runs] == ["True", "False"]


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "fastsft"
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"
