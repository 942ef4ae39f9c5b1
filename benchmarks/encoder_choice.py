"""The whole ``fastsft preprocess`` command with each tokenizer encoder, alternating, on the corpora
given: the measurement behind the encoder the command uses (docs/benchmarks.md, "Encoder choice").

    python benchmarks/encoder_choice.py --data DIR:DATASET [--data DIR:DATASET ...] \
        --tokenizer PATH:TEMPLATE [--tokenizer ...] [--backends fast,hf] [--rounds 3]

``DIR`` holds ``dataset_info.json`` naming ``DATASET`` (``benchmarks/data.py`` writes
``synthetic_chat``, ``benchmarks/real_text.py`` writes ``real_text``). For each corpus and
tokenizer, one untimed run per backend saves the tokenizer spec and the verdicts (a user's second run finds
it), then ``--rounds`` rounds run every backend in turn, each a fresh process; the table gives
each backend's median wall time and CPU time (user + system: what the run costs on a machine
whose other cores are busy) and the wall-time ratio to the first backend's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(
    data_dir: str, dataset: str, tokenizer: str, template: str, backend: str, out: Path
) -> tuple[float, float]:
    """Wall and CPU seconds of one run of the command."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "fastsft", "preprocess", "--dataset", dataset, "--dataset-dir", data_dir,
        "--template", template, "--tokenizer", tokenizer, "--tokenizer-backend", backend,
        "--cutoff-len", "2048", "--output", str(out), "--quiet",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="DIR:DATASET")
    parser.add_argument("--tokenizer", action="append", required=True, help="PATH:TEMPLATE")
    parser.add_argument("--backends", default="fast,hf")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("FASTSFT_CACHE_DIR", str(Path(scratch) / "cache"))
        out = Path(scratch) / "out"
        columns = " | ".join(f"{b} wall (s) | {b} CPU (s)" for b in backends)
        print(f"| corpus | tokenizer | {columns} | wall ratios |")
        print("|---|---|" + "---|" * (2 * len(backends) + 1))
        for data in args.data:
            data_dir, dataset = data.rsplit(":", 1)
            for spec in args.tokenizer:
                tokenizer, template = spec.rsplit(":", 1)
                for backend in backends:  # records the snapshot and the encoder's verdict
                    run(data_dir, dataset, tokenizer, template, backend, out)
                times: dict[str, list[tuple[float, float]]] = {backend: [] for backend in backends}
                for _ in range(args.rounds):
                    for backend in backends:
                        times[backend].append(run(data_dir, dataset, tokenizer, template, backend, out))
                walls = [statistics.median(t[0] for t in times[backend]) for backend in backends]
                cpus = [statistics.median(t[1] for t in times[backend]) for backend in backends]
                cells = " | ".join(f"{wall:.2f} | {cpu:.2f}" for wall, cpu in zip(walls, cpus))
                ratios = ", ".join(
                    f"{backend} {wall / walls[0]:.2f}" for backend, wall in zip(backends, walls)
                )
                print(f"| {dataset} | {Path(tokenizer).name} | {cells} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
