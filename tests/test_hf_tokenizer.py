"""``fastsft.tokenizer.loader.load_tokenizer``: the tokenizer ``AutoTokenizer`` loads, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastsft.errors import ConfigError
from fastsft.tokenizer.cache import CACHE_ENV_VAR, cache_dir
from fastsft.tokenizer.loader import load_tokenizer

TEXTS = ["Hello, world!", "数据 <|im_start|>user\n hi<|im_end|>\n", "  \r\n\tx 😀👍🏽", ""]


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
def test_loads_what_auto_tokenizer_loads(which: str, request: pytest.FixtureRequest) -> None:
    import transformers

    path = str(request.getfixturevalue(f"{which}_tokenizer_path"))
    reference = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert described(load_tokenizer(path)) == described(reference)


def test_bad_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer folder not found"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load a tokenizer from") as info:
        load_tokenizer(str(tmp_path / "empty"))
    assert "\n" not in str(info.value)


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "fastsft"
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"
