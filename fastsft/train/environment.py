"""The process ``fastsft train`` runs in: CPU threads, and gloo process groups where there is no CUDA."""

from __future__ import annotations

import os

import torch

from fastsft.train.config import TrainConfig

__all__ = ["configure_cpu_distributed", "configure_cpu_threads", "idle_cores", "threads_reason"]


def configure_cpu_distributed(config: TrainConfig) -> bool:
    """Without CUDA, run several processes (or DeepSpeed) over gloo; returns whether that was set up.

    accelerate would otherwise see a single process and DeepSpeed's batch-size check would fail.
    The state must exist before ``TrainingArguments(accelerator_config={"use_configured_state": True})``.
    """
    if torch.cuda.is_available():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not config.deepspeed:
        return False
    if config.deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # a single process started without a launcher
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        import deepspeed.ops

        # DeepSpeed's CPU shared-memory all-reduce is JIT-compiled on first use (~90 s); gloo suffices.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    from accelerate import PartialState

    PartialState(backend="gloo")
    return True


def configure_cpu_threads(config: TrainConfig) -> int | None:
    """Set torch's intra-op threads on CPU; returns the count it set (``None``: left as it was).

    ``cpu_threads`` wins, then ``OMP_NUM_THREADS`` (torch already follows it). Otherwise the cores
    this process may use that are not busy (affinity minus the 1-minute load average, shared by
    the local processes), at least 1: torch's default of one spinning thread per core is many
    times slower when another process holds a core (docs/training.md has the numbers).
    """
    if torch.cuda.is_available():
        return None
    if config.cpu_threads is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = config.cpu_threads or idle_cores()
    torch.set_num_threads(threads)
    return threads


def idle_cores() -> int:
    """Cores of this process's affinity not busy with other work, per local training process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (cores - round(load)) // local_processes)


def threads_reason(config: TrainConfig) -> str:
    if config.cpu_threads is not None:
        return "cpu_threads"
    return "the idle cores; set cpu_threads or OMP_NUM_THREADS to choose"
