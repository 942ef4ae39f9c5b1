"""The tokenizer implementation a run encodes with (``fastsft.tokenizer.backends``), by encode path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastsft.data.data_args import DataArgs
from fastsft.kernels import resolve_encode_path

if TYPE_CHECKING:
    from fastsft.tokenizer.backends import TokenizerBackend

__all__ = ["tokenizer_backend"]


def tokenizer_backend(tokenizer: Any, args: DataArgs, *, encode_path: str | None = None) -> TokenizerBackend:
    """The tokenizer implementation of the encode path (``encode_path``, else ``args.backend``).

    The compiled path tokenizes with the backend ``args.tokenizer_backend`` chooses
    (``fastsft.tokenizer.backends.load_backend``: fastokens where it is exact, else HF; built on a
    background thread from a warm tokenizer snapshot), the python path once per string, as
    LLaMA-Factory does.
    """
    from fastsft.tokenizer.backends import PerStringBackend, load_backend

    if resolve_encode_path(encode_path or args.backend) == "python":
        return PerStringBackend(tokenizer)
    return load_backend(tokenizer, args.tokenizer_backend)
