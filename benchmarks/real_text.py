"""Real-text ShareGPT conversations for the preprocessing benchmarks: text the project did not
generate, cut from LLaMA-Factory's demo data and the documentation and code of an installed
Python environment.

    python benchmarks/real_text.py OUT_DIR [--samples 20000] [--site-packages DIR] [--lf-data DIR]

Writes ``OUT_DIR/real_text.json`` and ``OUT_DIR/dataset_info.json`` naming it (dataset
``real_text``), like ``benchmarks/data.py``. The text stream is every string of the demo data
(``--lf-data``, LLaMA-Factory's ``data/`` folder) followed by the ``.py``, ``.md``, ``.rst`` and
``.txt`` files of ``--site-packages`` (default: this interpreter's), in sorted path order; it is cut
in order into conversations of 1-3 turns (a user turn of 100-800 characters, an assistant turn of
300-2,500), wrapping around when it runs out. Prints the corpus' characters, words and distinct
words per million words (``\\w+`` runs), the measure of how far a tokenizer's piece cache helps.
The same inputs, ``--samples`` and ``--seed`` give the same file.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATASET_NAME = "real_text"
_SUFFIXES = (".py", ".md", ".rst", ".txt")
_MAX_FILE_BYTES = 200_000  # larger files are mostly generated tables
_MAX_CHARS_PER_SAMPLE = 3 * (800 + 2500)  # the most ``conversations`` cuts per conversation


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def text_stream(site_packages: Path, lf_data: Path | None, limit: int) -> str:
    """LLaMA-Factory's demo data, then the environment's docs and code, as one text of at most about
    ``limit`` characters."""
    parts: list[str] = []
    if lf_data is not None:
        for path in sorted(lf_data.glob("*.json*")):
            if path.name == "dataset_info.json":
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            try:
                values = (
                    [json.loads(text)]
                    if path.suffix == ".json"
                    else [json.loads(x) for x in text.splitlines() if x.strip()]
                )
            except ValueError:
                continue
            parts.extend(s for s in _strings(values) if len(s) > 1 and not s.startswith(("http", "data:")))
    size = sum(map(len, parts))
    for path in sorted(site_packages.rglob("*")):
        if size >= limit:
            break
        if path.suffix in _SUFFIXES and path.is_file() and path.stat().st_size <= _MAX_FILE_BYTES:
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
            size += len(parts[-1])
    return "\n".join(parts)


def conversations(stream: str, samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """``samples`` conversations cut in order from ``stream``."""
    rng = random.Random(seed)
    position = 0

    def take(low: int, high: int) -> str:
        nonlocal position
        size = rng.randint(low, high)
        if position + size > len(stream):
            position = 0
        piece = stream[position : position + size]
        position += size
        return piece

    rows = []
    for _ in range(samples):
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns.append({"from": "human", "value": take(100, 800)})
            turns.append({"from": "gpt", "value": take(300, 2500)})
        rows.append({"conversations": turns})
    return rows


def real_conversations(
    samples: int, lf_data: Path | None, seed: int = 0, site_packages: Path | None = None
) -> list[dict[str, Any]]:
    """``samples`` conversations cut from ``text_stream`` (``site_packages``: this interpreter's by default)."""
    site_packages = site_packages or Path(sysconfig.get_paths()["purelib"])
    return conversations(text_stream(site_packages, lf_data, samples * _MAX_CHARS_PER_SAMPLE), samples, seed)


def word_stats(rows: list[dict[str, Any]]) -> tuple[int, int, float]:
    """Characters, words and distinct words per million words of the conversations."""
    words = re.compile(r"\w+")
    seen: set[str] = set()
    chars = total = 0
    for row in rows:
        for turn in row["conversations"]:
            chars += len(turn["value"])
            found = words.findall(turn["value"])
            total += len(found)
            seen.update(found)
    return chars, total, len(seen) / max(total, 1) * 1e6


def write_dataset(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{DATASET_NAME}.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {
        DATASET_NAME: {
            "file_name": path.name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
        }
    }
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--site-packages", type=Path, default=Path(sysconfig.get_paths()["purelib"]))
    parser.add_argument("--lf-data", type=Path, default=None)
    args = parser.parse_args()
    rows = real_conversations(args.samples, args.lf_data, args.seed, args.site_packages)
    path = write_dataset(args.out_dir, rows)
    chars, words, distinct = word_stats(rows)
    print(
        f"{path}: {len(rows)} conversations, {chars:,} characters, {words:,} words, {distinct:,.0f} distinct words per million"
    )


if __name__ == "__main__":
    main()
