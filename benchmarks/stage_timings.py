"""Where a warm ``build_dataset`` spends its time, stage by stage (the "where the time goes" numbers
in ``docs/benchmarks.md``).

    python benchmarks/stage_timings.py DATASET_DIR [--tokenizer PATH] [--template qwen] [--runs 5]

``DATASET_DIR`` holds ``benchmarks/data.py``'s dataset (``python benchmarks/data.py DIR --samples
20000``). After one warm-up call on 100 conversations, each run builds the whole dataset with the
compiled path and fastokens and prints its wall time and the seconds spent inside each stage
function (timers wrapped around them; stages nest, so they do not add up to the total).
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from data import DATASET_NAME

import fastsft.data.pipeline as pipeline
import fastsft.data.rows.builder as rows
import fastsft.data.rows.encoder as encoding
import fastsft.kernels.compiled as kernels
import fastsft.tokenizer.encoders as tokenization
from fastsft.data.data_args import DataArgs
from fastsft.tokenizer.loader import load_tokenizer

SECONDS: collections.Counter[str] = collections.Counter()

STAGES: list[tuple[Any, str, str]] = [
    (pipeline.PreparedRun, "encoder", "PreparedRun.encoder (encoder choice)"),
    (encoding.Encoder, "render_batch", "render_batch (row -> segments)"),
    (encoding.Encoder, "_render_readably", "  convert + render (rows without the compiled step)"),
    (encoding.Encoder, "_encode_segments", "encode segments (all below)"),
    (tokenization.FastokensEncoder, "encode_batch_flat", "  fastokens"),
    (kernels, "gather_segments", "  gather_segments"),
    (kernels, "assemble_supervised", "  assemble_supervised"),
    (rows.RowBuilder, "_unpacked", "Arrow columns"),
]


def timed(function: Callable[..., Any], label: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[label] += time.perf_counter() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument(
        "--tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared/tokenizers/qwen2")
    )
    parser.add_argument("--template", default="qwen")
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()

    for owner, name, label in STAGES:
        setattr(owner, name, timed(getattr(owner, name), label))
    tokenizer = load_tokenizer(options.tokenizer)
    args = DataArgs(
        dataset=DATASET_NAME,
        dataset_dir=str(options.dataset_dir),
        template=options.template,
        cutoff_len=2048,
        backend="compiled",
        tokenizer_backend="fast",
    )
    pipeline.build_dataset(replace(args, max_samples=100), tokenizer)
    for run in range(1, options.runs + 1):
        SECONDS.clear()
        start = time.perf_counter()
        pipeline.build_dataset(args, tokenizer)
        total = time.perf_counter() - start
        stages = "  ".join(f"{label} {SECONDS[label]:.3f}" for _, _, label in STAGES)
        print(f"run {run}: total {total:.3f} s | {stages}")


if __name__ == "__main__":
    main()
