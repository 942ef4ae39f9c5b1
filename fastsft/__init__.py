"""fastsft: supervised fine-tuning data pipeline identical to LLaMA-Factory 0.9.5, compiled."""

__version__ = "0.1.0"

IGNORE_INDEX = -100
