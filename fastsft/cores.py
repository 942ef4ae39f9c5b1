"""The CPU cores this process may run on: its CPU affinity, else the machine's count (not on Linux).

One answer for every part that sizes its parallelism: the BPE encoder's threads, the encoding
processes, training's torch threads.
"""

from __future__ import annotations

import os

__all__ = ["available_cores", "core_ids"]


def core_ids() -> list[int]:
    """The ids of the cores this process may run on, in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    """How many cores this process may run on."""
    return len(core_ids())
