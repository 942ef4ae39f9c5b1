"""``fastsft train`` re-launches itself under torchrun as ``llamafactory-cli train`` does (its
``launcher.py``): the decision and the command line, with the device count mocked (CPU only)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from fastsft.train import command as train_command
from fastsft.train.launch import torchrun_command, torchrun_env

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_YAML = str(REPO_ROOT / "examples" / "tiny_sft.yaml")
RUN = [sys.executable, "-m", "torch.distributed.run"]
ARGV = ["cfg.yaml", "max_steps=5"]


@pytest.mark.parametrize(
    ("env", "devices"),
    [
        ({}, 0),  # CPU
        ({}, 1),  # one GPU: this process trains
        ({"LOCAL_RANK": "0"}, 8),  # already one of torchrun's processes
        ({"TORCHELASTIC_RUN_ID": "x"}, 8),
        ({"WORLD_SIZE": "16", "RANK": "3"}, 8),  # another launcher (deepspeed, mpirun, ...)
        ({"FORCE_TORCHRUN": "0"}, 1),
    ],
)
def test_no_launch_where_this_process_trains(env: dict[str, str], devices: int) -> None:
    assert torchrun_command(ARGV, env, devices) is None


def test_several_gpus_launch_one_process_each_on_a_free_port() -> None:
    command = torchrun_command(ARGV, {}, 4)
    assert command is not None
    port = command[command.index("--master_port") + 1]
    assert int(port) > 0
    assert command == [
        *RUN, "--nnodes", "1", "--node_rank", "0", "--nproc_per_node", "4",
        "--master_addr", "127.0.0.1", "--master_port", port, "-m", "fastsft", "train", *ARGV,
    ]  # fmt: skip


def test_llamafactorys_variables_shape_the_command() -> None:
    env = {
        "FORCE_TORCHRUN": "true", "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "8",
        "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501",
    }  # fmt: skip
    assert torchrun_command(ARGV, env, 1) == [
        *RUN, "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "8",
        "--master_addr", "10.0.0.1", "--master_port", "29501", "-m", "fastsft", "train", *ARGV,
    ]  # fmt: skip
    forced_on_cpu = torchrun_command(ARGV, {"FORCE_TORCHRUN": "1"}, 0)
    assert forced_on_cpu[forced_on_cpu.index("--nproc_per_node") + 1] == "1"  # at least one process


def test_rdzv_id_makes_an_elastic_launch() -> None:
    env = {
        "RDZV_ID": "job7",
        "MIN_NNODES": "1",
        "MAX_NNODES": "3",
        "MAX_RESTARTS": "2",
        "MASTER_PORT": "29400",
    }
    assert torchrun_command(ARGV, env, 2) == [
        *RUN, "--nnodes", "1:3", "--nproc-per-node", "2", "--rdzv-id", "job7", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "127.0.0.1:29400", "--max-restarts", "2", "-m", "fastsft", "train", *ARGV,
    ]  # fmt: skip


def test_the_processes_get_llamafactorys_allocator_settings_unless_optim_torch_is_off() -> None:
    assert torchrun_env({})["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert torchrun_env({})["TORCH_NCCL_AVOID_RECORD_STREAMS"] == "1"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in torchrun_env({"OPTIM_TORCH": "0"})


def test_fastsft_train_relaunches_with_its_own_arguments_and_returns_torchruns_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[Any] = []

    class FakeTorchrun:
        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            started.append((command, env))

        def wait(self) -> int:
            return 3

    for name in ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "FORCE_TORCHRUN", "NPROC_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(train_command, "device_count", lambda: 2)
    monkeypatch.setattr("fastsft.train.launch.subprocess.Popen", FakeTorchrun)
    monkeypatch.setattr(train_command, "train", lambda config: pytest.fail("the launcher trained"))
    assert train_command.run_train([TINY_YAML, "max_steps=3"]) == 3
    [(command, env)] = started
    assert command[command.index("--nproc_per_node") + 1] == "2"
    assert command[-4:] == ["fastsft", "train", TINY_YAML, "max_steps=3"]
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert (
        "[fastsft] 2 devices visible: training in 2 processes per node under torchrun"
        in capsys.readouterr().out
    )
