"""Peak memory of a streamed ``fastsft train`` does not grow with the dataset.

``fastsft train`` with ``streaming: true`` (default ``buffer_size`` 16384) on ``N`` and ``10 * N``
conversations in one JSON array file, with the same ``max_steps``, each in a fresh process; the
measure is the command's own peak RSS (``measured``). Two corpora: the
synthetic chat of ``benchmarks/data.py`` and LLaMA-Factory's own ``alpaca_en_demo.json`` (real text)
repeated to the size. Asserts the larger dataset's peak RSS is within ``RSS_CEILING`` of the
smaller one's: memory is bounded by the buffer and the batch, not by the dataset.

Run: ``pytest benchmarks/bench_streaming.py --bench-stream-samples 100000 -s`` (the issue's 100k
and 1M; the default 20000 keeps a run short). The model is the tests' tiny base, so the figure is
the data path's memory, not a model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from data import DATASET_NAME, write_dataset
from measured import run_fastsft

REPO = Path(__file__).resolve().parents[1]
TINY_BASE = REPO / "tests" / "goldens" / "train" / "tiny_base"
RSS_CEILING = 1.15  # peak RSS on 10 N conversations / on N
MAX_STEPS = 5


@pytest.fixture(scope="module")
def lf_demo(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.getoption("--lf-data")) / "alpaca_en_demo.json"


@pytest.fixture(scope="module")
def samples(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--bench-stream-samples"))


def write_alpaca(out_dir: Path, rows: int, lf_demo: Path) -> Path:
    """LLaMA-Factory's ``alpaca_en_demo`` repeated to ``rows`` rows, as the dataset ``alpaca_demo``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = json.loads(lf_demo.read_text(encoding="utf-8"))
    with open(out_dir / "alpaca_demo.json", "w", encoding="utf-8") as handle:
        json.dump([demo[i % len(demo)] for i in range(rows)], handle, ensure_ascii=False)
    info = {"alpaca_demo": {"file_name": "alpaca_demo.json"}}
    (out_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return out_dir


def streamed_train(
    dataset_dir: Path,
    dataset: str,
    work: Path,
    *,
    max_steps: int = MAX_STEPS,
    streaming: bool = True,
    cache: Path | None = None,
    **extra: Any,
) -> tuple[float, int]:
    """``fastsft train`` (streamed unless ``streaming`` is False) in a fresh process: (wall seconds, peak RSS bytes)."""
    config = {
        "model_name_or_path": str(TINY_BASE),
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "template": "qwen",
        "cutoff_len": 256,
        "streaming": streaming,
        "max_steps": max_steps,
        "per_device_train_batch_size": 2,
        "learning_rate": 1.0e-4,
        "output_dir": str(work / "output"),
        "overwrite_output_dir": True,
        "report_to": "none",
        "save_strategy": "no",
        "plot_loss": False,
        "cpu_threads": 1,
        **extra,
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_fastsft(["train", str(work / "config.yaml")], cache or work / "cache")
    return result.seconds, result.peak_rss


@pytest.mark.parametrize("corpus", ["synthetic", "lf_alpaca_demo"])
def test_peak_rss_does_not_grow_with_the_dataset(
    corpus: str, samples: int, lf_demo: Path, tmp_path: Path
) -> None:
    if corpus == "lf_alpaca_demo" and not lf_demo.is_file():
        pytest.skip(f"{lf_demo} not found (--lf-data)")
    results = {}
    for rows in (samples, 10 * samples):
        folder = tmp_path / f"{rows}"
        if corpus == "synthetic":
            dataset_dir, dataset = write_dataset(folder / "data", rows), DATASET_NAME
        else:
            dataset_dir, dataset = write_alpaca(folder / "data", rows, lf_demo), "alpaca_demo"
        size = sum(path.stat().st_size for path in dataset_dir.iterdir())
        seconds, rss = streamed_train(dataset_dir, dataset, folder)
        results[rows] = rss
        print(
            f"\n{corpus}: {rows:,} conversations ({size / 2**20:,.0f} MiB of JSON), streamed "
            f"fastsft train, {MAX_STEPS} steps: peak RSS {rss / 2**20:,.0f} MiB, {seconds:.1f} s"
        )
    ratio = results[10 * samples] / results[samples]
    print(f"{corpus}: peak RSS ratio (10x the data) {ratio:.3f}")
    assert ratio <= RSS_CEILING


@pytest.mark.parametrize("corpus", ["synthetic", "lf_alpaca_demo"])
def test_time_to_first_step(corpus: str, samples: int, lf_demo: Path, tmp_path: Path) -> None:
    """Wall time of ``fastsft train`` to its first optimizer step (a one-step run, the tiny model's
    save included) on ``10 * samples`` conversations: streamed, against ``fastsft preprocess``
    followed by ``fastsft train`` on the saved rows. Both use the same warm tokenizer cache."""
    if corpus == "lf_alpaca_demo" and not lf_demo.is_file():
        pytest.skip(f"{lf_demo} not found (--lf-data)")
    rows = 10 * samples
    if corpus == "synthetic":
        dataset_dir, dataset = write_dataset(tmp_path / "data", rows), DATASET_NAME
    else:
        dataset_dir, dataset = write_alpaca(tmp_path / "data", rows, lf_demo), "alpaca_demo"
    cache = tmp_path / "cache"
    streamed_train(dataset_dir, dataset, tmp_path / "warm-up", max_steps=1, cache=cache)  # warms the cache
    streamed, _ = streamed_train(dataset_dir, dataset, tmp_path / "streamed", max_steps=1, cache=cache)
    saved = tmp_path / "tokenized"
    preprocess = [
        "preprocess",
        *("--dataset", dataset, "--dataset-dir", str(dataset_dir), "--template", "qwen"),
        *("--tokenizer", str(TINY_BASE), "--cutoff-len", "256", "--quiet", "--output", str(saved)),
    ]
    preprocess_seconds = run_fastsft(preprocess, cache).seconds
    train_seconds, _ = streamed_train(
        dataset_dir,
        dataset,
        tmp_path / "map",
        max_steps=1,
        streaming=False,
        cache=cache,
        tokenized_path=str(saved),
    )
    print(
        f"\n{corpus}: {rows:,} conversations, to the first optimizer step: streamed {streamed:.1f} s; "
        f"preprocess {preprocess_seconds:.1f} s + train {train_seconds:.1f} s = "
        f"{preprocess_seconds + train_seconds:.1f} s; ratio {(preprocess_seconds + train_seconds) / streamed:.1f}x"
    )
    assert streamed < preprocess_seconds + train_seconds


PRODUCER_FLOOR = 0.8  # the streamed producer's tokens/s / the fastsft preprocess command's

# One pass of the streamed training rows, as ``fastsft train`` with ``streaming: true`` makes them,
# in a fresh process: prints the tokens of the rows.
PRODUCER = """
import sys
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import prepare_run
from fastsft.data.streaming import RowStream

dataset, dataset_dir, tokenizer = sys.argv[1:4]
args = DataArgs(dataset=dataset, dataset_dir=dataset_dir, template="qwen", cutoff_len=256, streaming=True)
run = prepare_run(args, tokenizer, fingerprint=False)
print(sum(len(row["input_ids"]) for _, row in RowStream(run, run.stream_spec()).rows(0)))
"""


@pytest.mark.parametrize("corpus", ["synthetic", "lf_alpaca_demo"])
def test_producer_against_preprocess(corpus: str, samples: int, lf_demo: Path, tmp_path: Path) -> None:
    """The streamed producer's tokens/s (one pass of the training rows, whole process, shuffle buffer
    included) against the ``fastsft preprocess`` command's on the same ``samples`` conversations,
    alternating for 3 rounds, best of each; both fresh processes with the same warm tokenizer cache."""
    if corpus == "lf_alpaca_demo" and not lf_demo.is_file():
        pytest.skip(f"{lf_demo} not found (--lf-data)")
    if corpus == "synthetic":
        dataset_dir, dataset = write_dataset(tmp_path / "data", samples), DATASET_NAME
    else:
        dataset_dir, dataset = write_alpaca(tmp_path / "data", samples, lf_demo), "alpaca_demo"
    cache, saved = tmp_path / "cache", tmp_path / "tokenized"
    preprocess = [
        "preprocess",
        *("--dataset", dataset, "--dataset-dir", str(dataset_dir), "--template", "qwen"),
        *(
            "--tokenizer",
            str(TINY_BASE),
            "--cutoff-len",
            "256",
            "--quiet",
            "--overwrite",
            "--output",
            str(saved),
        ),
    ]
    env = {**os.environ, "FASTSFT_CACHE_DIR": str(cache)}
    producer = [sys.executable, "-c", PRODUCER, dataset, str(dataset_dir), str(TINY_BASE)]
    run_fastsft(preprocess, cache)  # warms the cache
    produced, preprocessed = [], []
    for _ in range(3):
        start = time.perf_counter()
        tokens = int(subprocess.run(producer, env=env, check=True, capture_output=True, text=True).stdout)
        produced.append(time.perf_counter() - start)
        preprocessed.append(run_fastsft(preprocess, cache).seconds)
    import datasets

    saved_tokens = sum(map(len, datasets.load_from_disk(str(saved))["train"]["input_ids"]))
    assert tokens == saved_tokens  # the same rows, in another order
    stream_rate, command_rate = tokens / min(produced), saved_tokens / min(preprocessed)
    print(
        f"\n{corpus}: {samples:,} conversations, {tokens:,} tokens: streamed producer "
        f"{min(produced):.2f} s ({stream_rate / 1e6:.2f} M tokens/s), fastsft preprocess "
        f"{min(preprocessed):.2f} s ({command_rate / 1e6:.2f} M tokens/s): {stream_rate / command_rate:.2f}x"
    )
    assert stream_rate >= PRODUCER_FLOOR * command_rate
