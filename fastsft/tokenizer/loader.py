"""Loading a HF tokenizer: what ``AutoTokenizer.from_pretrained(path)`` loads, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastsft.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["load_tokenizer"]


def load_tokenizer(
    path: str, *, trust_remote_code: bool = False, hub: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer ``AutoTokenizer.from_pretrained(path)`` loads, for every command.

    A local folder is loaded with ``local_files_only`` (never a download). ``hub`` lets a path that
    is not a folder through as a Hub id (``fastsft train``'s ``model_name_or_path``);
    ``trust_remote_code`` is passed on. A folder that is not a tokenizer is a one-line ``ConfigError``.
    """
    folder = Path(path)
    if not folder.is_dir() and not hub:
        raise ConfigError(f"tokenizer folder not found: {path}")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            path, local_files_only=folder.is_dir(), trust_remote_code=trust_remote_code
        )
    except Exception as err:  # transformers raises OSError, ValueError, TypeError, ... for a bad folder
        first_line = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(
            f"cannot load a tokenizer from {path} (it needs tokenizer.json or the files of a slow "
            f"tokenizer, as saved by save_pretrained): {first_line.strip()}"
        ) from None
