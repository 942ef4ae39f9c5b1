"""Generate LLaMA-Factory 0.9.5 golden outputs for the SFT data path into ``tests/goldens/``.

Run with the reference environment::

    /work/venv-lf/bin/python scripts/make_goldens.py [--qwen2 PATH] [--llama3 PATH] [--jobs N] [--only GLOB]

Every case runs LLaMA-Factory's own SFT data path exactly as ``llamafactory.train.sft.run_sft``
does before it loads a model: ``load_tokenizer(model_args)`` ->
``get_template_and_fix_tokenizer(tokenizer, data_args)`` -> ``get_dataset(..., stage="sft")``.
``get_train_args`` itself refuses to run outside ``torchrun``, so the argument dataclasses are
built directly and the two post-processing lines of ``get_train_args`` that touch data arguments
are replicated (``packing`` defaults to False for ``sft``; ``model_max_length = cutoff_len``).

Each case runs in its own forked process: LLaMA-Factory mutates the global template registry
(``tool_format``, ``default_system``, ``enable_thinking``), the tokenizer (new EOS / stop tokens)
and, for ``neat_packing``, monkeypatches ``datasets``; a fresh process per case keeps cases
independent. Every case also uses its own empty ``cache_dir`` and ``overwrite_cache=True``, so
nothing is served from a ``datasets`` cache.

``Llama3ToolUtils`` stamps ``datetime.now()`` into the tool prompt; the clock is frozen to
``FROZEN_TOOL_DATE`` and the date is stored in every golden so the test can freeze fastsft's clock.

Output: ``tests/goldens/<tokenizer>/<case>.json.gz`` (byte-reproducible gzip of one JSON object)
and ``tests/goldens/MANIFEST.json`` (versions, command, input and output sha256).
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import importlib.machinery
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import types
from contextlib import redirect_stdout
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET_DIR = "tests/data"  # relative to the repository root, as stored in the goldens
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens"
FIXTURE_TOKENIZER = REPO_ROOT / "examples" / "tiny" / "tokenizer"
DEFAULT_QWEN2 = REPO_ROOT.parent / "shared" / "tokenizers" / "qwen2"
DEFAULT_LLAMA3 = REPO_ROOT / ".cache" / "tokenizers" / "llama3"  # scripts/make_llama3_tokenizer.py
# Cases run on Meta's Llama 3 tokenizer: the templates written in its special tokens.
LLAMA3_CASE_PATTERNS = ("llama3__*", "mllama__*", "llava_next_llama3__plain")
FORMAT_VERSION = 1

FROZEN_TOOL_DATE = datetime(2024, 7, 26, 12, 0, 0)

TEMPLATES = ["qwen", "qwen3", "llama3", "llama2", "mistral", "chatml", "default", "empty"]
# Llama2Template._encode calls format_function without thought/tool-call words, so function calls
# that carry reasoning text (sharegpt_tools_cot) raise in LLaMA-Factory for these templates.
TEMPLATES_WITHOUT_FUNCTION_THOUGHTS = {"llama2", "mistral"}
ALL_DATASETS = [
    "sharegpt_chat",
    "sharegpt_tools",
    "sharegpt_tools_cot",
    "alpaca_mix",
    "openai_chat",
    "sharegpt_custom_tags",
]

# The case arguments, with LLaMA-Factory's DataArguments names and defaults.
DEFAULT_ARGS: dict[str, Any] = {
    "cutoff_len": 1024,
    "train_on_prompt": False,
    "mask_history": False,
    "packing": False,
    "neat_packing": False,
    "preprocessing_batch_size": 1000,
    "enable_thinking": True,
    "tool_format": None,
    "default_system": None,
}

OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "train_on_prompt": {"train_on_prompt": True},
    "mask_history": {"mask_history": True},
    "truncate_prompt": {"cutoff_len": 32},  # short responses: infer_seqlen cuts the prompt
    "truncate_response": {"cutoff_len": 128},  # short prompts, long responses: the response is cut
    "packing": {"cutoff_len": 256, "packing": True, "preprocessing_batch_size": 8},
    "neat_packing": {"cutoff_len": 256, "packing": True, "neat_packing": True, "preprocessing_batch_size": 8},
}

# Every other LLaMA-Factory template: fixture tokenizer only, a few cases each (see template_cases).
TEMPLATE_OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "mask_history": {"mask_history": True},
    "train_on_prompt": {"train_on_prompt": True},  # not for efficient_eos templates (LF refuses)
    "truncate": {"cutoff_len": 40},
}
REASONING_OPTIONS: dict[str, dict[str, Any]] = {
    "nothink": {"enable_thinking": False},
    "thinking_none": {"enable_thinking": None},
    "nothink_mask_history": {"enable_thinking": False, "mask_history": True},
    # mask_history drops history thoughts unless preserve_thinking (set only here: not a default key)
    "preserve_thinking_mask_history": {"preserve_thinking": True, "mask_history": True},
}
PACKED_TEMPLATES = {"chatglm3", "deepseek3", "gemma", "glm4", "gpt_oss", "llama4", "phi4", "qwen3_5", "yuan"}

EXTRA_CASES: dict[str, dict[str, Any]] = {
    "qwen3__nothink": {"template": "qwen3", "enable_thinking": False},
    "qwen3__nothink_mask_history": {"template": "qwen3", "enable_thinking": False, "mask_history": True},
    "qwen3__thinking_none": {"template": "qwen3", "enable_thinking": None},
    "qwen__tool_format_default": {"template": "qwen", "tool_format": "default"},
    "qwen__default_system": {
        "template": "qwen",
        "default_system": "You are a careful assistant. 请认真回答。",
    },
    # Native JSON tools/arguments: Arrow's JSON reader unifies struct fields across rows.
    "qwen__openai_native_json": {"template": "qwen", "dataset": "openai_native_json"},
}


# Mixing and validation splits (fixture tokenizer only): LLaMA-Factory merges the raw rows of the
# datasets, splits the merged rows (val_size, with training_args.seed), then tokenizes each split.
MIX_DATASETS = "sharegpt_chat,alpaca_mix,openai_chat"
SPLIT_CASES: dict[str, dict[str, Any]] = {
    "mix__interleave_under": {"mix_strategy": "interleave_under"},
    "mix__interleave_under_probs": {"mix_strategy": "interleave_under", "interleave_probs": "0.5,0.3,0.2", "seed": 7},
    "mix__interleave_over": {"dataset": "sharegpt_chat,openai_chat", "mix_strategy": "interleave_over"},
    "mix__interleave_over_probs": {"mix_strategy": "interleave_over", "interleave_probs": "0.2,0.5,0.3", "seed": 3},
    "mix__interleave_over_packing": {
        "mix_strategy": "interleave_over", "interleave_probs": "0.6,0.4", "dataset": "sharegpt_chat,alpaca_mix",
        "cutoff_len": 256, "packing": True, "preprocessing_batch_size": 8,
    },
    "mix__interleave_once": {"mix_strategy": "interleave_once"},  # LF 0.9.5 (datasets<=4.0.0) refuses it
    "split__val_size_fraction": {"val_size": 0.25},
    "split__val_size_count": {"val_size": 5, "seed": 1234},
    "split__val_size_packing": {"val_size": 0.3, "cutoff_len": 256, "packing": True, "preprocessing_batch_size": 8},
    "split__val_size_interleave": {"val_size": 0.2, "mix_strategy": "interleave_over", "interleave_probs": "0.3,0.3,0.4"},
    "split__eval_dataset": {"dataset": "sharegpt_chat", "eval_dataset": "alpaca_mix,openai_chat"},
    "split__eval_dataset_interleave": {
        "dataset": "sharegpt_chat,alpaca_mix", "eval_dataset": "openai_chat,sharegpt_tools",
        "mix_strategy": "interleave_under", "interleave_probs": "0.5,0.5", "seed": 11,
    },
    "split__eval_on_each_dataset": {
        "dataset": "sharegpt_chat", "eval_dataset": "alpaca_mix,openai_chat", "eval_on_each_dataset": True,
    },
}  # fmt: skip
SPLIT_DEFAULTS: dict[str, Any] = {
    "template": "qwen",
    "dataset": MIX_DATASETS,
    "mix_strategy": "concat",
    "interleave_probs": None,
    "val_size": 0.0,
    "eval_dataset": None,
    "eval_on_each_dataset": False,
    "seed": 42,  # training_args.seed in LLaMA-Factory
}


def datasets_for(template: str) -> str:
    """Comma-separated dataset list for a template (all sample formats, tools included)."""
    names = [
        name
        for name in ALL_DATASETS
        if not (name == "sharegpt_tools_cot" and template in TEMPLATES_WITHOUT_FUNCTION_THOUGHTS)
    ]
    return ",".join(names)


def template_cases() -> dict[str, dict[str, Any]]:
    """Cases for the LLaMA-Factory templates outside ``TEMPLATES`` (run on the fixture tokenizer)."""
    from llamafactory.data.template import TEMPLATES as LF_TEMPLATES
    from llamafactory.data.template import ReasoningTemplate

    cases: dict[str, dict[str, Any]] = {}
    for name in sorted(set(LF_TEMPLATES) - set(TEMPLATES)):
        template = LF_TEMPLATES[name]
        options = dict(TEMPLATE_OPTIONS)
        if template.efficient_eos:
            del options["train_on_prompt"]
        if isinstance(template, ReasoningTemplate):
            options.update(REASONING_OPTIONS)
        if name in PACKED_TEMPLATES:
            options["packing"] = OPTIONS["packing"]
            options["neat_packing"] = OPTIONS["neat_packing"]
        for option, overrides in options.items():
            cases[f"{name}__{option}"] = {"template": name, **overrides}
    return cases


def build_cases() -> dict[str, dict[str, Any]]:
    """All case names mapped to their full argument dicts (LLaMA-Factory key names)."""
    cases: dict[str, dict[str, Any]] = {}
    for template in TEMPLATES:
        for option, overrides in OPTIONS.items():
            cases[f"{template}__{option}"] = {"template": template, **overrides}
    cases.update(EXTRA_CASES)
    cases.update(template_cases())
    cases.update({name: {**SPLIT_DEFAULTS, **spec} for name, spec in SPLIT_CASES.items()})
    return {
        name: {
            "dataset": spec.get("dataset", datasets_for(spec["template"])),
            "dataset_dir": DATASET_DIR,
            **DEFAULT_ARGS,
            **spec,
        }
        for name, spec in cases.items()
    }


def hide_broken_media_wheels() -> None:
    """Keep LLaMA-Factory importable in the reference venv.

    Its torchvision/torchaudio wheels are CUDA builds that fail to load against the CPU torch.
    The text-only SFT path never uses them: torchvision is hidden (transformers then treats it as
    absent) and torchaudio, which ``mm_plugin`` imports unconditionally, is an empty stub.
    """
    sys.modules["torchvision"] = None  # type: ignore[assignment]
    torchaudio_stub = types.ModuleType("torchaudio")
    torchaudio_stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = torchaudio_stub


def freeze_tool_clock() -> None:
    """Make ``Llama3ToolUtils``' ``datetime.now()`` return ``FROZEN_TOOL_DATE``."""
    from llamafactory.data import tool_utils

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return FROZEN_TOOL_DATE

    tool_utils.datetime = FrozenDatetime


class Unset(str):
    """An empty, falsy setting that also passes as the number 0 (``merge_size ** 2``, ``n * size``)."""

    def __pow__(self, other: Any) -> int:
        return 0

    def __mul__(self, other: Any) -> Any:
        return 0 if isinstance(other, int) else type(other)()

    __rmul__ = __mul__


class TextOnlyPart:
    """A processor part for text-only data: each setting a plugin reads is ``Unset()``, and the read is logged.

    Plugins read settings such as ``merge_size`` or ``image_seq_length`` up front but only use them
    to expand media placeholders, which text-only samples do not have. The names read are stored
    in the golden (``processor_reads``) so a reviewer can see what the plugin looked at.
    """

    reads: ClassVar[set[str]] = set()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        TextOnlyPart.reads.add(name)
        return Unset()  # falsy, so flags such as image_do_pan_and_scan stay off


class TextOnlyProcessor(TextOnlyPart):
    """The processor LLaMA-Factory requires for a multimodal template, for samples without media.

    The fixture tokenizer comes with no processor, and LLaMA-Factory's plugins refuse to run
    without one (and its image/video/audio parts) even on text.
    """

    image_processor = TextOnlyPart()
    video_processor = TextOnlyPart()
    feature_extractor = TextOnlyPart()


def to_jsonable(value: Any) -> Any:
    """Arrow/py values to JSON-compatible values (tuples become lists)."""
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    return value


def run_case(
    case_name: str, tokenizer_name: str, tokenizer_path: str, args: dict[str, Any]
) -> dict[str, Any]:
    """Run LLaMA-Factory's SFT data path for one case and return the golden record."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.hparams.training_args import TrainingArguments
    from llamafactory.model import load_tokenizer

    freeze_tool_clock()
    with tempfile.TemporaryDirectory(prefix="fastsft-golden-") as tmp:
        model_args = ModelArguments(model_name_or_path=tokenizer_path, cache_dir=tmp)
        data_keys = {key: value for key, value in args.items() if key != "seed"}
        data_args = DataArguments(
            **{**data_keys, "dataset_dir": str(REPO_ROOT / args["dataset_dir"])},
            overwrite_cache=True,
        )
        training_args = TrainingArguments(
            output_dir=os.path.join(tmp, "output"), report_to="none", seed=args.get("seed", 42)
        )
        # The data-related post-processing of llamafactory.hparams.parser.get_train_args (stage "sft").
        model_args.model_max_length = data_args.cutoff_len
        model_args.block_diag_attn = data_args.neat_packing
        data_args.packing = data_args.packing if data_args.packing is not None else False

        tokenizer_module = load_tokenizer(model_args)
        tokenizer = tokenizer_module["tokenizer"]
        template = get_template_and_fix_tokenizer(tokenizer, data_args)
        if tokenizer_module["processor"] is None and type(template.mm_plugin).__name__ != "BasePlugin":
            tokenizer_module["processor"] = TextOnlyProcessor()
        with redirect_stdout(open(os.devnull, "w")):  # get_dataset prints a decoded example
            dataset_module = get_dataset(
                template, model_args, data_args, training_args, stage="sft", **tokenizer_module
            )
        dataset = dataset_module["train_dataset"]
        rows = to_jsonable(dataset.to_dict())
        eval_dataset = dataset_module.get("eval_dataset")
        if isinstance(eval_dataset, dict):
            eval_splits = {f"validation_{name}": split for name, split in eval_dataset.items()}
        else:
            eval_splits = {"validation": eval_dataset} if eval_dataset is not None else {}
        evals = {
            name: {"num_rows": split.num_rows, "rows": to_jsonable(split.to_dict())}
            for name, split in eval_splits.items()
        }

    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer_name,
        "case": case_name,
        "args": args,
        "llama3_tool_date": FROZEN_TOOL_DATE.strftime("%d %b %Y"),
        "tokenizer_after_fix": {
            "bos_token": tokenizer.bos_token,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token": tokenizer.eos_token,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token": tokenizer.pad_token,
            "pad_token_id": tokenizer.pad_token_id,
            "num_tokens": len(tokenizer),
        },
        "processor_reads": sorted(TextOnlyPart.reads),
        "num_rows": dataset.num_rows,
        "columns": list(dataset.column_names),
        "features": dataset.features.to_dict(),
        "rows": rows,
        **({"eval": evals} if evals else {}),
    }


def write_golden(path: Path, record: dict[str, Any]) -> None:
    """Write a byte-reproducible gzip (no name, mtime 0) of the record as compact JSON."""
    payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(payload)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_hashes(tokenizer_paths: dict[str, Path]) -> dict[str, str]:
    """sha256 of every input: dataset_info.json, the files it names, and each tokenizer's files.

    Keys are repo-relative for repo files and ``<tokenizer>/<file>`` for tokenizers outside it.
    """
    data_dir = REPO_ROOT / DATASET_DIR
    dataset_info = json.loads((data_dir / "dataset_info.json").read_text(encoding="utf-8"))
    files = {f"{DATASET_DIR}/dataset_info.json": data_dir / "dataset_info.json"}
    for entry in dataset_info.values():
        files[f"{DATASET_DIR}/{entry['file_name']}"] = data_dir / entry["file_name"]
    for name, path in tokenizer_paths.items():
        for file in sorted(p for p in path.iterdir() if p.is_file() and p.name != "LICENSE"):
            key = file.relative_to(REPO_ROOT).as_posix() if name == "fixture" else f"{name}/{file.name}"
            files[key] = file
    return {key: sha256_of(file) for key, file in sorted(files.items())}


def package_versions() -> dict[str, str]:
    import datasets
    import llamafactory
    import tokenizers
    import transformers

    return {
        "llamafactory": llamafactory.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def run_case_or_refusals(
    case_name: str, tokenizer_name: str, tokenizer_path: str, args: dict[str, Any]
) -> dict[str, Any]:
    """``run_case``; where LLaMA-Factory raises, the case without the datasets it raises on.

    The refused datasets and LLaMA-Factory's error for each are stored under ``lf_refuses``, so
    the tests can check that fastsft refuses them too (with a located error, not a traceback).
    """
    try:
        return {**run_case(case_name, tokenizer_name, tokenizer_path, args), "lf_refuses": {}}
    except Exception as err:  # LLaMA-Factory's own exception types vary: find the datasets that raise
        whole_case_error = f"{type(err).__name__}: {err}".splitlines()[0][:300]

    refuses: dict[str, str] = {}
    for dataset in args["dataset"].split(","):
        try:
            run_case(case_name, tokenizer_name, tokenizer_path, {**args, "dataset": dataset})
        except Exception as err:
            refuses[dataset] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    kept = [dataset for dataset in args["dataset"].split(",") if dataset not in refuses]
    if not refuses:  # no single dataset fails: the combination does (mix_strategy: interleave_once)
        return {"failed": True, "lf_refuses": {args["dataset"]: whole_case_error}}
    if not kept:
        return {"failed": True, "lf_refuses": refuses}  # listed in the manifest under lf_fails
    record = run_case(case_name, tokenizer_name, tokenizer_path, {**args, "dataset": ",".join(kept)})
    return {**record, "lf_refuses": refuses}


def _run_case_job(job: tuple[str, str, str, dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    case_name, tokenizer_name, tokenizer_path, args = job
    return tokenizer_name, case_name, run_case_or_refusals(case_name, tokenizer_name, tokenizer_path, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qwen2", type=Path, default=DEFAULT_QWEN2, help="Qwen2 tokenizer directory")
    parser.add_argument(
        "--llama3",
        type=Path,
        default=DEFAULT_LLAMA3,
        help="Llama 3 tokenizer directory (make_llama3_tokenizer.py)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cases run in parallel")
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR, help="golden directory")
    parser.add_argument(
        "--only", help="glob over <tokenizer>/<case>: regenerate only these (the manifest is updated)"
    )
    options = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "ERROR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hide_broken_media_wheels()
    import llamafactory.data  # noqa: F401  -- imported once here so forked workers start warm

    tokenizer_paths = {"fixture": FIXTURE_TOKENIZER}
    if options.qwen2.is_dir():
        tokenizer_paths["qwen2"] = options.qwen2.resolve()
    else:
        print(f"Qwen2 tokenizer not found at {options.qwen2}; keeping any existing qwen2 goldens.")
    if options.llama3.is_dir():
        tokenizer_paths["llama3"] = options.llama3.resolve()
    else:
        print(f"Llama 3 tokenizer not found at {options.llama3}; keeping any existing llama3 goldens.")

    cases = build_cases()
    jobs = [
        (case, tok, str(path), args)
        for tok, path in tokenizer_paths.items()
        for case, args in cases.items()
        if tok == "fixture"
        or (tok == "llama3" and any(fnmatch.fnmatch(case, pattern) for pattern in LLAMA3_CASE_PATTERNS))
        or (
            tok == "qwen2"
            and ((args["template"] in TEMPLATES and case not in SPLIT_CASES) or case in EXTRA_CASES)
        )
    ]
    if options.only:
        jobs = [job for job in jobs if fnmatch.fnmatch(f"{job[1]}/{job[0]}", options.only)]
    out_dir: Path = options.out
    for tokenizer_name in tokenizer_paths if not options.only else ():
        shutil.rmtree(out_dir / tokenizer_name, ignore_errors=True)

    failed: dict[str, dict[str, str]] = {}
    # maxtasksperchild=1: one fresh fork of the pristine parent per case.
    with multiprocessing.get_context("fork").Pool(options.jobs, maxtasksperchild=1) as pool:
        for tokenizer_name, case_name, record in pool.imap_unordered(_run_case_job, jobs):
            if record.get("failed"):
                failed[f"{tokenizer_name}/{case_name}"] = record["lf_refuses"]
                print(f"{tokenizer_name}/{case_name}: LLaMA-Factory fails on every dataset", flush=True)
                continue
            write_golden(out_dir / tokenizer_name / f"{case_name}.json.gz", record)
            refuses = f", LLaMA-Factory refuses {record['lf_refuses']}" if record["lf_refuses"] else ""
            print(f"{tokenizer_name}/{case_name}: {record['num_rows']} rows{refuses}", flush=True)

    manifest_path = out_dir / "MANIFEST.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if options.only:  # a partial run: the other cases' files and failures stay as recorded
        rerun = {f"{job[1]}/{job[0]}" for job in jobs}
        failed = {**{k: v for k, v in previous.get("lf_fails", {}).items() if k not in rerun}, **failed}
    # Inputs of tokenizers not regenerated this run (their goldens were kept) stay recorded.
    kept_inputs = {
        key: value
        for key, value in previous.get("inputs", {}).items()
        if key.split("/")[0] in set(previous.get("tokenizers", [])) - set(tokenizer_paths)
    }
    files = {str(path.relative_to(out_dir)): sha256_of(path) for path in sorted(out_dir.glob("*/*.json.gz"))}
    command = " ".join([Path(sys.executable).as_posix(), "scripts/make_goldens.py", *sys.argv[1:]])
    partial_runs = [*previous.get("partial_runs", []), command] if options.only else []
    manifest = {
        "format_version": FORMAT_VERSION,
        "command": previous.get("command", command) if options.only else command,
        **({"partial_runs": partial_runs} if partial_runs else {}),
        "versions": package_versions(),
        "llama3_tool_date": FROZEN_TOOL_DATE.strftime("%d %b %Y"),
        "tokenizers": sorted({path.split("/")[0] for path in files}),
        "cases": sorted(cases),
        "lf_fails": failed,
        "inputs": {**kept_inputs, **input_hashes(tokenizer_paths)},
        "files": files,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    total = sum(path.stat().st_size for path in out_dir.glob("*/*.json.gz"))
    print(f"{len(files)} golden files, {total / 1e6:.2f} MB, manifest at {manifest_path}")


if __name__ == "__main__":
    main()
