"""The table of docs/chat_templates.md: ``fastsft check-template`` for LLaMA-Factory's ``qwen``,
``qwen3``, ``llama3``, ``deepseek3`` and ``gemma3`` templates against TRL's copies of the models'
original jinja templates, on LLaMA-Factory's demo data and the multi-turn chats of tests/data/sharegpt_chat.json, one dataset
at a time.

Vocabularies: the real Qwen2 tokenizer for the Qwen families, the Llama 3 tokenizer
(scripts/make_llama3_tokenizer.py) for llama3; no DeepSeek-V3 or Gemma 3 tokenizer is on this
machine, so for those the Qwen2 vocabulary gets the family's special tokens (bos, eos, turn and
tool markers) as single special tokens, which is what the templates' structure is about.

    python scripts/check_template_table.py [--lf-data DIR] [--qwen2 DIR] [--llama3 DIR] [--examples]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LF_DATASETS = ("identity", "alpaca_en_demo", "glaive_toolcall_en_demo")
OWN_DATASETS = ("sharegpt_chat",)  # tests/data: multi-turn chats, some with a system prompt
DERIVED_SPECIALS = {
    "deepseek3": {
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": "<｜end▁of▁sentence｜>",
        "additional_special_tokens": [
            "<｜User｜>",
            "<｜Assistant｜>",
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>",
            "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>",
            "<｜tool▁output▁begin｜>",
            "<｜tool▁output▁end｜>",
            "<｜tool▁sep｜>",
        ],
    },
    "gemma3": {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
    },
}
# (LF template, TRL template file, vocabulary, extra flags)
CHECKS = (
    ("qwen", "qwen2_5", "qwen2", ()),
    ("qwen3", "qwen3", "qwen2", ()),
    ("llama3", "llama3", "llama3", ()),
    ("deepseek3", "deepseekv3", "deepseek3", ("--tool-arguments", "json")),  # it concatenates the arguments
    ("gemma3", "gemma3", "gemma3", ()),
)


def derived_tokenizer(qwen2: Path, family: str, folder: Path) -> Path:
    """The Qwen2 tokenizer with ``family``'s special tokens, saved under ``folder``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(qwen2), local_files_only=True)
    tokenizer.add_special_tokens(DERIVED_SPECIALS[family])
    tokenizer.chat_template = None
    path = folder / family
    tokenizer.save_pretrained(str(path))
    return path


def main() -> int:
    import trl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lf-data", default="/work/lf-sdist/llamafactory-0.9.5/data")
    qwen2 = os.environ.get("FASTSFT_QWEN2_TOKENIZER", str(REPO.parent / "shared" / "tokenizers" / "qwen2"))
    parser.add_argument("--qwen2", default=qwen2, help="the Qwen2 tokenizer (default as tests/conftest.py)")
    parser.add_argument("--llama3", default=str(REPO / ".cache" / "tokenizers" / "llama3"))
    parser.add_argument("--examples", action="store_true", help="print each run's full report")
    args = parser.parse_args()
    trl_templates = Path(trl.__file__).parent / "chat_templates"
    with tempfile.TemporaryDirectory() as tmp:
        vocab = {
            "qwen2": Path(args.qwen2),
            "llama3": Path(args.llama3),
            **{family: derived_tokenizer(Path(args.qwen2), family, Path(tmp)) for family in DERIVED_SPECIALS},
        }
        print(f"TRL {trl.__version__} templates from {trl_templates}\n")
        print(
            "| LF template | jinja (TRL) | vocabulary | dataset | samples | identical | differences by kind |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for lf_template, jinja, vocabulary, flags in CHECKS:
            datasets = [(name, args.lf_data) for name in LF_DATASETS]
            datasets += [(name, str(REPO / "tests" / "data")) for name in OWN_DATASETS]
            for dataset, dataset_dir in datasets:
                command = [
                    sys.executable,
                    "-m",
                    "fastsft",
                    "check-template",
                    "--dataset",
                    dataset,
                    "--dataset-dir",
                    dataset_dir,
                    "--tokenizer",
                    str(vocab[vocabulary]),
                    "--template",
                    lf_template,
                    "--chat-template",
                    str(trl_templates / f"{jinja}.jinja"),
                    "--examples",
                    "1",
                    *flags,
                ]
                result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
                if args.examples:
                    print(result.stdout + result.stderr, file=sys.stderr)
                print(f"| {lf_template} | {jinja} | {vocabulary} | {dataset} | {row(result)} |")
    return 0


def row(result: subprocess.CompletedProcess[str]) -> str:
    """samples | identical | kinds, from one run's output (or its one-line error)."""
    if result.returncode == 2:
        error = result.stderr.strip().splitlines()[-1].split("sample #", 1)[-1]
        return f"- | - | template error at sample #{error}"
    lines = result.stdout.splitlines()
    head = lines[0].rsplit(": ", 1)[1]  # "N samples, M identical, K differ"
    samples, identical = (int(part.split()[0]) for part in head.split(", ")[:2])
    kinds = [line.strip() for line in lines[1:] if re.fullmatch(r"  [a-z/ -]+: \d+", line)]
    return f"{samples} | {identical} | {'; '.join(kinds) or 'none'}"


if __name__ == "__main__":
    sys.exit(main())
