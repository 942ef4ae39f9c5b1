"""The chat-template mode against TRL (issue 34): the whole ``fastsft preprocess --template
chat_template`` command against TRL's own preprocessing of the same conversations, as users run them.

    pytest benchmarks/bench_chat_template.py -s [--tokenizer PATH] [--bench-samples 20000] [--lf-data DIR]

Both read the same ``--bench-samples`` conversations (default 2,000; docs/benchmarks.md uses
20,000) in OpenAI ``messages`` form, a JSON Lines file (fastsft through a ``dataset_info.json``
entry with OpenAI role tags), with the Qwen2 tokenizer (``--tokenizer``) whose chat template is set
to TRL 1.16's ``qwen2_5.jinja``, so both swap in its training version with ``{% generation %}``
markers. Corpora: ``benchmarks/data.py``'s synthetic conversations (its ``system`` prompt becomes a
system message) and ``benchmarks/real_text.py``'s real text (LLaMA-Factory's demo data from
``--lf-data``, then the docs and code of this environment). No truncation on either side
(``--cutoff-len`` above any conversation, TRL's ``max_length=None``).

* fastsft: ``python -m fastsft preprocess ... --template chat_template`` in a fresh process with a
  warm tokenizer cache (one untimed run of the same command first, as a user's second run finds it).
* TRL: ``benchmarks/trl_peer.py`` in a fresh process: loads the tokenizer, ``load_dataset("json")``,
  constructs ``SFTTrainer(..., args=SFTConfig(assistant_only_loss=True))`` on a tiny model, which
  tokenizes the dataset (``dataset_num_proc`` default). Each run gets a fresh ``HF_DATASETS_CACHE``,
  so ``datasets`` does not hand it the previous run's map.

The untimed first runs of both save their outputs, and every row's ``input_ids`` and ``labels``
must be equal. Then the two alternate for ``ROUNDS`` rounds (the pytest-benchmark entry is one
round) and each keeps its best wall time. Fails when TRL / fastsft is under ``FLOOR``: a regression
guard set below the measured ratios (docs/benchmarks.md: 11.2x-21.6x).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data import generate_conversations
from measured import run_measured_command
from real_text import real_conversations

HERE = Path(__file__).resolve().parent
DATASET = "chat_messages"
TRL_FAMILY = "qwen2_5"  # TRL's original Qwen2.5 template; both sides swap in its training version
CUTOFF_LEN = 1_000_000  # above any conversation: TRL's max_length=None truncates nothing either
ROUNDS = 3
FLOOR = 8.0  # TRL / fastsft, whole processes: below the worst measured ratio, 11.16x (docs/benchmarks.md)
ROLES = {"human": "user", "gpt": "assistant"}
DATASET_INFO = {
    DATASET: {
        "file_name": f"{DATASET}.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }
}


def openai_messages(row: dict[str, Any]) -> dict[str, Any]:
    """A ShareGPT row of ``data.py`` / ``real_text.py`` as an OpenAI ``messages`` row."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    turns = [{"role": ROLES[turn["from"]], "content": turn["value"]} for turn in row["conversations"]]
    return {"messages": system + turns}


def sharegpt_rows(corpus: str, samples: int, lf_data: Path) -> list[dict[str, Any]]:
    if corpus == "synthetic":
        return generate_conversations(samples)
    return real_conversations(samples, lf_data if lf_data.is_dir() else None)


def write_messages(folder: Path, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / f"{DATASET}.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(openai_messages(row), ensure_ascii=False) + "\n" for row in rows)
    (folder / "dataset_info.json").write_text(json.dumps(DATASET_INFO, indent=2) + "\n", encoding="utf-8")
    return folder


def qwen2_5_tokenizer(tokenizer_path: Path, folder: Path) -> Path:
    """A copy of ``tokenizer_path`` whose chat template is TRL's ``qwen2_5.jinja``."""
    trl = pytest.importorskip("trl")
    shutil.copytree(tokenizer_path, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    template = Path(trl.__file__).parent / "chat_templates" / f"{TRL_FAMILY}.jinja"
    config["chat_template"] = template.read_text(encoding="utf-8")
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return folder


def timed(argv: list[str], **env: str) -> float:
    result = run_measured_command(argv, {**os.environ, **env})
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv[:4])} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.seconds


def token_rows(path: Path) -> tuple[np.ndarray, ...]:
    """Row lengths and flattened values of a saved dataset's ``input_ids`` and ``labels``."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    table = (loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded).data.table
    arrays = []
    for name in ("input_ids", "labels"):
        column = table.column(name).combine_chunks()
        arrays += [np.asarray(column.value_lengths()), np.asarray(column.flatten(), dtype=np.int64)]
    return tuple(arrays)


@pytest.mark.parametrize("corpus", ["synthetic", "real_text"])
def test_command_against_trl(
    benchmark, corpus: str, tmp_path: Path, tokenizer_path: Path, request: pytest.FixtureRequest
) -> None:
    samples = int(request.config.getoption("--bench-samples"))
    lf_data = Path(request.config.getoption("--lf-data"))
    data = write_messages(tmp_path / "data", sharegpt_rows(corpus, samples, lf_data))
    tokenizer = qwen2_5_tokenizer(tokenizer_path, tmp_path / "tokenizer")
    cache = str(tmp_path / "fastsft-cache")

    def fastsft_argv(output: Path) -> list[str]:
        return [
            *(
                sys.executable,
                "-m",
                "fastsft",
                "preprocess",
                "--dataset",
                DATASET,
                "--dataset-dir",
                str(data),
            ),
            *("--tokenizer", str(tokenizer), "--template", "chat_template", "--cutoff-len", str(CUTOFF_LEN)),
            *("--quiet", "--overwrite", "--output", str(output)),
        ]

    def trl_argv(*save: str) -> list[str]:
        return [
            sys.executable,
            str(HERE / "trl_peer.py"),
            str(data / f"{DATASET}.jsonl"),
            str(tokenizer),
            *save,
        ]

    runs = iter(range(1_000))

    def trl_seconds(*save: str) -> float:
        return timed(trl_argv(*save), HF_DATASETS_CACHE=str(tmp_path / f"hf-datasets-{next(runs)}"))

    # untimed first runs: warm tokenizer cache (fastsft), warm page cache (both); outputs compared
    timed(fastsft_argv(tmp_path / "fastsft-first"), FASTSFT_CACHE_DIR=cache)
    trl_seconds("--save", str(tmp_path / "trl-first"))
    ours, theirs = token_rows(tmp_path / "fastsft-first"), token_rows(tmp_path / "trl-first")
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)), "rows differ from TRL's"
    assert len(ours[0]) == samples

    times: dict[str, list[float]] = {"fastsft": [], "trl": []}

    def one_round() -> None:
        times["fastsft"].append(timed(fastsft_argv(tmp_path / "fastsft-out"), FASTSFT_CACHE_DIR=cache))
        times["trl"].append(trl_seconds())

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    fastsft_s, trl_s = min(times["fastsft"]), min(times["trl"])
    tokens = int(ours[1].size)
    print(
        f"\n{corpus}: {samples} conversations, {tokens:,} tokens, {tokenizer_path.name} tokenizer with TRL's "
        f"{TRL_FAMILY} template (best of {ROUNDS} alternating rounds; load average {os.getloadavg()[0]:.2f})"
        f"\n  fastsft preprocess --template chat_template  {fastsft_s:7.2f} s"
        f"\n  TRL SFTTrainer(assistant_only_loss=True)      {trl_s:7.2f} s"
        f"\n  TRL / fastsft                                 {trl_s / fastsft_s:7.2f}x"
    )
    assert trl_s / fastsft_s >= FLOOR
