"""Time LLaMA-Factory 0.9.5's own SFT preprocessing on a dataset; run with LLaMA-Factory's interpreter.

    /work/venv-lf/bin/python benchmarks/lf_peer.py --dataset-dir D --dataset N --tokenizer T \\
        --template qwen --cutoff-len 2048 [--packing] [--max-samples N]

Runs ``get_dataset(..., stage="sft")`` exactly as ``scripts/make_goldens.py`` does (same argument
set-up, same media-wheel stubs, a fresh ``datasets`` cache and ``overwrite_cache=True`` so nothing
is served from a cache) and prints one JSON line: ``examples`` (input rows: those of the data file,
at most ``--max-samples``), ``rows``
(output rows), ``tokens`` (output ``input_ids`` tokens, padding included when packing),
``seconds`` (``get_dataset`` alone, measured in this process: no interpreter start-up, imports or
tokenizer loading), ``processor_seconds`` (the part of it spent in ``SupervisedDatasetProcessor``) and ``digest`` (``token_digest`` of the output, to check that fastsft produced
the same rows). ``bench_preprocess.py`` imports ``token_digest`` from here, so this module imports
nothing from LLaMA-Factory at the top.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def token_digest(table: Any) -> str:
    """sha256 of the ``input_ids`` and ``labels`` list columns of an Arrow table (row lengths and
    values as int64), so outputs stored with different integer widths compare equal."""
    import numpy as np

    digest = hashlib.sha256()
    for name in ("input_ids", "labels"):
        column = table.column(name).combine_chunks()
        digest.update(np.asarray(column.value_lengths(), dtype=np.int64).tobytes())
        digest.update(np.asarray(column.flatten(), dtype=np.int64).tobytes())
    return digest.hexdigest()


def count_examples(dataset_dir: Path, dataset: str) -> int:
    """Rows in the data file that ``dataset_info.json`` names for ``dataset`` (``.json`` or ``.jsonl``)."""
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    path = dataset_dir / info[dataset]["file_name"]
    with open(path, encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            return sum(1 for line in handle if line.strip())
        return len(json.load(handle))


def _time_supervised_processor() -> list[float]:
    """Make ``SupervisedDatasetProcessor.preprocess_dataset`` add its seconds to the returned cell:
    LLaMA-Factory's SFT stage alone (templates, tokenization, masks, truncation), without reading,
    converting and Arrow writes."""
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor

    total = [0.0]
    original = SupervisedDatasetProcessor.preprocess_dataset

    def preprocess_dataset(self: Any, examples: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, examples)
        finally:
            total[0] += time.perf_counter() - start

    SupervisedDatasetProcessor.preprocess_dataset = preprocess_dataset
    return total


def run_llamafactory(
    dataset_dir: Path,
    dataset: str,
    tokenizer: str,
    template: str,
    cutoff_len: int,
    packing: bool,
    max_samples: int | None,
) -> dict[str, Any]:
    """LLaMA-Factory's SFT data path on ``dataset``; returns the measurements printed by ``main``."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from make_goldens import hide_broken_media_wheels

    hide_broken_media_wheels()
    import llamafactory
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.hparams.training_args import TrainingArguments
    from llamafactory.model import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="fastsft-lf-peer-") as tmp:
        model_args = ModelArguments(model_name_or_path=tokenizer, cache_dir=tmp)
        data_args = DataArguments(
            dataset=dataset,
            dataset_dir=str(dataset_dir),
            template=template,
            cutoff_len=cutoff_len,
            packing=packing,
            max_samples=max_samples,
            overwrite_cache=True,
        )
        training_args = TrainingArguments(output_dir=os.path.join(tmp, "output"), report_to="none")
        # The data-related post-processing of llamafactory.hparams.parser.get_train_args (stage "sft").
        model_args.model_max_length = data_args.cutoff_len
        model_args.block_diag_attn = data_args.neat_packing

        tokenizer_module = load_tokenizer(model_args)
        processor_seconds = _time_supervised_processor()
        fixed_template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        start = time.perf_counter()
        with redirect_stdout(open(os.devnull, "w")):  # get_dataset prints a decoded example
            dataset_module = get_dataset(
                fixed_template, model_args, data_args, training_args, stage="sft", **tokenizer_module
            )
        seconds = time.perf_counter() - start
        table = dataset_module["train_dataset"].data.table
        examples = count_examples(dataset_dir, dataset)
        return {
            "llamafactory": llamafactory.__version__,
            "examples": examples if max_samples is None else min(examples, max_samples),
            "rows": table.num_rows,
            "tokens": len(table.column("input_ids").combine_chunks().flatten()),
            "seconds": seconds,
            "processor_seconds": processor_seconds[0],
            "digest": token_digest(table),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--dataset", required=True, help="a name in DATASET_DIR/dataset_info.json")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--template", required=True)
    parser.add_argument("--cutoff-len", type=int, default=2048)
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N rows")
    options = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "ERROR")
    result = run_llamafactory(
        options.dataset_dir,
        options.dataset,
        options.tokenizer,
        options.template,
        options.cutoff_len,
        options.packing,
        options.max_samples,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
