"""TRL's own preprocessing of a conversational dataset, as a user runs it: one fresh process.

    python benchmarks/trl_peer.py DATA.jsonl TOKENIZER_DIR [--save OUT_DIR]

Loads the tokenizer, reads the OpenAI ``messages`` rows with ``datasets.load_dataset("json")`` and
constructs ``SFTTrainer(..., args=SFTConfig(assistant_only_loss=True, max_length=None))`` on a tiny
Qwen2 model, which tokenizes the whole dataset (TRL swaps in the training version of a known chat
template, renders each conversation with ``apply_chat_template`` in ``datasets.map``;
``dataset_num_proc`` left at its default). ``--save`` writes the prepared dataset (``input_ids``,
``labels``: the ids under TRL's assistant mask, else -100) with ``save_to_disk`` for the benchmark's row check; timed runs leave it out.
Run it with a fresh ``HF_DATASETS_CACHE`` so that ``datasets`` does not reuse an earlier run's map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import datasets
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_trl_goldens import trl_prepared_dataset  # the goldens' own TRL set-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="JSON Lines file of {'messages': [...]} rows")
    parser.add_argument("tokenizer", help="tokenizer directory (its chat_template is used)")
    parser.add_argument("--save", default=None, help="save_to_disk the prepared dataset here")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    dataset = datasets.load_dataset("json", data_files=args.data, split="train")
    prepared = trl_prepared_dataset(tokenizer, dataset)
    if args.save:
        prepared.select_columns(["input_ids", "labels"]).save_to_disk(args.save)


if __name__ == "__main__":
    main()
