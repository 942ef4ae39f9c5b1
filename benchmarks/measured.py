"""A command in a fresh process: its wall time and its own peak RSS.

``wait4``'s ``ru_maxrss`` for a child started straight from the benchmark process is not the
child's own: Linux starts the child on the parent's address space (``vfork``) and keeps that
space's high-water mark across ``exec``, so the child reports at least the parent's peak (a
benchmark that built a 1M-conversation dataset in memory made every later command report 4.4
GiB). So the command runs as the child of a small launcher process, which times it and reports
its rusage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - start
print(json.dumps([seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)]))
"""


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int  # bytes, the command's own
    returncode: int
    stderr: str


def run_measured_command(argv: list[str], env: dict[str, str]) -> Measured:
    """``argv`` (stdout discarded) from a fresh launcher: wall seconds, own peak RSS, status, stderr."""
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv], env=env, capture_output=True, text=True, check=True
    )
    seconds, peak_rss, returncode = json.loads(done.stdout)
    return Measured(seconds, peak_rss, returncode, done.stderr)


def run_fastsft(argv: list[str], cache_dir: Path) -> Measured:
    """``fastsft ARGV`` in a fresh process with its cache in ``cache_dir``; fails the test when it fails.

    Python writes fastsft's bytecode even where ``PYTHONDONTWRITEBYTECODE`` is set, so a run after
    the first imports compiled modules as a user's install does (pip compiles the peer's at install;
    an editable checkout without ``__pycache__`` would recompile fastsft's sources in every run)."""
    env = {**os.environ, "FASTSFT_CACHE_DIR": str(cache_dir)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    result = run_measured_command([sys.executable, "-m", "fastsft", *argv], env)
    if result.returncode != 0:
        pytest.fail(f"fastsft {argv[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result
