"""Tokenizer throughput on ~5 MB of chat-like text, every contender timed in the same run.

    pytest benchmarks/bench_tokenizer.py -s [--tokenizer PATH]

Run for the ``--tokenizer`` (Qwen2 by default) and Meta's Llama 3 tokenizer
(``scripts/make_llama3_tokenizer.py``), each skipped when absent. Contenders, all giving identical
ids: HF ``tokenizer.encode`` one string at a time (what LLaMA-Factory does), HF batched
(``RustEncoder``: one ``encode_batch_fast`` per batch, Rust threads; and transformers'
``tokenizer(batch)`` for comparison), and fastokens (``FastokensEncoder``). Texts are
encoded in batches of ``BATCH`` segments, as the pipeline does, each timed pass by a freshly built
encoder (the first pass of a fresh tokenizer, as in a preprocessing run). Prints tokens/s and ratios; fails
when the fast backend is under ``FAST_FLOOR`` x HF batched.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from data import ChatWriter

from fastsft.tokenizer.encoders import FastokensEncoder, RustEncoder, encoder_for

REPO = Path(__file__).resolve().parents[1]
LLAMA3_TOKENIZER = REPO / ".cache" / "tokenizers" / "llama3"

TARGET_CHARS = 5_000_000
BATCH = 4096
FAST_FLOOR = 10.0


def chat_corpus(target_chars: int = TARGET_CHARS, seed: int = 0) -> list[str]:
    """Deterministic chat-message texts from ``benchmarks/data.py``'s writer (the text
    ``bench_preprocess.py`` tokenizes): English prose with markdown, Chinese with some Japanese,
    code blocks, mixtures; lengths exponential around 600 characters."""
    writer = ChatWriter(seed)
    rng = writer.rng
    texts: list[str] = []
    total = 0
    while total < target_chars:
        chars = min(8000, max(1, int(rng.expovariate(1 / 600))))
        roll = rng.random()
        if roll < 0.5:
            text = writer.english(chars, markdown=True)
        elif roll < 0.75:
            text = writer.chinese(chars)
        elif roll < 0.9:
            text = writer.english(chars // 3, markdown=False) + "\n\n" + writer.code(chars) + "\n"
        else:
            text = writer.chinese(chars // 2) + writer.english(chars // 2, markdown=False)
        texts.append(text)
        total += len(text)
    return texts


def _timed_cold(
    make_encode: Callable[[], Callable[[list[str]], object]], texts: list[str], repeats: int
) -> float:
    """Best wall time of ``repeats`` passes over ``texts``, in seconds, each with a fresh encoder from
    ``make_encode`` (built untimed), so no contender gains from caching the words of an earlier pass."""
    best = float("inf")
    for _ in range(repeats):
        run = _in_batches(make_encode(), texts)
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _in_batches(encode: Callable[[list[str]], object], texts: list[str]) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, len(texts), BATCH):
            encode(texts[start : start + BATCH])

    return run


@pytest.fixture(params=["tokenizer", "llama3"])
def bench_tokenizer_path(request: pytest.FixtureRequest) -> Path:
    """The ``--tokenizer`` directory, then Meta's Llama 3 tokenizer; each skipped when absent."""
    if request.param == "tokenizer":
        return request.getfixturevalue("tokenizer_path")
    if not (LLAMA3_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(
            f"Llama 3 tokenizer not built at {LLAMA3_TOKENIZER} (run scripts/make_llama3_tokenizer.py)"
        )
    return LLAMA3_TOKENIZER


def test_tokenizer_throughput(benchmark, bench_tokenizer_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bench_tokenizer_path), local_files_only=True)
    fast_backend = encoder_for(tokenizer, "fast")
    assert isinstance(fast_backend, FastokensEncoder)
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    hf_backend = RustEncoder(tokenizer_json, split_special_tokens=False)
    texts = chat_corpus()

    start = time.perf_counter()  # the freshly loaded tokenizer: a cold first pass, as in LLaMA-Factory
    expected = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    per_string = time.perf_counter() - start
    assert fast_backend.encode_batch(texts) == expected, "fastokens ids differ from HF"
    assert hf_backend.encode_batch(texts) == expected
    n_tokens = sum(map(len, expected))

    def fresh_hf() -> Any:
        return copy.deepcopy(tokenizer)  # a new Rust tokenizer, empty BPE cache

    hf_batched = _timed_cold(lambda: RustEncoder(tokenizer_json, False).encode_batch_flat, texts, 2)
    hf_call = _timed_cold(lambda: partial(fresh_hf(), add_special_tokens=False), texts, 1)

    def built_fastokens() -> FastokensEncoder:
        encoder = FastokensEncoder(tokenizer_json, False, background=False)
        encoder.encode_batch_flat([])  # built here, untimed
        return encoder

    def fresh_fast() -> tuple[tuple[Callable[[], None]], dict[str, Any]]:
        return (_in_batches(built_fastokens().encode_batch_flat, texts),), {}

    benchmark.pedantic(lambda run: run(), setup=fresh_fast, rounds=3, iterations=1)
    fast_flat = benchmark.stats.stats.min
    fast_lists = _timed_cold(lambda: built_fastokens().encode_batch, texts, 1)

    rates = {
        "HF encode, one string at a time": per_string,
        "HF batched (RustEncoder, encode_batch_fast)": hf_batched,
        "HF batched (transformers tokenizer(batch))": hf_call,
        "fastokens encode_batch_flat": fast_flat,
        "fastokens encode_batch, lists": fast_lists,
    }
    chars = sum(map(len, texts))
    print(
        f"\n{bench_tokenizer_path.name}: {len(texts)} texts, {chars / 1e6:.1f} M characters, "
        f"{n_tokens / 1e6:.2f} M tokens, batches of {BATCH}"
    )
    for name, seconds in rates.items():
        print(
            f"  {name:<52} {n_tokens / seconds / 1e3:8.0f} k tokens/s"
            f"   fastokens flat is {seconds / fast_flat:6.2f}x faster"
        )
    benchmark.extra_info.update({name: n_tokens / seconds for name, seconds in rates.items()})
    assert hf_batched / fast_flat >= FAST_FLOOR, (
        f"fastokens is only {hf_batched / fast_flat:.2f}x HF batched (floor {FAST_FLOOR}x)"
    )
