"""Write the bundled tiny ShareGPT sample (examples/tiny/data/) deterministically.

The conversations are small families of templated tasks (arithmetic, capitals, reversing,
counting, casing, English↔CJK phrases, repeating a paragraph), single- and multi-turn, some
with a system prompt, from a few tokens to a few hundred. They are regular enough that a tiny
random-init model visibly learns them in a few hundred steps, which is what the embedded
``fastsft train examples/tiny_sft.yaml`` demo and the tests need. Run from the repository root:

    python scripts/make_tiny_example.py
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 20240611
NUM_CONVERSATIONS = 400
DATASET_NAME = "tiny_sharegpt"

CAPITALS = [
    ("France", "Paris", "法国", "巴黎"),
    ("Germany", "Berlin", "德国", "柏林"),
    ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"),
    ("Japan", "Tokyo", "日本", "东京"),
    ("China", "Beijing", "中国", "北京"),
    ("Egypt", "Cairo", "埃及", "开罗"),
    ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Brazil", "Brasilia", "巴西", "巴西利亚"),
    ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("Peru", "Lima", "秘鲁", "利马"),
    ("Norway", "Oslo", "挪威", "奥斯陆"),
]
JAPANESE_WORDS = [
    ("こんにちは", "hello"),
    ("ありがとう", "thank you"),
    ("さようなら", "goodbye"),
    ("ねこ", "cat"),
    ("いぬ", "dog"),
    ("みず", "water"),
    ("やま", "mountain"),
    ("そら", "sky"),
]
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "paper",
    "silver",
    "orange",
    "candle",
    "forest",
    "bridge",
    "rocket",
    "pencil",
    "violin",
    "harbor",
    "meadow",
    "lantern",
    "puzzle",
    "marble",
]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer briefly and exactly.", "你是一个乐于助人的助手。"]

Turn = tuple[str, str]


def arithmetic(rng: random.Random) -> Turn:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
    return f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"


def capital(rng: random.Random) -> Turn:
    country, city, country_zh, city_zh = rng.choice(CAPITALS)
    if rng.random() < 0.6:
        return f"What is the capital of {country}?", f"The capital of {country} is {city}."
    return f"{country_zh}的首都是哪里？", f"{country_zh}的首都是{city_zh}。"


def reverse(rng: random.Random) -> Turn:
    word = rng.choice(WORDS)
    return f"Reverse the word '{word}'.", f"'{word}' reversed is '{word[::-1]}'."


def count(rng: random.Random) -> Turn:
    start = rng.randint(1, 20)
    end = start + rng.randint(2, 40)
    return f"Count from {start} to {end}.", ", ".join(str(n) for n in range(start, end + 1)) + "."


def upper(rng: random.Random) -> Turn:
    phrase = " ".join(rng.sample(WORDS, rng.randint(2, 5)))
    return f"Write '{phrase}' in capital letters.", phrase.upper()


def japanese(rng: random.Random) -> Turn:
    word, english = rng.choice(JAPANESE_WORDS)
    if rng.random() < 0.5:
        return f"「{word}」を英語で言うと？", f"「{word}」は英語で「{english}」です。"
    return f"How do you say '{english}' in Japanese?", f"'{english}' in Japanese is 「{word}」."


def repeat(rng: random.Random) -> Turn:
    sentences = []
    for _ in range(rng.randint(2, 6)):
        words = rng.choices(WORDS, k=rng.randint(4, 9))
        sentences.append(" ".join(words).capitalize() + ".")
    paragraph = " ".join(sentences)
    return f"Repeat after me: {paragraph}", paragraph


TASKS: list[Callable[[random.Random], Turn]] = [arithmetic, capital, reverse, count, upper, japanese, repeat]


def conversation(rng: random.Random) -> dict[str, object]:
    """One ShareGPT record: 1-3 turns of random tasks, sometimes with a system prompt."""
    turns = [rng.choice(TASKS)(rng) for _ in range(rng.choices([1, 2, 3], weights=[6, 3, 1])[0])]
    messages = []
    for question, answer in turns:
        messages.append({"from": "human", "value": question})
        messages.append({"from": "gpt", "value": answer})
    record: dict[str, object] = {"conversations": messages}
    if rng.random() < 0.25:
        record["system"] = rng.choice(SYSTEM_PROMPTS)
    return record


def build(num: int = NUM_CONVERSATIONS, seed: int = SEED) -> list[dict[str, object]]:
    """The sample's records: the same list for the same ``num`` and ``seed``."""
    rng = random.Random(seed)
    return [conversation(rng) for _ in range(num)]


def write(out_dir: Path, records: list[dict[str, object]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data_file = f"{DATASET_NAME}.json"
    lines = ",\n".join(json.dumps(record, ensure_ascii=False) for record in records)
    (out_dir / data_file).write_text(f"[\n{lines}\n]\n", encoding="utf-8")  # one record per line
    info = {
        DATASET_NAME: {
            "file_name": data_file,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
        }
    }
    with open(out_dir / "dataset_info.json", "w", encoding="utf-8") as f:
        json.dump(info, f, ensure_ascii=False, indent=2)
        f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/tiny/data"))
    parser.add_argument("--num", type=int, default=NUM_CONVERSATIONS)
    args = parser.parse_args()
    write(args.out, build(args.num))
    print(f"wrote {args.num} conversations to {args.out}")


if __name__ == "__main__":
    main()
