"""CPU threads: ``fastsft train``'s default thread policy against torch's own default, whole command.

    pytest benchmarks/bench_cpu_threads.py -s [--thread-steps 40] [--thread-rounds 3]

Runs the README job (``examples/tiny_sft.yaml``, ``--thread-steps`` steps, no evaluation, no
plot) as a user would, with ``OMP_NUM_THREADS`` unset: once with fastsft's default policy (no
``cpu_threads``) and once with ``cpu_threads`` set to torch's default (one thread per core of the
affinity), alternating for ``--thread-rounds`` rounds; each keeps its best wall time and best
``train_runtime``. Prints the thread count the policy chose and both ratios; fails when the policy
is more than ``SLACK`` slower than torch's default by wall time. Meaningful on a quiet machine only
(the policy gives cores that other work holds back to it): note the load next to the numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

# --thread-steps and --thread-rounds are declared in benchmarks/conftest.py.
REPO = Path(__file__).resolve().parents[1]
SLACK = 1.10


def train_once(output: Path, steps: int, *extra: str) -> tuple[float, float, int]:
    """(wall seconds, train_runtime, threads used) of one whole ``fastsft train`` command."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    command = [sys.executable, "-m", "fastsft", "train", "examples/tiny_sft.yaml", f"output_dir={output}"]
    command += [
        f"max_steps={steps}",
        "val_size=0",
        "eval_strategy=no",
        "plot_loss=false",
        f"save_steps={steps}",
    ]
    start = time.perf_counter()
    done = subprocess.run(
        command + list(extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    threads = int(re.search(r"CPU training with (\d+) torch thread", done.stdout).group(1))
    runtime = json.loads((output / "metrics.json").read_text(encoding="utf-8"))["train_runtime"]
    return wall, runtime, threads


def test_default_threads_never_slower_than_torch_default(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    steps = request.config.getoption("--thread-steps")
    rounds = request.config.getoption("--thread-rounds")
    torch_default = len(os.sched_getaffinity(0))
    best = {"policy": (float("inf"), float("inf")), "torch": (float("inf"), float("inf"))}
    chosen = set()
    print(f"\nload average before: {os.getloadavg()[0]:.2f}; torch default: {torch_default} threads")
    for index in range(rounds):
        for name, extra in (("policy", ()), ("torch", (f"cpu_threads={torch_default}",))):
            wall, runtime, threads = train_once(tmp_path / f"{name}-{index}", steps, *extra)
            if name == "policy":
                chosen.add(threads)
            best[name] = (min(best[name][0], wall), min(best[name][1], runtime))
            print(
                f"  round {index} {name:<6} threads {threads}: wall {wall:.1f} s, train_runtime {runtime:.2f} s"
            )
    wall_ratio = best["policy"][0] / best["torch"][0]
    runtime_ratio = best["policy"][1] / best["torch"][1]
    print(
        f"policy chose {sorted(chosen)} threads; best wall {best['policy'][0]:.1f} s vs {best['torch'][0]:.1f} s "
        f"({wall_ratio:.2f}x), best train_runtime {best['policy'][1]:.2f} s vs {best['torch'][1]:.2f} s "
        f"({runtime_ratio:.2f}x); load average after: {os.getloadavg()[0]:.2f}"
    )
    assert wall_ratio <= SLACK
