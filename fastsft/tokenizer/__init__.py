"""Tokenizers: loading a HF tokenizer (``loader``), its recorded stand-in (``snapshot``), and the
backends that encode with it (``backends``), imported in that one direction.

``load_tokenizer`` serves every command; ``load_backend`` picks the encoder the compiled path uses.
Names are imported on first use, so ``fastsft --help`` stays cheap.
"""

from __future__ import annotations

from fastsft.lazy import lazy_getattr

KINDS = ("auto", "hf", "bpe", "fast")
"""The tokenizer backends ``backends.load_backend`` builds (``--tokenizer-backend``); declared here,
without the backends' imports, so the option's choices cost nothing to read."""

_HOMES = {
    "CACHE_ENV_VAR": "loader",
    "cache_dir": "loader",
    "load_tokenizer": "loader",
    "TokenizerSnapshot": "snapshot",
    "encodes_through_rust": "snapshot",
    "AutoBackend": "backends",
    "ByteLevelBPEBackend": "bpe",
    "FastokensBackend": "backends",
    "HFBackend": "backends",
    "PerStringBackend": "backends",
    "TokenizerBackend": "backends",
    "load_backend": "backends",
}
__all__ = sorted([*_HOMES, "KINDS"])

__getattr__ = lazy_getattr(__name__, _HOMES)
