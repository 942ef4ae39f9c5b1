"""Loading a HF tokenizer from a local folder, without paying for ``AutoTokenizer``'s imports twice.

``AutoTokenizer.from_pretrained`` decides the tokenizer class from ``tokenizer_config.json``,
``config.json`` and a table of exceptions, and ends with ``<class>.from_pretrained(path)``. Importing
it imports torch (through transformers' configuration code), which is most of ``fastsft
preprocess``'s start-up. So the class it chose is remembered per folder, keyed by the content of
every file there (``fastsft.tokenizer.cache.folder_digest``) and by the transformers version, and
later loads call that class directly: the same final call, so the same tokenizer. Classes from
remote code are never remembered. The record lives in ``$FASTSFT_CACHE_DIR`` (default
``~/.cache/fastsft``), checked against its digest when read; when it cannot be read or written,
loading goes through ``AutoTokenizer``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from fastsft.errors import ConfigError
from fastsft.tokenizer.cache import CACHE_ENV_VAR, cache_dir, folder_digest, read_checked, write_checked

__all__ = ["CACHE_ENV_VAR", "cache_dir", "folder_key", "load_tokenizer"]

_RECORD = "tokenizer_classes.json"
_MAX_ENTRIES = 64


def load_tokenizer(path: str, *, trust_remote_code: bool = False, hub: bool = False) -> Any:
    """The tokenizer ``AutoTokenizer.from_pretrained(path)`` loads, for every command.

    A local folder is loaded with ``local_files_only`` (never a download). ``hub`` lets a path that is not a
    folder through to ``AutoTokenizer`` as a Hub id (``fastsft train``'s ``model_name_or_path``);
    ``trust_remote_code`` is passed on (such classes are never remembered). A folder that is not a
    tokenizer is a one-line ``ConfigError``.
    """
    folder = Path(path)
    if not folder.is_dir() and not hub:
        raise ConfigError(f"tokenizer folder not found: {path}")
    key = folder_key(folder) if folder.is_dir() and not trust_remote_code else None
    try:
        remembered = _read_record().get(key) if key is not None else None
        cls = _import_class(remembered) if remembered else None
        if cls is not None:
            return cls.from_pretrained(path, local_files_only=True)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=folder.is_dir(), trust_remote_code=trust_remote_code
        )
    except Exception as err:  # transformers raises OSError, ValueError, TypeError, ... for a bad folder
        first_line = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(
            f"cannot load a tokenizer from {path} (it needs tokenizer.json or the files of a slow "
            f"tokenizer, as saved by save_pretrained): {first_line.strip()}"
        ) from None
    if key is not None:
        _remember(key, type(tokenizer))
    return tokenizer


def folder_key(folder: Path) -> str:
    """The folder, the transformers version and the digest of every file's content."""
    from importlib.metadata import version

    return json.dumps([str(folder.resolve()), version("transformers"), folder_digest(folder)])


def _import_class(qualified: str) -> type | None:
    """The transformers class named ``qualified``; ``None`` for anything else (only those are recorded)."""
    module, _, name = qualified.rpartition(".")
    if not module.startswith("transformers."):
        return None
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and hasattr(cls, "from_pretrained") else None


def _read_record() -> dict[str, str]:
    record = read_checked(cache_dir() / _RECORD)
    if not isinstance(record, dict):
        return {}
    return {key: value for key, value in record.items() if isinstance(value, str)}


def _remember(key: str, cls: type) -> None:
    """Record ``cls`` for ``key`` (library classes only), keeping the newest ``_MAX_ENTRIES`` entries."""
    if not cls.__module__.startswith("transformers."):
        return
    record = _read_record()
    qualified = f"{cls.__module__}.{cls.__qualname__}"
    if record.get(key) == qualified:
        return
    record.pop(key, None)
    record[key] = qualified
    write_checked(cache_dir() / _RECORD, dict(list(record.items())[-_MAX_ENTRIES:]))
