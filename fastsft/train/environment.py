"""The process ``fastsft train`` runs in: the optional packages the config needs, CPU threads, gloo
process groups where there is no CUDA, and what one run leaves of them for the next."""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fastsft.cores import core_ids
from fastsft.errors import ConfigError, FastSFTError
from fastsft.train.config import TrainConfig

__all__ = [
    "REPORTERS",
    "busy_cores",
    "check_optional_packages",
    "configure_cpu_distributed",
    "configure_cpu_threads",
    "idle_cores",
    "quiet_deepspeed_deprecations",
    "run_scope",
    "threads_reason",
]


# ``report_to`` loggers: the modules transformers' callback imports (any one suffices) and the pip package.
REPORTERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "swanlab": (("swanlab",), "swanlab"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "clearml": (("clearml",), "clearml"),
    "neptune": (("neptune",), "neptune"),
    "dvclive": (("dvclive",), "dvclive"),
    "trackio": (("trackio",), "trackio"),
    "codecarbon": (("codecarbon",), "codecarbon"),
}
FA2_FALLBACK = (
    "`flash_attn: fa2` (attn: flash_attention_2) needs flash-attn on a CUDA GPU, which is not available here (pip install flash-attn); "
    "falling back to the default attention as LLaMA-Factory does (fastsft_varlen for packed batches, else sdpa)"
)


@contextmanager
def run_scope() -> Iterator[None]:
    """One run's changes to the process, undone when it ends, so that a later run in the same process
    (a notebook, a sweep) trains as its own config says.

    - The environment variables. transformers 4.x's ``TrainingArguments`` keeps
      ``ACCELERATE_MIXED_PRECISION=bf16`` (a later fp32 run would train under bf16 autocast);
      accelerate keeps ``ACCELERATE_USE_DEEPSPEED=true``; ``configure_cpu_distributed`` sets the rank
      and address variables.
    - DeepSpeed's config as transformers sees it (``is_deepspeed_zero3_enabled``: a later run would
      build its model under ZeRO-3).
    - torch's CPU threads.

    A process group the run started stays (DeepSpeed keeps using it in a later run; a run without
    DeepSpeed trains as one process on it), as does accelerate's state, which the next run's
    ``TrainingArguments`` or ``configure_cpu_distributed`` clears.
    """
    environment, threads = os.environ.copy(), torch.get_num_threads()
    try:
        yield
    finally:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        for name in os.environ.keys() - environment.keys():
            del os.environ[name]
        os.environ.update(environment)
        torch.set_num_threads(threads)


def _reset_accelerate_state() -> None:
    """Clear accelerate's process-wide state, as ``TrainingArguments`` does before making its own,
    through accelerate's private ``_reset_state`` (a one-line error where it is missing)."""
    import accelerate
    from accelerate.state import AcceleratorState

    from fastsft.train.trainer import declared_requirement

    if not callable(getattr(AcceleratorState, "_reset_state", None)):
        raise FastSFTError(
            f"accelerate {accelerate.__version__} has no AcceleratorState._reset_state, which fastsft "
            f"needs to set up CPU process groups; it supports {declared_requirement('accelerate')}"
        )
    AcceleratorState._reset_state(reset_partial_state=True)


def check_optional_packages(config: TrainConfig) -> list[str]:
    """The optional packages ``config`` needs, checked before any work: a missing ``report_to`` logger
    fails in one line naming the package and the pip command; ``flash_attn: fa2`` without a usable
    flash-attn falls back as LLaMA-Factory's ``configure_attn_implementation`` does (to the default
    attention: fastsft's varlen attention for packed batches, sdpa otherwise) and the returned
    notice says so. ``deepspeed`` is checked when the config is read."""
    notices = []
    reporters = [config.report_to] if isinstance(config.report_to, str) else list(config.report_to)
    for name in reporters:
        modules, package = REPORTERS.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(module) for module in modules):
            raise ConfigError(
                f"`report_to: {name}` needs {package}, which is not installed: pip install {package}"
            )
    if config.attn == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            config.attn = "auto"
            notices.append(FA2_FALLBACK)
    return notices


# torch 2.13 deprecates the collectives DeepSpeed's ZeRO calls on every step; the warning, shown again
# each time the warning filters change, would repeat dozens of times per step and is not the user's to fix.
DEEPSPEED_COLLECTIVE_DEPRECATIONS = (
    r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated\. "
    r"Please use `torch\.distributed\.(reduce_scatter_single|all_gather_single)` instead\."
)


def quiet_deepspeed_deprecations() -> None:
    """Silence exactly torch's deprecation of the two collectives DeepSpeed calls (nothing else)."""
    warnings.filterwarnings("ignore", message=DEEPSPEED_COLLECTIVE_DEPRECATIONS, category=FutureWarning)


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
        if "MASTER_PORT" not in os.environ:  # a fixed one would fail next to another such run
            from fastsft.train.launch import free_port

            os.environ["MASTER_PORT"] = str(free_port())
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        import deepspeed.ops

        # DeepSpeed's CPU shared-memory all-reduce is JIT-compiled on first use (~90 s); gloo suffices.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    from accelerate import PartialState

    _reset_accelerate_state()  # an earlier run's in this process (a plain one is not set up for DeepSpeed)
    # cpu=True: without it, accelerate finds no accelerator's backend and sees one process (no DDP,
    # no barrier); DeepSpeed's engine reduces the gradients itself.
    PartialState(cpu=not config.deepspeed, backend="gloo")
    return True


def configure_cpu_threads(config: TrainConfig) -> int | None:
    """Set torch's intra-op threads on CPU; returns the count it set (``None``: left as it was).

    ``cpu_threads`` wins, then ``OMP_NUM_THREADS`` (torch already follows it). Otherwise the cores
    this process may use that are not busy right now (measured over a quarter second, so a run
    that just ended does not count), shared by the local processes, at least 1. On a quiet
    machine that is torch's own default (every core); torch's one spinning thread per core is
    many times slower when another process holds a core (docs/training.md has the numbers).
    """
    if torch.cuda.is_available():
        return None
    if config.cpu_threads is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = config.cpu_threads or idle_cores()
    torch.set_num_threads(threads)
    return threads


def idle_cores() -> int:
    """Cores of this process's affinity not busy with other work now, per local training process."""
    cores = core_ids()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (len(cores) - busy_cores(cores)) // local_processes)


def busy_cores(cores: list[int], interval: float = 0.25) -> int:
    """How many of ``cores`` other work keeps busy: their non-idle share over ``interval`` seconds
    (``/proc/stat``), rounded; 0 where ``/proc/stat`` cannot be read."""
    before = _cpu_times(cores)
    time.sleep(interval)
    after = _cpu_times(cores)
    if not before or not after:
        return 0
    busy = total = 0
    for core in before.keys() & after.keys():
        (idle0, all0), (idle1, all1) = before[core], after[core]
        total += all1 - all0
        busy += (all1 - all0) - (idle1 - idle0)
    return round(len(cores) * busy / total) if total else 0


def _cpu_times(cores: list[int]) -> dict[int, tuple[int, int]]:
    """``{core: (idle + iowait jiffies, all jiffies)}`` from ``/proc/stat``; empty where it is missing."""
    wanted = {f"cpu{core}": core for core in cores}
    times = {}
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                name, *fields = line.split()
                if name in wanted:
                    values = [int(value) for value in fields[:8]]
                    times[wanted[name]] = (values[3] + values[4], sum(values))
    except OSError:
        return {}
    return times


def threads_reason(config: TrainConfig) -> str:
    if config.cpu_threads is not None:
        return "cpu_threads"
    return "the cores idle now; set cpu_threads or OMP_NUM_THREADS to choose"
