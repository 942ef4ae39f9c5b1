"""``fastsft`` command line: ``preprocess``, ``inspect`` and ``train``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from fastsft.errors import ConfigError, FastSFTError

# Command-line flag → LLaMA-Factory key, for options shared by preprocess and inspect.
DATA_FLAGS = {
    "dataset": "dataset",
    "dataset_dir": "dataset_dir",
    "template": "template",
    "cutoff_len": "cutoff_len",
    "train_on_prompt": "train_on_prompt",
    "mask_history": "mask_history",
    "packing": "packing",
    "neat_packing": "neat_packing",
    "tool_format": "tool_format",
    "default_system": "default_system",
    "max_samples": "max_samples",
    "preprocessing_batch_size": "preprocessing_batch_size",
    "packing_strategy": "packing_strategy",
    "backend": "backend",
    "tokenizer_backend": "tokenizer_backend",
    "strict": "strict",
    "skip_malformed": "skip_malformed",
}


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", help="YAML file with LLaMA-Factory key names (dataset, template, cutoff_len, ...)")
    add("--dataset", action="append", help="dataset name in dataset_info.json, or a file/folder; repeatable")
    add("--dataset-dir", dest="dataset_dir", help="folder holding dataset_info.json (default: data)")
    add("--tokenizer", help="tokenizer folder (default: model_name_or_path from --config)")
    add("--template", help="chat template, e.g. qwen")
    add("--cutoff-len", dest="cutoff_len", type=int, help="maximum tokens per sample (default 2048)")
    add("--train-on-prompt", dest="train_on_prompt", action="store_true", default=None)
    add("--mask-history", dest="mask_history", action="store_true", default=None)
    add("--packing", action="store_true", default=None, help="pack samples into rows of cutoff_len")
    add("--neat-packing", dest="neat_packing", action="store_true", default=None)
    add("--packing-strategy", dest="packing_strategy", choices=["llamafactory", "bfd"])
    add("--tool-format", dest="tool_format")
    add("--default-system", dest="default_system")
    add("--max-samples", dest="max_samples", type=int)
    add("--preprocessing-batch-size", dest="preprocessing_batch_size", type=int)
    add("--backend", choices=["compiled", "python"], help="encoding path (default: compiled)")
    add("--tokenizer-backend", dest="tokenizer_backend", choices=["auto", "hf", "fast"])
    add(
        "--strict",
        action="store_true",
        default=None,
        help="fail on the first sample LLaMA-Factory would drop",
    )
    add(
        "--skip-malformed",
        dest="skip_malformed",
        action="store_true",
        default=None,
        help="count and skip malformed samples instead of failing",
    )


def _data_options(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Merge --config with flags (flags win); returns (DataArgs kwargs, tokenizer path)."""
    config: dict[str, Any] = {}
    if args.config:
        import yaml

        try:
            with open(args.config, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
        except OSError as err:
            raise ConfigError(f"cannot read config {args.config}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config {args.config} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"config {args.config} must be a mapping of keys to values")
    options = {key: config[key] for key in DATA_FLAGS.values() if key in config}
    for flag, key in DATA_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            options[key] = ",".join(value) if flag == "dataset" else value
    if "dataset" not in options:
        raise ConfigError("no dataset given (use --dataset NAME_OR_FILE or `dataset:` in --config)")
    tokenizer = args.tokenizer or config.get("tokenizer_name_or_path") or config.get("model_name_or_path")
    if not tokenizer:
        raise ConfigError("no tokenizer given (use --tokenizer PATH or `model_name_or_path:` in --config)")
    if getattr(args, "output", None) is None and config.get("tokenized_path"):
        args.output = config["tokenized_path"]
    return options, tokenizer


def load_tokenizer(path: str) -> Any:
    """A HF tokenizer from a local folder; never downloads."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise ConfigError(f"tokenizer folder not found: {path}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from fastsft.data.pipeline import DataArgs, build_to_disk

    options, tokenizer_path = _data_options(args)
    if not args.output:
        raise ConfigError("no output folder given (use --output DIR or `tokenized_path:` in --config)")
    data_args = DataArgs(**options)
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise ConfigError(f"output {output} already exists (pass --overwrite to replace it)")
    tokenizer = load_tokenizer(tokenizer_path)
    summary = build_to_disk(data_args, tokenizer, output, progress=not args.quiet, workers=args.workers)
    for line in summary.lines():
        print(line)
    print(f"saved DatasetDict({{'train': {summary.rows_out} rows}}) to {output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from fastsft.inspection import inspect_dataset, inspect_saved

    color = sys.stdout.isatty() and not args.no_color
    if args.data:
        if not args.tokenizer:
            raise ConfigError("--tokenizer is needed to decode a saved dataset")
        text = inspect_saved(
            args.data, load_tokenizer(args.tokenizer), count=args.num, start=args.index, color=color
        )
    else:
        options, tokenizer_path = _data_options(args)
        options["backend"] = "python"
        text = inspect_dataset(
            options, load_tokenizer(tokenizer_path), count=args.num, start=args.index, color=color
        )
    print(text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fastsft.train.trainer import run_train

    return run_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsft",
        description="SFT data pipeline identical to LLaMA-Factory 0.9.5, compiled; and a trainer.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what fastsft decides (backends, ...)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser(
        "preprocess",
        help="tokenize datasets into a DatasetDict LLaMA-Factory loads via tokenized_path",
        description="Encode datasets exactly as LLaMA-Factory 0.9.5 and save_to_disk a DatasetDict({'train': ...}).",
    )
    _add_data_arguments(pre)
    pre.add_argument("--output", help="output folder (written atomically)")
    pre.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    pre.set_defaults(func=cmd_preprocess)

    ins = sub.add_parser(
        "inspect",
        help="show encoded samples with trained spans highlighted",
        description="Show a few encoded samples: decoded text with the labelled spans highlighted, tokens per "
        "turn, where truncation cut, and packed-row sequence boundaries.",
    )
    _add_data_arguments(ins)
    ins.add_argument("--data", help="a folder written by `fastsft preprocess` (instead of --dataset)")
    ins.add_argument("-n", "--num", type=int, default=3, help="how many samples or rows (default 3)")
    ins.add_argument("--index", type=int, default=0, help="first sample or row to show")
    ins.add_argument("--no-color", dest="no_color", action="store_true")
    ins.set_defaults(func=cmd_inspect)

    from fastsft.train.config import add_train_arguments

    train = sub.add_parser(
        "train",
        help="full-parameter SFT from a YAML config (HF Trainer, DeepSpeed ZeRO-3)",
        description="Train from CONFIG.yaml with optional key=value overrides, e.g. "
        "`fastsft train examples/tiny_sft.yaml max_steps=20`.",
    )
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except FastSFTError as err:
        print(f"fastsft {args.command}: error: {err}", file=sys.stderr)
        return 2
