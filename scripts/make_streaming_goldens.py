"""Generate LLaMA-Factory 0.9.5 goldens for ``streaming: true`` into ``tests/goldens/train/``.

Run with the reference environment from the repository root::

    /work/venv-lf/bin/python scripts/make_streaming_goldens.py [--only GLOB]

Each case is ``scripts/make_train_goldens.py``'s full-SFT case on the committed tiny base, with
LLaMA-Factory's streaming keys: ``streaming: true``, a small ``buffer_size`` (so the shuffle
buffer reorders the samples), no ``max_samples`` (refused under streaming) and
``dataloader_num_workers: 1``. LLaMA-Factory shards a local file into ``dataloader_num_workers``
shards (``to_iterable_dataset(num_shards=...)``); with the default 0 it streams no sample at all,
so the goldens use one worker, one shard. The run goes through ``run_exp`` in a fresh process
(``make_train_goldens.run_case``'s environment: one thread, no GPU, fixed seeds), and the golden
keeps the YAML and every step's loss, grad norm and learning rate from ``trainer_state.json``.

It also records the order ``datasets`` itself streams sample indices in, for the same operations
LLaMA-Factory applies (``to_iterable_dataset``, ``concatenate_datasets``, ``shuffle``, ``skip`` /
``take``, ``set_epoch`` as the ``Trainer`` calls it each pass): ``stream_orders.json``, which
``tests/test_streaming.py`` compares ``fastsft.data.streaming.SampleStream`` with, pass by pass.

Output: ``tests/goldens/train/streaming_<case>.json`` and ``streaming_orders.json``.
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
import make_train_goldens as train_goldens

GOLDEN_DIR = train_goldens.GOLDEN_DIR
STREAMING_ARGS: dict[str, Any] = {
    **{key: value for key, value in train_goldens.COMMON_ARGS.items() if key != "max_samples"},
    "finetuning_type": "full",
    "learning_rate": 1.0e-3,
    "streaming": True,
    "buffer_size": 64,
    "dataloader_num_workers": 1,
}
CASES: dict[str, dict[str, Any]] = {
    "unpacked": {},
    # Packing happens within each preprocessing batch of the shuffled stream.
    "neat_packed": {"packing": True, "neat_packing": True, "preprocessing_batch_size": 32},
    # The stream's first val_size samples are the validation split (take); training skips them.
    "val_size": {"val_size": 4, "eval_strategy": "steps", "eval_steps": 5, "per_device_eval_batch_size": 2},
    # Interleaving of iterable datasets: two names for tiny_sharegpt (LLaMA-Factory keeps one of a
    # name given twice), told apart by the order.
    "interleave_probs": {
        "dataset": "tiny_a,tiny_b",
        "dataset_dir": "tests/goldens/train/streaming_data",
        "mix_strategy": "interleave_under",
        "interleave_probs": "0.3,0.7",
    },
}


def run_case(name: str, work_dir: Path) -> None:
    """Run one case through ``llamafactory.train.tuner.run_exp`` in a fresh process; write its golden."""
    case_args = {**STREAMING_ARGS, **CASES[name]}
    output_dir = work_dir / "output"
    args_path = work_dir / "args.json"
    args_path.write_text(json.dumps({**case_args, "output_dir": str(output_dir)}))
    env = {**train_goldens._deterministic_env(), "HF_DATASETS_CACHE": str(work_dir / "datasets_cache")}
    code = (
        "import json, sys, torch; torch.set_num_threads(1); "
        "from llamafactory.train.tuner import run_exp; run_exp(args=json.load(open(sys.argv[1])))"
    )
    log_path = work_dir / "train.log"
    with log_path.open("w") as log:
        status = subprocess.run(
            [sys.executable, "-c", code, str(args_path)],
            cwd=train_goldens.REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ).returncode
    if status != 0:
        sys.exit(
            f"case {name}: LLaMA-Factory failed (exit {status}); log tail:\n{log_path.read_text()[-3000:]}"
        )
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    steps = [
        {key: entry[key] for key in ("step", "loss", "grad_norm", "learning_rate")}
        for entry in history
        if "loss" in entry
    ]
    if [entry["step"] for entry in steps] != list(range(1, case_args["max_steps"] + 1)):
        sys.exit(f"case {name}: expected one log entry per step, got {[e['step'] for e in steps]}")
    golden = {
        "case": f"streaming_{name}",
        "yaml": {**case_args, "output_dir": train_goldens.OUTPUT_DIR_PLACEHOLDER},
        "steps": steps,
        "command": "/work/venv-lf/bin/python scripts/make_streaming_goldens.py",
    }
    path = GOLDEN_DIR / f"streaming_{name}.json"
    path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


ORDER_CASES: dict[str, dict[str, Any]] = {
    "one_dataset": {"lengths": [50], "buffer_size": 8, "seed": 42},
    "buffer_larger_than_data": {"lengths": [30], "buffer_size": 64, "seed": 7},
    "two_datasets": {"lengths": [30, 20], "buffer_size": 16, "seed": 3},
    "three_datasets": {"lengths": [5, 1200, 7], "buffer_size": 100, "seed": 11},
    "buffer_of_one": {"lengths": [12, 9], "buffer_size": 1, "seed": 5},
    "skip": {"lengths": [40], "buffer_size": 8, "seed": 42, "skip": 5},
    "take": {"lengths": [40], "buffer_size": 8, "seed": 42, "take": 5},
    "interleave_under": {"lengths": [7, 12, 5], "buffer_size": 4, "seed": 1, "mix": "first_exhausted"},
    "interleave_over": {"lengths": [7, 12, 5], "buffer_size": 4, "seed": 1, "mix": "all_exhausted"},
    "interleave_under_probs": {
        "lengths": [30, 50, 20],
        "buffer_size": 8,
        "seed": 2,
        "mix": "first_exhausted",
        "probs": [0.2, 0.5, 0.3],
    },
    "interleave_over_probs": {
        "lengths": [30, 50, 20],
        "buffer_size": 8,
        "seed": 2,
        "mix": "all_exhausted",
        "probs": [0.2, 0.5, 0.3],
    },
    "interleave_long": {
        "lengths": [1500, 900],
        "buffer_size": 64,
        "seed": 9,
        "mix": "all_exhausted",
        "probs": [0.4, 0.6],
    },
}
PASSES = 3


def stream_orders() -> None:
    """The sample order ``datasets`` streams for each ``ORDER_CASES`` entry, pass by pass."""
    from datasets import Dataset, concatenate_datasets, interleave_datasets

    orders = {}
    for name, case in ORDER_CASES.items():
        parts, offset = [], 0
        for length in case["lengths"]:
            rows = {"dataset": [len(parts)] * length, "index": list(range(length))}
            parts.append(Dataset.from_dict(rows).to_iterable_dataset(num_shards=1))
            offset += length
        if "mix" in case:
            stream = interleave_datasets(
                parts, probabilities=case.get("probs"), seed=case["seed"], stopping_strategy=case["mix"]
            )
        else:
            stream = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        stream = stream.shuffle(buffer_size=case["buffer_size"], seed=case["seed"])
        if "skip" in case:
            stream = stream.skip(case["skip"])
        if "take" in case:
            stream = stream.take(case["take"])
        passes = []
        for epoch in range(PASSES):
            stream.set_epoch(epoch)
            passes.append([[row["dataset"], row["index"]] for row in stream])
        orders[name] = {**case, "passes": passes}
    path = GOLDEN_DIR / "streaming_orders.json"
    path.write_text(json.dumps(orders) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="*", help="run only the cases matching this glob")
    args = parser.parse_args()
    stream_orders()
    for name in CASES:
        if fnmatch.fnmatch(name, args.only):
            with tempfile.TemporaryDirectory() as work_dir:
                run_case(name, Path(work_dir))


if __name__ == "__main__":
    main()
