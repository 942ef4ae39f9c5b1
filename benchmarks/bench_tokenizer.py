"""Tokenizer throughput on ~5 MB of chat-like text, every contender timed in the same run.

    pytest benchmarks/bench_tokenizer.py -s [--tokenizer PATH]

Contenders, all giving identical ids: HF ``tokenizer.encode`` one string at a time (what
LLaMA-Factory does), HF batched (``HFBackend``: one ``encode_batch_fast`` per batch, Rust threads;
and transformers' ``tokenizer(batch)`` for comparison), and ``TiktokenBackend``. Texts are encoded
in batches of ``BATCH`` segments, as the pipeline does. Prints tokens/s and ratios; fails only when
tiktoken is under 2x HF batched.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastsft.tokenization import HFBackend, TiktokenBackend, load_backend

pytest.importorskip("tiktoken")

TARGET_CHARS = 5_000_000
BATCH = 4096
TIKTOKEN_FLOOR = 2.0

ENGLISH_TEXT = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or "
    "had by not word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make thing "
    "see him two has look more day could go come did number sound no most people my over know water than "
    "call first who may down side been now find model training data learning network function value "
    "question answer explain example because however therefore result system user assistant please help"
)
ENGLISH = ENGLISH_TEXT.split()
CONTRACTIONS = ["I'm", "don't", "it's", "we'll", "you're", "they've", "can't", "He's", "I'd", "WON'T"]
SYLLABLE_TEXT = "ka lo mi ne ra to shi ven dor al ex pro con tra ment ing tion able ous ize ly er est"
SYLLABLES = SYLLABLE_TEXT.split()
CJK = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好"
    "都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此"
    "实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真"
    "数据模型训练学习网络函数问题答案解释例子系统用户助手请帮忙"
)
KANA = "こんにちはありがとうございますカタカナテストです"
CODE_LINES = [
    "def {a}_{b}({c}, {d}=None):",
    "    return {a}.{b}({c}) + {n}",
    "    for {c} in range({n}):",
    "        {a}[{c}] = {b}_{d} * {n}.{n}",
    "class {A}{B}({A}):",
    "    if {c} != {d} and not {a}_{b}:",
    '        raise ValueError(f"bad {c}: {{{c}!r}}")',
    "import {a}.{b} as {c}",
    "x = {{'{a}': [{n}, {n}, {n}], \"{b}\": ({c}, {d})}}  # {a} {b}",
    "    {a}_{b} = lambda {c}: {c} ** {n} // {n}",
    "\t\t{a}->{b} = {n};",
]


def _rare_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def _english(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        roll = rng.random()
        if roll < 0.05:
            word = rng.choice(CONTRACTIONS)
        elif roll < 0.3:
            word = _rare_word(rng)
        elif roll < 0.35:
            word = str(rng.randint(0, 10 ** rng.randint(1, 6)))
        else:
            word = rng.choice(ENGLISH)
        if rng.random() < 0.1:
            word = word.capitalize()
        word += rng.choice([""] * 12 + [",", ".", ".\n", "?", "!", ":", "\n\n", "\n- "])
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def _chinese(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    while sum(map(len, out)) < chars:
        sentence = "".join(rng.choice(CJK) for _ in range(rng.randint(5, 30)))
        if rng.random() < 0.2:
            sentence += rng.choice(
                [" GPU ", " Python ", " 2024年", " LLaMA-Factory ", KANA[: rng.randint(3, 12)]]
            )
        out.append(sentence + rng.choice("，。！？；\n"))
    return "".join(out)


def _code(rng: random.Random, chars: int) -> str:
    lines: list[str] = []
    while sum(map(len, lines)) < chars:
        fields = {key: _rare_word(rng) for key in "abcd"}
        fields.update({key: _rare_word(rng).capitalize() for key in "AB"})
        line = rng.choice(CODE_LINES)
        while "{n}" in line:
            line = line.replace("{n}", str(rng.randint(0, 999)), 1)
        lines.append(line.format(**fields))
    return "```python\n" + "\n".join(lines) + "\n```"


def chat_corpus(target_chars: int = TARGET_CHARS, seed: int = 0) -> list[str]:
    """Deterministic chat-message texts: English prose, Chinese (with some Japanese), code, mixtures;
    lengths exponential around 600 characters."""
    rng = random.Random(seed)
    texts: list[str] = []
    total = 0
    while total < target_chars:
        chars = min(8000, max(1, int(rng.expovariate(1 / 600))))
        roll = rng.random()
        if roll < 0.5:
            text = _english(rng, chars)
        elif roll < 0.75:
            text = _chinese(rng, chars)
        elif roll < 0.9:
            text = _english(rng, chars // 3) + "\n\n" + _code(rng, chars) + "\n"
        else:
            text = _chinese(rng, chars // 2) + _english(rng, chars // 2)
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
