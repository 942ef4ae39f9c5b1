"""Shared benchmark fixtures: the ``--tokenizer`` option and synthetic pre-tokenized conversations.

Run with ``pytest benchmarks/<file>.py``; performance checks assert ratios measured in one run.
Benchmarks take what they share as fixtures (not imports), so this conftest never clashes with
``tests/conftest.py`` when both directories run in one session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tokenizer",
        default=str(REPO.parent / "shared" / "tokenizers" / "qwen2"),
        help="tokenizer directory for benchmarks that tokenize (default: ../shared/tokenizers/qwen2 beside the repo)",
    )
    # bench_preprocess.py
    parser.addoption(
        "--bench-samples",
        type=int,
        default=2000,
        help="conversations in bench_preprocess.py's synthetic dataset (docs/benchmarks.md uses 20000)",
    )
    parser.addoption(
        "--bench-large-samples",
        type=int,
        default=100_000,
        help="conversations in bench_preprocess.py's JSON array vs JSON Lines comparison (the issue: 100000)",
    )
    # bench_streaming.py
    parser.addoption(
        "--bench-stream-samples",
        type=int,
        default=20_000,
        help="conversations in bench_streaming.py's smaller dataset (the larger has 10x; the issue: 100000)",
    )
    parser.addoption(
        "--lf-data",
        default=str(REPO.parent / "lf-sdist" / "llamafactory-0.9.5" / "data"),
        help="LLaMA-Factory's data/ folder (its demo datasets, real text) for the real-text corpora",
    )
    parser.addoption(
        "--bench-template",
        default="qwen",
        help="chat template for bench_preprocess.py (llama3 with Meta's Llama 3 tokenizer)",
    )
    parser.addoption(
        "--lf-python",
        default=str(REPO.parent / "venv-lf" / "bin" / "python"),
        help="LLaMA-Factory 0.9.5 interpreter for bench_preprocess.py's peer runs, skipped when absent "
        "(default: ../venv-lf/bin/python beside the repo)",
    )
    # bench_cpu_threads.py
    parser.addoption(
        "--thread-steps", type=int, default=40, help="training steps per run in bench_cpu_threads.py"
    )
    parser.addoption(
        "--thread-rounds", type=int, default=3, help="rounds of both runs in bench_cpu_threads.py"
    )


@pytest.fixture(scope="session")
def tokenizer_path(request: pytest.FixtureRequest) -> Path:
    """The ``--tokenizer`` directory; benchmarks that need it are skipped when it is absent."""
    path = Path(request.config.getoption("--tokenizer"))
    if not path.is_dir():
        pytest.skip(f"tokenizer not found at {path} (pass --tokenizer PATH)")
    return path


@dataclass(frozen=True)
class Conversations:
    """Pre-tokenized conversations in the kernel layout (see ``assemble_supervised``)."""

    token_ids: np.ndarray  # int32[N]
    message_bounds: np.ndarray  # int64[M + 1]
    sample_bounds: np.ndarray  # int64[n + 1]

    def pairs(self) -> list[list[tuple[list[int], list[int]]]]:
        """Per sample, its (prompt, response) token lists: the reference encoder's input."""
        messages = [
            self.token_ids[a:b].tolist()
            for a, b in zip(self.message_bounds[:-1], self.message_bounds[1:], strict=True)
        ]
        return [
            list(zip(messages[a:b:2], messages[a + 1 : b : 2], strict=True))
            for a, b in zip(self.sample_bounds[:-1], self.sample_bounds[1:], strict=True)
        ]


def synthetic_conversations(n_samples: int, mean_tokens: int, seed: int = 0) -> Conversations:
    """``n_samples`` conversations of 2-8 turns (prompt, response pairs) and ``mean_tokens`` tokens
    on average, message lengths exponential (a long tail that exercises truncation), Qwen2-sized
    vocabulary."""
    rng = np.random.default_rng(seed)
    turns = rng.integers(2, 9, size=n_samples)
    messages_per_sample = 2 * turns
    mean_message = np.repeat(mean_tokens / messages_per_sample, messages_per_sample)
    message_lengths = np.maximum(1, rng.exponential(mean_message)).astype(np.int64)
    message_bounds = np.concatenate([[0], np.cumsum(message_lengths)])
    sample_bounds = np.concatenate([[0], np.cumsum(messages_per_sample)])
    token_ids = rng.integers(0, 151_643, size=int(message_bounds[-1]), dtype=np.int32)
    return Conversations(token_ids, message_bounds, sample_bounds)


@pytest.fixture(scope="session")
def conversations() -> Conversations:
    """20k conversations, ~740 tokens each."""
    return synthetic_conversations(n_samples=20_000, mean_tokens=740)


def _best_time(function: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls, in seconds (``perf_counter``, pytest-benchmark's timer)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.fixture(scope="session")
def best_time() -> Callable[[Callable[[], object], int], float]:
    """``best_time(function, repeats)``: the best wall time of ``repeats`` calls, in seconds."""
    return _best_time
