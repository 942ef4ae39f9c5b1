"""Ctrl-C during ``fastsft train``: one line naming the last checkpoint, exit 130, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_sigint_names_the_last_checkpoint_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fastsft", "train", "examples/tiny_sft.yaml", f"output_dir={out}"]
    command += [
        "max_steps=100000",
        "save_steps=2",
        "save_total_limit=1",
        "logging_steps=1",
        "plot_loss=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("checkpoint-*/trainer_state.json")):  # a complete checkpoint exists
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("fastsft train:")]
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert lines == [
        f"fastsft train: interrupted; last checkpoint: {checkpoints[-1]} "
        "(rerun with resume_from_checkpoint=true to continue)"
    ], stderr[-3000:]


def test_interrupted_message_without_a_checkpoint(tmp_path: Path) -> None:
    from fastsft.train.command import interrupted_message

    assert (
        interrupted_message(tmp_path / "missing")
        == f"interrupted; no checkpoint was saved in {tmp_path / 'missing'}"
    )
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()  # incomplete: never named as the one to resume from
    assert interrupted_message(tmp_path) == f"interrupted; no checkpoint was saved in {tmp_path}"
    import torch
    from safetensors.torch import save_file

    from fastsft.train.checkpoints import mark_checkpoint

    save_file({"weight": torch.zeros(2)}, str(checkpoint / "model.safetensors"))
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}', encoding="utf-8")
    mark_checkpoint(checkpoint, 4, model_only=True)
    assert str(checkpoint) in interrupted_message(tmp_path)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_dataloader_workers_gives_the_clean_line_only(
    tmp_path: Path,
) -> None:
    """A scheduler's SIGTERM reaches the DataLoader workers too; torch's SIGCHLD handler must not
    add "DataLoader worker ... is killed by signal" after the clean message."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fastsft", "train", "examples/tiny_sft.yaml", f"output_dir={out}"]
    command += ["max_steps=100000", "save_steps=2", "save_total_limit=1", "plot_loss=false"]
    command += ["dataloader_num_workers=2", "eval_strategy=no", "val_size=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("checkpoint-*/trainer_state.json")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        time.sleep(1.0)  # training, workers running
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("fastsft train:")]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("fastsft train: SIGTERM; last checkpoint: "), stderr[-3000:]
