"""How many encoding processes a run uses: ``preprocessing_num_workers`` (``--workers``) is a ceiling.

One process already tokenizes each batch on threads over every core (``fastsft.tokenizer.encoders``)
while the next batch is rendered, so a worker process adds only what the one process leaves
idle, and each costs a start-up (a spawned interpreter that imports the pipeline and loads the
tokenizer again). More than one process pays off only with cores to spare and enough input per
process; the measurements behind the two thresholds are in docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastsft.cores import available_cores
from fastsft.data.data_args import DataArgs
from fastsft.data.sources.parser import DatasetAttr, input_bytes

__all__ = [
    "MIN_BYTES_PER_WORKER",
    "MIN_CORES_FOR_WORKERS",
    "WorkerChoice",
    "choose_workers",
    "workers_for_run",
]

MIN_CORES_FOR_WORKERS = 3
"""Below this many cores one process is used: its tokenizer threads already keep both cores busy, and
2 processes measured slower than 1 on 2 cores at every input size tried (LF demo data to 240 MB)."""
MIN_BYTES_PER_WORKER = 256 * 2**20
"""Input each extra process needs: about ten of its start-ups' worth of one process's encoding."""
MAX_SAMPLE_BYTES = 64 * 2**10
"""With ``max_samples``, a generous bound on a sample's bytes (the files may hold far more than is read)."""


@dataclass(frozen=True)
class WorkerChoice:
    """The processes to use, and the line that says why (``None`` when nothing was asked for)."""

    count: int
    line: str | None


def choose_workers(requested: int | None, input_bytes: int, cores: int) -> WorkerChoice:
    """At most ``requested`` processes, and only as many as ``input_bytes`` of input and ``cores`` pay for.

    ``input_bytes`` is what the run reads at most (0: unknown, treated as small).
    """
    if requested is None or requested <= 1:
        return WorkerChoice(1, None)
    asked = f"preprocessing_num_workers: {requested} is a ceiling"
    if cores < MIN_CORES_FOR_WORKERS:
        return WorkerChoice(
            1,
            f"encoding in 1 process ({asked}): on {cores} cores one process's tokenizer threads "
            "already use them all, and more processes would only add start-ups",
        )
    count = max(1, min(requested, cores, input_bytes // MIN_BYTES_PER_WORKER))
    size = f"{input_bytes / 2**20:,.0f} MiB of input"
    if count == 1:
        why = f"{size} is too little to pay for starting more (a process pays off from {MIN_BYTES_PER_WORKER // 2**20} MiB)"
    else:
        why = f"{size} and {cores} cores (one per {MIN_BYTES_PER_WORKER // 2**20} MiB of input, at most one per core)"
    return WorkerChoice(count, f"encoding in {count} process{'es' if count > 1 else ''} ({asked}): {why}")


def workers_for_run(args: DataArgs, attrs: list[DatasetAttr]) -> WorkerChoice:
    """``choose_workers`` for a split read from ``attrs``, on the cores this process has."""
    size = input_bytes(attrs, args.dataset_dir)
    if args.max_samples:
        size = min(size, args.max_samples * len(attrs) * MAX_SAMPLE_BYTES)
    return choose_workers(args.preprocessing_num_workers, size, available_cores())
