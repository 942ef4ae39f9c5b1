"""The tokenizer implementation a run encodes with, chosen apart from the encoder so that
``fastsft preprocess`` can start building it before the heavier imports of the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastsft.data.data_args import DataArgs
from fastsft.data.sources.parser import DatasetAttr, input_bytes
from fastsft.kernels import resolve_encode_path

if TYPE_CHECKING:
    from fastsft.tokenizer.backends import TokenizerBackend

__all__ = ["expected_chars", "tokenizer_backend"]


def expected_chars(args: DataArgs, attrs: list[DatasetAttr]) -> int:
    """About how much text reading ``attrs`` gives to tokenize, for choosing the tokenizer backend.

    Input bytes stand in for characters (JSON keys and escapes make them an overestimate); with
    ``max_samples`` they say nothing, so 0 (unknown: the backend decides as it goes).
    """
    return 0 if args.max_samples else input_bytes(attrs, args.dataset_dir)


def tokenizer_backend(
    tokenizer: Any, args: DataArgs, *, expected_chars: int, encode_path: str | None = None
) -> TokenizerBackend:
    """The tokenizer implementation of the encode path (``encode_path``, else ``args.backend``).

    The compiled path tokenizes with the fastest exact implementation for about ``expected_chars``
    of text (``fastsft.tokenizer.backends.load_backend``), the python path once per string, as
    LLaMA-Factory does. A replayed tokenizer snapshot builds fastokens on a background thread, and
    calling this again for the same tokenizer JSON gets that build: ``fastsft preprocess`` calls it
    as soon as the tokenizer is loaded, so that its start-up overlaps the build.
    """
    from fastsft.tokenizer.backends import PerStringBackend, load_backend

    if resolve_encode_path(encode_path or args.backend) == "python":
        return PerStringBackend(tokenizer)
    return load_backend(tokenizer, args.tokenizer_backend, expected_chars=expected_chars)
