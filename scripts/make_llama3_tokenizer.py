"""Build Meta's Llama 3 tokenizer as an HF tokenizer folder in ``.cache/tokenizers/llama3/`` (git-ignored).

Meta's ``tokenizer.model`` (tiktoken format, 128,000 BPE tokens) ships in the ``llama-models`` wheel
on PyPI. The wheel is fetched with ``pip download --no-deps`` into a temporary folder (never
installed), the file is read out of it and converted with transformers' ``TikTokenConverter``, with
the split pattern and the 256 special tokens exactly as Meta's ``llama_models/llama3/tokenizer.py``
defines them (both checked against that file): ``<|begin_of_text|>`` is BOS and ``<|eot_id|>`` EOS.
The folder is written next to the target and renamed into place, so a half-built folder never
exists; when a valid one is already there nothing is done.

Usage: ``python scripts/make_llama3_tokenizer.py [--out DIR]``; exits 1 with one line when the wheel
cannot be downloaded (tests that need the tokenizer then skip).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / ".cache" / "tokenizers" / "llama3"

WHEEL = "llama-models==0.3.0"
MODEL_IN_WHEEL = "llama_models/llama3/tokenizer.model"
SOURCE_IN_WHEEL = "llama_models/llama3/tokenizer.py"

NUM_BASE_TOKENS = 128_000
NUM_SPECIAL_TOKENS = 256
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NAMED_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
# Meta numbers the rest from 2 on, after the named ones: ids 128012-128255.
SPECIAL_TOKENS = NAMED_SPECIAL_TOKENS + [
    f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(NAMED_SPECIAL_TOKENS))
]
BOS, EOS = "<|begin_of_text|>", "<|eot_id|>"
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def is_built(folder: Path) -> bool:
    """Whether ``folder`` holds a Llama 3 tokenizer that transformers 4.x and 5 load, with all 128,256
    tokens and the right BOS/EOS."""
    if not (folder / "tokenizer.json").is_file():
        return False
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if config.get("tokenizer_class") != TOKENIZER_CLASS:  # a folder only transformers 5 loads
        return False
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError):
        return False
    return (
        len(tokenizer) == NUM_BASE_TOKENS + NUM_SPECIAL_TOKENS
        and tokenizer.bos_token == BOS
        and tokenizer.eos_token == EOS
        and tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[-1]) == NUM_BASE_TOKENS + NUM_SPECIAL_TOKENS - 1
    )


def download_wheel(folder: Path) -> Path:
    """The ``llama-models`` wheel, downloaded (not installed) into ``folder``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    result = subprocess.run([*command, "-d", str(folder), WHEEL], capture_output=True, text=True)
    wheels = sorted(folder.glob("llama_models-*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise RuntimeError(f"cannot download {WHEEL}: {reason}")
    return wheels[0]


def read_ranks(model_bytes: bytes) -> dict[bytes, int]:
    """tiktoken's ``load_tiktoken_bpe`` without tiktoken: one ``base64-token rank`` per line."""
    ranks = {}
    for line in model_bytes.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def check_against_meta(source: str, ranks: dict[bytes, int]) -> None:
    """The pattern and special tokens used here are the ones in Meta's tokenizer.py; the vocab has its size."""
    if PATTERN not in source:
        raise RuntimeError(f"the split pattern is not the one in {SOURCE_IN_WHEEL}")
    missing = [token for token in NAMED_SPECIAL_TOKENS if f'"{token}"' not in source]
    if missing or "num_reserved_special_tokens = 256" not in source:
        raise RuntimeError(f"special tokens differ from {SOURCE_IN_WHEEL}: {missing or 'count'}")
    if sorted(ranks.values()) != list(range(NUM_BASE_TOKENS)):
        raise RuntimeError(f"{MODEL_IN_WHEEL} does not hold ranks 0..{NUM_BASE_TOKENS - 1}")


def convert(ranks: dict[bytes, int], out: Path) -> None:
    """Write the HF tokenizer folder for ``ranks`` into ``out``."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return ranks

    rust = Converter(vocab_file="", pattern=PATTERN, extra_special_tokens=SPECIAL_TOKENS).converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=rust, bos_token=BOS, eos_token=EOS, clean_up_tokenization_spaces=False
    )
    tokenizer.model_max_length = 131_072
    tokenizer.save_pretrained(str(out))
    # transformers 5 names its own class (TokenizersBackend), which transformers 4.x cannot load; Meta's
    # folder on the Hub names PreTrainedTokenizerFast, which both load.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = TOKENIZER_CLASS
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build(out: Path) -> str:
    """Build the tokenizer into ``out`` unless it is already there; says what was done."""
    if is_built(out):
        return f"Llama 3 tokenizer already built at {out}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        scratch_dir = Path(scratch)
        with zipfile.ZipFile(download_wheel(scratch_dir)) as wheel:
            model_bytes = wheel.read(MODEL_IN_WHEEL)
            source = wheel.read(SOURCE_IN_WHEEL).decode()
        ranks = read_ranks(model_bytes)
        check_against_meta(source, ranks)
        staged = scratch_dir / "tokenizer"
        convert(ranks, staged)
        if not is_built(staged):
            raise RuntimeError("the converted tokenizer does not load back as expected")
        if out.exists():  # an invalid leftover
            shutil.rmtree(out)
        staged.rename(out)
    return f"Llama 3 tokenizer built at {out}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"target folder (default {DEFAULT_OUT})"
    )
    args = parser.parse_args()
    try:
        print(build(args.out))
    except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as error:
        print(f"make_llama3_tokenizer: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
