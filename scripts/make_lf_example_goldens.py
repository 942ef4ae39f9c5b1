"""Train LLaMA-Factory 0.9.5 on its own example YAMLs (the CPU copies in ``tests/data/lf_examples/``)
and record every step's loss into ``tests/goldens/lf_examples/<name>.json``.

Run with the reference environment from the repository root::

    /work/venv-lf/bin/python scripts/make_lf_example_goldens.py [--only GLOB]

Each YAML runs in a fresh process through ``llamafactory.train.tuner.run_exp(args=dict)``, what
``llamafactory-cli train NAME.yaml`` runs on a machine without GPUs, with the determinism of
``scripts/make_train_goldens.py`` (one CPU thread, ``PYTHONHASHSEED=0``, no GPU, an empty
``datasets`` cache). ``output_dir`` and ``tokenized_path`` go to a temporary folder; every other key
is the committed file's. ``tests/test_lf_examples.py`` trains ``fastsft`` on the same files.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_train_goldens import REPO_ROOT, _deterministic_env

EXAMPLE_DIR = REPO_ROOT / "tests" / "data" / "lf_examples"
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens" / "lf_examples"
STEP_KEYS = ("loss", "grad_norm", "learning_rate")


def run_worker(args_path: Path) -> None:
    """Child process: LLaMA-Factory's ``run_exp`` on one example's keys."""
    import torch
    from llamafactory.train.tuner import run_exp

    torch.set_num_threads(1)
    run_exp(args=json.loads(args_path.read_text()))


def lf_args(example: Path, work_dir: Path) -> dict[str, Any]:
    """The example's keys with its outputs in ``work_dir``."""
    import yaml

    values = yaml.safe_load(example.read_text(encoding="utf-8"))
    values["output_dir"] = str(work_dir / "output")
    if "tokenized_path" in values:
        values["tokenized_path"] = str(work_dir / "tokenized")
    return values


def tokenized_digest(path: Path) -> dict[str, str]:
    """sha256 of each split's rows (every column, as JSON lines) of a saved ``tokenized_path``."""
    import hashlib

    from datasets import load_from_disk

    digests = {}
    for name, split in load_from_disk(str(path)).items():
        digest = hashlib.sha256()
        for row in split:
            digest.update((json.dumps(row, sort_keys=True) + "\n").encode())
        digests[name] = digest.hexdigest()
    return digests


def run_example(example: Path, work_dir: Path) -> dict[str, Any]:
    """Train LLaMA-Factory on one example in a fresh process; its golden."""
    import llamafactory
    import transformers

    args_path = work_dir / "args.json"
    args_path.write_text(json.dumps(lf_args(example, work_dir)))
    env = {**_deterministic_env(), "HF_DATASETS_CACHE": str(work_dir / "datasets_cache")}
    log_path = work_dir / "train.log"
    with log_path.open("w") as log:
        status = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(args_path)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ).returncode
    if status != 0:
        sys.exit(
            f"{example.name}: LLaMA-Factory failed (exit {status}); log tail:\n{log_path.read_text()[-3000:]}"
        )
    history = json.loads((work_dir / "output" / "trainer_state.json").read_text())["log_history"]
    tokenized = work_dir / "tokenized"
    return {
        "tokenized_sha256": tokenized_digest(tokenized) if tokenized.exists() else None,
        "example": example.name,
        "command": f"llamafactory-cli train {example.relative_to(REPO_ROOT)} (output_dir, tokenized_path: temporary)",
        "versions": {"llamafactory": llamafactory.__version__, "transformers": transformers.__version__},
        "steps": [
            {"step": entry["step"], **{key: entry[key] for key in STEP_KEYS}}
            for entry in history
            if "loss" in entry
        ],
        "train_loss": next(entry["train_loss"] for entry in history if "train_loss" in entry),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="*", help="glob over the example file names")
    parser.add_argument("--worker", metavar="ARGS_JSON", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        run_worker(Path(options.worker))
        return
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for example in sorted(EXAMPLE_DIR.glob("*.yaml")):
        if not fnmatch.fnmatch(example.name, options.only):
            continue
        with tempfile.TemporaryDirectory() as work_dir:
            golden = run_example(example, Path(work_dir))
        path = GOLDEN_DIR / f"{example.stem}.json"
        path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(
            f"{path.relative_to(REPO_ROOT)}: {len(golden['steps'])} steps, train_loss {golden['train_loss']:.6f}"
        )


if __name__ == "__main__":
    main()
