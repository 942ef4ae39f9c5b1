"""Generate the golden of LLaMA-Factory 0.9.5's output files into ``tests/goldens/train/lf_outputs.json``.

Run with the reference environment from the repository root::

    /work/venv-lf/bin/python scripts/make_lf_outputs_golden.py

and on the oldest transformers fastsft supports (``.ci/oldest.txt`` installed over the reference
venv; transformers 4.56 logs the loss rounded and evaluates at the last step only on ``eval_steps``)::

    pip install --no-deps --target /tmp/oldest -r .ci/oldest.txt
    PYTHONPATH=/tmp/oldest /work/venv-lf/bin/python scripts/make_lf_outputs_golden.py \
        --output tests/goldens/train_transformers4/lf_outputs.json

Each case runs ``llamafactory.train.tuner.run_exp(args=dict)`` in a fresh process (what
``llamafactory-cli train case.yaml`` runs on a machine without GPUs), one CPU thread, fixed seeds,
on the committed tiny base model of ``scripts/make_train_goldens.py``. The golden records what a
user's scripts read from the output folder: every ``trainer_log.jsonl`` line, ``all_results.json``,
``train_results.json``, ``eval_results.json``, ``trainer_state.json``'s ``num_input_tokens_seen``,
the output file names, and LLaMA-Factory's "No metric ... to plot." warnings.

The cases: ``logged`` trains 9 steps logging every 2 (the 9th step is never logged; its tokens
count all the same), evaluating every 4 steps and at the end; ``unlogged`` ends before the first
log. Both count tokens as ``include_num_input_tokens_seen: non_padding`` (what fastsft counts).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = REPO_ROOT / "tests" / "goldens" / "train" / "lf_outputs.json"
FORMAT_VERSION = 1
COMMON_ARGS: dict[str, Any] = {
    "model_name_or_path": "tests/goldens/train/tiny_base",
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "full",
    "dataset": "tiny_sharegpt",
    "dataset_dir": "examples/tiny/data",
    "template": "qwen",
    "cutoff_len": 128,
    "max_samples": 64,
    "packing": False,
    "overwrite_cache": True,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "learning_rate": 1.0e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 3,
    "seed": 42,
    "report_to": "none",
    "overwrite_output_dir": True,
    "plot_loss": True,
    "include_num_input_tokens_seen": "non_padding",
}
CASES: dict[str, dict[str, Any]] = {
    "logged": {
        "max_steps": 9,
        "logging_steps": 2,
        "val_size": 0.1,
        "do_eval": True,
        "eval_strategy": "steps",
        "eval_steps": 4,
        "per_device_eval_batch_size": 8,  # one batch: HF's per-batch mean is then the token-level loss fastsft reports
    },
    "unlogged": {"max_steps": 3, "logging_steps": 5},
}
RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json")


def run_worker(args_path: Path) -> None:
    """Child process: LLaMA-Factory's ``run_exp`` on one case."""
    import torch
    from llamafactory.train.tuner import run_exp

    torch.set_num_threads(1)
    run_exp(args=json.loads(args_path.read_text()))


def run_case(name: str, work_dir: Path) -> dict[str, Any]:
    case_args = {**COMMON_ARGS, **CASES[name]}
    output_dir = work_dir / "output"
    args_path = work_dir / "args.json"
    args_path.write_text(json.dumps({**case_args, "output_dir": str(output_dir)}))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONHASHSEED": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(work_dir / "datasets_cache"),
    }
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(args_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"case {name}: LLaMA-Factory failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    output = done.stdout + done.stderr
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {
        "yaml": {**case_args, "output_dir": "<tmp>/output"},
        "trainer_log": [
            json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()
        ],
        "results": {
            file: json.loads((output_dir / file).read_text())
            for file in RESULT_FILES
            if (output_dir / file).exists()
        },
        "num_input_tokens_seen": state["num_input_tokens_seen"],
        "output_files": sorted(
            path.name for path in output_dir.iterdir() if not path.name.startswith("checkpoint-")
        ),
        "plot_warnings": sorted(
            {line.split(">> ")[-1].strip() for line in output.splitlines() if "No metric" in line}
        ),
    }


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        run_worker(Path(sys.argv[2]))
        return
    output = Path(sys.argv[2]) if sys.argv[1:2] == ["--output"] else GOLDEN
    if Path.cwd().resolve() != REPO_ROOT:
        sys.exit(f"run from the repository root {REPO_ROOT}")
    import llamafactory
    import transformers

    golden: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "versions": {
            "llamafactory": llamafactory.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "cases": {},
    }
    for name in CASES:
        print(f"case {name} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"lf_outputs_{name}_") as work_dir:
            golden["cases"][name] = run_case(name, Path(work_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
