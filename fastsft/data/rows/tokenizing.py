"""How much text a run will tokenize: what the text encoder is chosen for, before the first batch."""

from __future__ import annotations

from fastsft.data.data_args import DataArgs
from fastsft.data.sources.parser import DatasetAttr, input_bytes

__all__ = ["expected_chars"]


def expected_chars(args: DataArgs, attrs: list[DatasetAttr]) -> int:
    """About how much text reading ``attrs`` gives to tokenize, for choosing the text encoder.

    Input bytes stand in for characters (JSON keys and escapes make them an overestimate); with
    ``max_samples`` they say nothing, so 0 (unknown).
    """
    return 0 if args.max_samples else input_bytes(attrs, args.dataset_dir)
