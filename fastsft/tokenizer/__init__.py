"""Tokenizers: loading a HF tokenizer (``loader``), the plain-data ``TokenizerSpec`` the data path
needs of it (``spec``), and the exact text encoders a run chooses from (``encoders``, ``bpe``).

Names are imported on first use, so ``fastsft --help`` stays cheap.
"""

from __future__ import annotations

from fastsft.lazy import lazy_getattr

KINDS = ("auto", "hf", "bpe", "fast")
"""The text encoders ``encoders.choose_encoder`` picks from (``--tokenizer-backend``); declared here,
without the encoders' imports, so the option's choices cost nothing to read."""

_HOMES = {
    "CACHE_ENV_VAR": "cache",
    "cache_dir": "cache",
    "load_tokenizer": "loader",
    "TokenizerSpec": "spec",
    "TextEncoder": "encoders",
    "choose_encoder": "encoders",
}
__all__ = sorted([*_HOMES, "KINDS"])

__getattr__ = lazy_getattr(__name__, _HOMES)
