"""Tokenizer throughput on ~5 MB of chat-like text, every contender timed in the same run.

    pytest benchmarks/bench_tokenizer.py -s [--tokenizer PATH]

Contenders, all giving identical ids: HF ``tokenizer.encode`` one string at a time (what
LLaMA-Factory does), HF batched (``HFBackend``: one ``encode_batch_fast`` per batch, Rust threads;
and transformers' ``tokenizer(batch)`` for comparison), and ``TiktokenBackend``. Texts are encoded
in batches of ``BATCH`` segments, as the pipeline does. Prints tokens/s and ratios; fails only when
tiktoken is under 2x HF batched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from data import ChatWriter

from fastsft.tokenization import HFBackend, TiktokenBackend, load_backend

pytest.importorskip("tiktoken")

TARGET_CHARS = 5_000_000
BATCH = 4096
TIKTOKEN_FLOOR = 2.0


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


def _timed(function: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _in_batches(encode: Callable[[list[str]], object], texts: list[str]) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, len(texts), BATCH):
            encode(texts[start : start + BATCH])

    return run


def test_tokenizer_throughput(benchmark, tokenizer_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    tiktoken_backend = load_backend(tokenizer, "fast")
    assert isinstance(tiktoken_backend, TiktokenBackend)
    hf_backend = HFBackend(tokenizer)
    texts = chat_corpus()

    start = time.perf_counter()
    expected = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    per_string = time.perf_counter() - start
    assert tiktoken_backend.encode_batch(texts) == expected, "tiktoken ids differ from HF"
    assert hf_backend.encode_batch(texts) == expected
    n_tokens = sum(map(len, expected))

    hf_batched = _timed(_in_batches(hf_backend.encode_batch_flat, texts), 2)
    hf_call = _timed(_in_batches(lambda batch: tokenizer(batch, add_special_tokens=False), texts), 1)
    benchmark.pedantic(_in_batches(tiktoken_backend.encode_batch_flat, texts), rounds=3, iterations=1)
    tiktoken_flat = benchmark.stats.stats.min
    tiktoken_lists = _timed(_in_batches(tiktoken_backend.encode_batch, texts), 1)

    rates = {
        "HF encode, one string at a time": per_string,
        "HF batched (HFBackend, encode_batch_fast)": hf_batched,
        "HF batched (transformers tokenizer(batch))": hf_call,
        f"tiktoken encode_batch_flat ({tiktoken_backend.num_threads} threads)": tiktoken_flat,
        f"tiktoken encode_batch, lists ({tiktoken_backend.num_threads} threads)": tiktoken_lists,
    }
    chars = sum(map(len, texts))
    print(
        f"\n{len(texts)} texts, {chars / 1e6:.1f} M characters, {n_tokens / 1e6:.2f} M tokens, batches of {BATCH}"
    )
    for name, seconds in rates.items():
        print(
            f"  {name:<52} {n_tokens / seconds / 1e3:8.0f} k tokens/s"
            f"   tiktoken flat is {seconds / tiktoken_flat:5.2f}x faster"
        )
    benchmark.extra_info.update({name: n_tokens / seconds for name, seconds in rates.items()})
    assert hf_batched / tiktoken_flat >= TIKTOKEN_FLOOR, (
        f"tiktoken is only {hf_batched / tiktoken_flat:.2f}x HF batched (floor {TIKTOKEN_FLOOR}x)"
    )
