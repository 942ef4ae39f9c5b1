"""``fastsft`` command line: ``preprocess``, ``inspect``, ``check-template``, ``train`` and ``export``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from fastsft import __version__
from fastsft.data.data_args import DATA_KEYS, DataArgs, data_args_from_mapping
from fastsft.errors import ConfigError, FastSFTError, Terminated
from fastsft.fields import add_flags, read_yaml
from fastsft.safe_output import clear_outcomes, interrupted_outcome
from fastsft.tokenizer.loader import load_tokenizer

__all__ = [
    "main",
]

# Data options each command takes as flags (all of them come from fastsft.data.data_args.DataArgs).
PREPROCESS_KEYS = DATA_KEYS
INSPECT_KEYS = tuple(k for k in DATA_KEYS if k not in ("tokenized_path", "preprocessing_num_workers"))


def _add_data_arguments(parser: argparse.ArgumentParser, keys: tuple[str, ...]) -> None:
    parser.add_argument(
        "--config",
        help="YAML file with LLaMA-Factory key names (flags override it; training keys are checked, unused)",
    )
    parser.add_argument("--tokenizer", help="tokenizer folder (default: model_name_or_path from --config)")
    add_flags(parser, DataArgs, keys)


def _data_options(args: argparse.Namespace, keys: tuple[str, ...]) -> tuple[DataArgs, str]:
    """``--config`` merged with the flags (flags win): the data options and the tokenizer path.

    The YAML is read exactly as ``fastsft train`` reads it: every key is typed, an unknown or
    misspelt one fails with the closest valid names, and training keys are accepted but unused.
    """
    from fastsft.train.config import classify_keys

    data: dict[str, Any] = {}
    train: dict[str, Any] = {}
    if args.config:
        data, train, _, _ = classify_keys(read_yaml(args.config))
        data = {key: value for key, value in data.items() if key in keys}  # e.g. inspect writes nothing
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = ",".join(value) if isinstance(value, list) else value  # repeated flags
    options = data_args_from_mapping(data)
    options.require_dataset()
    tokenizer = args.tokenizer or train.get("tokenizer_name_or_path") or train.get("model_name_or_path")
    if not tokenizer:
        raise ConfigError("no tokenizer given (use --tokenizer PATH or `model_name_or_path:` in --config)")
    return options, tokenizer


def cmd_preprocess(args: argparse.Namespace) -> int:
    from fastsft.data.sources.splitting import check_output, resolve_run_datasets

    data_args, tokenizer_path = _data_options(args, PREPROCESS_KEYS)
    if not data_args.tokenized_path:
        raise ConfigError("no output folder given (use --output DIR or `tokenized_path:` in --config)")
    output = Path(data_args.tokenized_path)
    datasets = resolve_run_datasets(data_args)  # once: build_to_disk reuses them
    # Before the tokenizer loads; build_to_disk checks again, and again under the output's lock.
    check_output(data_args, output, overwrite=args.overwrite, tokenizer_dir=tokenizer_path, datasets=datasets)
    from fastsft.data.pipeline import build_to_disk

    # The tokenizer's folder: its spec comes from fastsft's cache once seen (no transformers import).
    summaries = build_to_disk(
        data_args,
        tokenizer_path,
        output,
        overwrite=args.overwrite,
        progress=not args.quiet,
        datasets=datasets,
    )
    for name, summary in summaries.items():
        for line in summary.lines():
            print(line if len(summaries) == 1 else f"{name}: {line}")
    rows = ", ".join(f"'{name}': {summary.rows_out} rows" for name, summary in summaries.items())
    print(f"saved DatasetDict({{{rows}}}) to {output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from fastsft.inspection import inspect_dataset, inspect_saved

    color = sys.stdout.isatty() and not args.no_color
    if args.data:
        if not args.tokenizer:
            raise ConfigError("--tokenizer is needed to decode a saved dataset")
        if not Path(args.data).is_dir():
            raise ConfigError(
                f"--data {args.data}: no such folder (give a folder written by fastsft preprocess)"
            )
        text = inspect_saved(
            args.data, load_tokenizer(args.tokenizer), count=args.num, start=args.index, color=color
        )
    else:
        options, tokenizer_path = _data_options(args, INSPECT_KEYS)
        text = inspect_dataset(
            options, load_tokenizer(tokenizer_path), count=args.num, start=args.index, color=color
        )
    print(text)
    return 0


def cmd_check_template(args: argparse.Namespace) -> int:
    from fastsft.template_check import check_template, read_chat_template

    options, tokenizer_path = _data_options(args, INSPECT_KEYS)
    source = read_chat_template(args.chat_template) if args.chat_template else None
    report = check_template(
        options,
        load_tokenizer(tokenizer_path),
        chat_template=source,
        chat_template_name=args.chat_template,
        examples=args.examples,
        timeout=args.timeout,
        arguments_as_json=args.tool_arguments == "json",
    )
    print("\n".join(report.lines()))
    return 1 if report.differing else 0


def cmd_templates(args: argparse.Namespace) -> int:
    from fastsft.data.chat.registry import CHAT_TEMPLATE_MODE, list_templates

    for kind, names in list_templates().items():
        print(f"{kind.replace('_', ' ')} ({len(names)}): {', '.join(names)}")
    print(
        f"{CHAT_TEMPLATE_MODE}: the tokenizer's own jinja chat template, TRL-exact (docs/chat_templates.md)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fastsft.train.command import run_train

    return run_train(args)


def cmd_export(args: argparse.Namespace) -> int:
    from fastsft.train.export import run_export

    return run_export(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsft",
        description="SFT data pipeline identical to LLaMA-Factory 0.9.5, compiled; and a trainer.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what fastsft decides (backends, ...)"
    )
    parser.add_argument("--version", action="version", version=f"fastsft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser(
        "preprocess",
        help="tokenize datasets into a DatasetDict LLaMA-Factory loads via tokenized_path",
        description="Encode datasets exactly as LLaMA-Factory 0.9.5 and save_to_disk a DatasetDict({'train': ...}).",
    )
    _add_data_arguments(pre, PREPROCESS_KEYS)
    pre.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=cmd_preprocess)

    ins = sub.add_parser(
        "inspect",
        help="show encoded samples with trained spans highlighted",
        description="Show a few encoded samples: decoded text with the labelled spans highlighted, tokens per "
        "turn, where truncation cut, and packed-row sequence boundaries.",
    )
    _add_data_arguments(ins, INSPECT_KEYS)
    ins.add_argument("--data", help="a folder written by `fastsft preprocess` (instead of --dataset)")
    ins.add_argument("-n", "--num", type=int, default=3, help="how many samples or rows (default 3)")
    ins.add_argument("--index", type=int, default=0, help="first sample or row to show")
    ins.add_argument("--no-color", dest="no_color", action="store_true")
    ins.set_defaults(func=cmd_inspect)

    check = sub.add_parser(
        "check-template",
        help="compare each sample's LLaMA-Factory rendering with the model's jinja chat template",
        description="Render every sample with the LLaMA-Factory template and with a jinja chat template "
        "(sandboxed), compare the token ids, count the differences by kind and show the first of each. "
        "Exit status 0: all identical; 1: some differ; 2: an error.",
    )
    _add_data_arguments(check, INSPECT_KEYS)
    check.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a .jinja file (or JSON with chat_template) to compare against (default: the tokenizer's own)",
    )
    check.add_argument("--examples", type=int, default=2, help="samples shown for each kind of difference")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds one jinja render may take")
    check.add_argument(
        "--tool-arguments",
        choices=("dict", "json"),
        default="dict",
        help="a tool call's arguments as a dict (transformers' form) or JSON text (e.g. DeepSeek-V3's template)",
    )
    check.set_defaults(func=cmd_check_template)

    tpl = sub.add_parser("templates", help="list the chat templates and tool formats")
    tpl.set_defaults(func=cmd_templates)

    from fastsft.train.config import add_train_arguments

    train = sub.add_parser(
        "train",
        help="SFT (full, LoRA or freeze) from a YAML config (HF Trainer, DeepSpeed ZeRO-3)",
        description="Train from CONFIG.yaml with optional key=value overrides, e.g. "
        "`fastsft train examples/tiny_sft.yaml max_steps=20`.",
    )
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    from fastsft.train.export import add_export_arguments

    export = sub.add_parser(
        "export",
        help="merge LoRA adapters into the base model and save it (LLaMA-Factory's export YAML)",
        description="Merge adapter_name_or_path into model_name_or_path and save the full model to export_dir.",
    )
    add_export_arguments(export)
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    signal.signal(signal.SIGTERM, _raise_terminated)  # so cleanup runs, as for Ctrl-C
    clear_outcomes()
    try:
        return args.func(args)
    except FastSFTError as err:
        print(f"fastsft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment (permissions, space, a vanished file), not a bug
        where = f" {err.filename}:" if err.filename else ""
        print(f"fastsft {args.command}: error:{where} {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        signal_name = "SIGTERM" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"\nfastsft {args.command}: {signal_name}; {interrupted_outcome()}", file=sys.stderr)
        return Terminated.exit_code if isinstance(interrupt, Terminated) else 130


def _raise_terminated(signum: int, frame: Any) -> None:
    """SIGTERM raises ``Terminated``; child processes (DataLoader workers) ending with us are then
    expected, so torch's SIGCHLD check, which would raise over the clean message, is set aside."""
    if hasattr(signal, "SIGCHLD"):  # a no-op handler: SIG_DFL would make a SIGCHLD already pending raise
        signal.signal(signal.SIGCHLD, _ignore_signal)
    raise Terminated()


def _ignore_signal(signum: int, frame: Any) -> None:
    """A handler doing nothing (unlike ``SIG_IGN`` / ``SIG_DFL``, safe for a signal already pending)."""
