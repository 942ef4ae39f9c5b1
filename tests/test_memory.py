"""Preprocessing into a cache file keeps peak memory flat as the dataset grows.

Each run is a fresh interpreter that reports its peak RSS, on the same data at two sizes (the
larger holds about 10 M more tokens, 80 MB as int32 input ids + labels). The in-memory build is
the control: it must grow, or the measurement could not tell anything apart.
``pytest tests/test_memory.py -s`` prints each growth.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("resource", reason="peak RSS needs the resource module (POSIX)")

pytestmark = pytest.mark.slow

SMALL, LARGE = 1500, 6000
WORDS = [f"w{i}" for i in range(300)]

PEAK_RSS = """
import resource, sys
from transformers import AutoTokenizer
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import build_dataset

folder, tokenizer, packing, cached = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "cached"
workers = int(sys.argv[5])
options = {"packing": True, "packing_strategy": packing} if packing != "none" else {}
# fastsft's BPE, not fastokens (auto's choice at this size): fastokens' threads move the peak by
# up to 25 MiB from run to run at either size, which would drown what this test measures.
args = DataArgs(
    dataset="chat",
    dataset_dir=folder,
    template="qwen",
    cutoff_len=2048,
    preprocessing_batch_size=100,
    tokenizer_backend="bpe",
    **options,
)
cache_file = folder + "/rows.arrow" if cached else None
tokenizer = AutoTokenizer.from_pretrained(tokenizer)
try:  # Linux: reset the peak, so start-up (imports, the tokenizer) is left out of it
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
dataset, summary = build_dataset(args, tokenizer, cache_file=cache_file, workers=workers)
try:
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
except OSError:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
print(summary.tokens, peak)
"""


def write_chat(folder: Path, samples: int, *, array: bool = False) -> Path:
    """``samples`` seeded ShareGPT conversations of 2-4 turns, about 1,700 fixture-tokenizer tokens
    each, as JSON Lines or (``array``) as one indented JSON array."""
    folder.mkdir()
    rng = random.Random(0)
    rows = []
    for _ in range(samples):
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(50, 300))) for _ in range(2 * rng.randint(2, 4))]
        roles = ("human", "gpt")
        rows.append({"conversations": [{"from": roles[i % 2], "value": t} for i, t in enumerate(texts)]})
    file_name = "chat.json" if array else "chat.jsonl"
    with open(folder / file_name, "w", encoding="utf-8") as handle:
        if array:
            json.dump(rows, handle, indent=1)
        else:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    info = {"chat": {"file_name": file_name, "formatting": "sharegpt"}}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("memory")
    return {n: write_chat(root / str(n), n) for n in (SMALL, LARGE)}


def peak_rss(folder: Path, tokenizer: Path, packing: str, cached: bool, workers: int = 1) -> tuple[int, int]:
    """(tokens out, peak RSS in bytes) of one ``build_dataset`` run in a fresh interpreter (the
    main process's own: with workers, that is where results in flight pile up)."""
    argv = [str(folder), str(tokenizer), packing, "cached" if cached else "in-memory", str(workers)]
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *argv], capture_output=True, text=True, check=True, timeout=600
    )
    tokens, rss = result.stdout.split()[-2:]
    return int(tokens), int(rss)


@pytest.mark.parametrize(
    ("packing", "workers"), [("none", 1), ("bfd", 1), ("llamafactory", 1), ("bfd", 2)], ids=str
)
def test_peak_memory_does_not_grow_with_the_dataset(datasets, fixture_tokenizer_path, packing, workers):
    small_tokens, small_cached = peak_rss(datasets[SMALL], fixture_tokenizer_path, packing, True, workers)
    large_tokens, large_cached = peak_rss(datasets[LARGE], fixture_tokenizer_path, packing, True, workers)
    more_token_bytes = 8 * (large_tokens - small_tokens)  # int32 input ids + labels
    print(
        f"\n{packing}, {workers} worker(s): peak RSS +{(large_cached - small_cached) / 2**20:.0f} MiB "
        f"for {more_token_bytes / 2**20:.0f} MiB more tokens"
    )
    assert more_token_bytes > 60 * 2**20
    assert large_cached - small_cached < more_token_bytes / 4, (
        f"peak RSS grew by {(large_cached - small_cached) / 2**20:.0f} MiB for "
        f"{more_token_bytes / 2**20:.0f} MiB more tokens"
    )


def test_in_memory_build_grows_with_the_dataset(datasets, fixture_tokenizer_path):
    """The control: holding every row in memory shows up in the same measurement."""
    small_tokens, small_rss = peak_rss(datasets[SMALL], fixture_tokenizer_path, "bfd", cached=False)
    large_tokens, large_rss = peak_rss(datasets[LARGE], fixture_tokenizer_path, "bfd", cached=False)
    print(f"\nin memory, control: peak RSS +{(large_rss - small_rss) / 2**20:.0f} MiB")
    assert large_rss - small_rss > 8 * (large_tokens - small_tokens)


WHOLE_FILE_GROWTH = """
import sys, orjson
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
start = status("VmRSS:")
rows = orjson.loads(open(sys.argv[1], "rb").read())
print(status("VmHWM:") - start)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_json_array_is_read_in_the_memory_of_json_lines(tmp_path, datasets, fixture_tokenizer_path):
    """The same conversations as one JSON array and as JSON Lines: the array is streamed, so its
    peak RSS stays within 1.5x of the JSON Lines run, and above it by far less than reading the
    file whole costs (the control, measured on its own: what the reader used to add)."""
    array = write_chat(tmp_path / "array", LARGE, array=True)
    lines_tokens, lines_rss = peak_rss(datasets[LARGE], fixture_tokenizer_path, "none", cached=True)
    array_tokens, array_rss = peak_rss(array, fixture_tokenizer_path, "none", cached=True)
    whole = subprocess.run(
        [sys.executable, "-c", WHOLE_FILE_GROWTH, str(array / "chat.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    whole_file_growth = int(whole.stdout.split()[-1])
    print(
        f"\nJSON Lines {lines_rss / 2**20:.0f} MiB, JSON array {array_rss / 2**20:.0f} MiB; "
        f"parsing the array whole takes {whole_file_growth / 2**20:.0f} MiB"
    )
    assert array_tokens == lines_tokens
    assert whole_file_growth > 64 * 2**20  # the control: large enough to be seen
    assert array_rss - lines_rss < whole_file_growth / 4
    assert array_rss < 1.5 * lines_rss
