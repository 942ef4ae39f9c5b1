"""``preprocessing_num_workers: 16`` (every LLaMA-Factory example's value) against 1, the whole
``fastsft preprocess`` command a user runs, in fresh processes:

    pytest benchmarks/bench_workers.py -s [--tokenizer PATH] [--bench-samples 2000]

Corpora: LLaMA-Factory's demo data (``identity`` and ``alpaca_en_demo`` from its sdist, template
``qwen3_nothink``, as its ``qwen3_*`` examples) when the sdist is beside the repository, and
``benchmarks/data.py``'s synthetic conversations (``--bench-samples``). The two commands alternate
for ``ROUNDS`` rounds, so load on a shared machine hits them alike; each keeps its median. Fails when
16 is slower than 1 by more than ``NOISE`` on a corpus (each corpus prints its ratio), or when the
two outputs differ: ``preprocessing_num_workers`` is a ceiling, so 16 must never cost more than 1.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data import DATASET_NAME, write_dataset

REPO = Path(__file__).resolve().parents[1]
LF_DATA = REPO.parent / "lf-sdist" / "llamafactory-0.9.5" / "data"
ROUNDS = 5
NOISE = 0.15  # the two commands do the same work when the ceiling chooses 1 process


def preprocess_seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fastsft", *argv], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"fastsft preprocess failed: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - start


def corpus_flags(corpus: str, tmp_path: Path, samples: int) -> list[str]:
    """The ``--dataset`` / ``--dataset-dir`` / ``--template`` flags of a corpus (written if synthetic)."""
    if corpus == "lf_demo":
        if not (LF_DATA / "dataset_info.json").is_file():
            pytest.skip(f"LLaMA-Factory's demo data not found at {LF_DATA}")
        return [
            "--dataset",
            "identity,alpaca_en_demo",
            "--dataset-dir",
            str(LF_DATA),
            "--template",
            "qwen3_nothink",
        ]
    synthetic = write_dataset(tmp_path / "synthetic", samples)
    return ["--dataset", DATASET_NAME, "--dataset-dir", str(synthetic), "--template", "qwen"]


@pytest.mark.parametrize("corpus", ["lf_demo", "synthetic"])
def test_sixteen_workers_never_slower_than_one(
    benchmark, corpus: str, tmp_path: Path, tokenizer_path: Path, request: pytest.FixtureRequest
) -> None:
    data = corpus_flags(corpus, tmp_path, int(request.config.getoption("--bench-samples")))
    common = ["preprocess", *data, "--tokenizer", str(tokenizer_path), "--cutoff-len", "2048", "--quiet"]
    outputs = {workers: tmp_path / f"out{workers}" for workers in (1, 16)}
    times: dict[int, list[float]] = {1: [], 16: []}

    def one_round() -> None:
        order = list(outputs.items())
        for workers, output in order if len(times[1]) % 2 == 0 else order[::-1]:  # who goes first alternates
            argv = [*common, "--workers", str(workers), "--overwrite", "--output", str(output)]
            times[workers].append(preprocess_seconds(argv))

    preprocess_seconds([*common, "--output", str(tmp_path / "warm")])  # saves the tokenizer spec
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    one, sixteen = statistics.median(times[1]), statistics.median(times[16])
    print(
        f"\n{corpus}: --workers 1 {one:.2f} s, --workers 16 {sixteen:.2f} s (medians of {ROUNDS} "
        f"alternating rounds), 16/1 = {sixteen / one:.2f}"
    )
    first, again = (sorted((outputs[w] / "train").glob("*.arrow")) for w in (1, 16))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert sixteen / one <= 1 + NOISE
