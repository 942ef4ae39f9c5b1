"""``fastsft train`` on several GPUs: the command re-launches itself under torchrun, as
``llamafactory-cli train`` does (LLaMA-Factory 0.9.5's ``launcher.py``, same environment variables
and the same rules).

It launches when ``FORCE_TORCHRUN`` is set, or when more than one device is visible, and it is not
already one of a launcher's processes (``LOCAL_RANK``, ``WORLD_SIZE`` or ``TORCHELASTIC_RUN_ID`` set). ``NNODES`` (1), ``NODE_RANK`` (0), ``NPROC_PER_NODE`` (the
device count, at least 1), ``MASTER_ADDR`` (127.0.0.1) and ``MASTER_PORT`` (a free port) shape the command;
``RDZV_ID`` makes it an elastic launch (``MIN_NNODES`` / ``MAX_NNODES``, ``MAX_RESTARTS``);
``OPTIM_TORCH`` (on unless ``0``) sets LLaMA-Factory's two allocator variables for the processes.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

from fastsft.errors import Terminated

__all__ = [
    "device_count",
    "free_port",
    "launch_torchrun",
    "processes_per_node",
    "torchrun_command",
    "torchrun_env",
]


def _enabled(env: Mapping[str, str], name: str, default: str = "0") -> bool:
    """LLaMA-Factory's ``is_env_enabled``."""
    return env.get(name, default).lower() in ("true", "y", "1")


def device_count() -> int:
    """The accelerators torch sees (CUDA, else XPU), as LLaMA-Factory's ``get_device_count``."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return xpu.device_count()
    return 0


def free_port() -> int:
    """A port free on this machine now (LLaMA-Factory's ``find_available_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def processes_per_node(env: Mapping[str, str], devices: int) -> str:
    """``NPROC_PER_NODE``, else one process per device (at least one: LLaMA-Factory's would be 0
    with ``FORCE_TORCHRUN`` on a machine without GPUs)."""
    return env.get("NPROC_PER_NODE", str(max(devices, 1)))


def torchrun_command(argv: Sequence[str], env: Mapping[str, str], devices: int) -> list[str] | None:
    """The torchrun command that runs ``fastsft train ARGV`` on every device, or ``None`` where this
    process trains itself (one device, or already started by torchrun or another launcher)."""
    if any(name in env for name in ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")):
        return None  # started by torchrun, the deepspeed launcher or another one
    if not (_enabled(env, "FORCE_TORCHRUN") or devices > 1):
        return None
    nnodes = env.get("NNODES", "1")
    nproc = processes_per_node(env, devices)
    master_addr = env.get("MASTER_ADDR", "127.0.0.1")
    master_port = env.get("MASTER_PORT") or str(free_port())
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if env.get("RDZV_ID") is not None:  # elastic, fault-tolerant launch
        rdzv_nnodes = nnodes
        if env.get("MIN_NNODES") is not None and env.get("MAX_NNODES") is not None:
            rdzv_nnodes = f"{env['MIN_NNODES']}:{env['MAX_NNODES']}"
        options = [
            "--nnodes", rdzv_nnodes, "--nproc-per-node", nproc, "--rdzv-id", env["RDZV_ID"],
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master_addr}:{master_port}",
            "--max-restarts", env.get("MAX_RESTARTS", "0"),
        ]  # fmt: skip
    else:
        options = [
            "--nnodes", nnodes, "--node_rank", env.get("NODE_RANK", "0"), "--nproc_per_node", nproc,
            "--master_addr", master_addr, "--master_port", master_port,
        ]  # fmt: skip
    return [*launcher, *options, "-m", "fastsft", "train", *argv]


def torchrun_env(env: Mapping[str, str]) -> dict[str, str]:
    """The processes' environment: LLaMA-Factory's DDP allocator settings unless ``OPTIM_TORCH=0``."""
    child = dict(env)
    if _enabled(env, "OPTIM_TORCH", "1"):
        child["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        child["TORCH_NCCL_AVOID_RECORD_STREAMS"] = "1"
    return child


def launch_torchrun(command: list[str], env: Mapping[str, str]) -> int:
    """Run torchrun and return its exit status. SIGTERM sent to this process is passed on to
    torchrun, which stops the training processes cleanly; Ctrl-C reaches them through the terminal."""
    process = subprocess.Popen(command, env=torchrun_env(env))
    try:
        return process.wait()
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, Terminated):
            process.send_signal(signal.SIGTERM)
        return process.wait()
