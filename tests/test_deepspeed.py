"""DeepSpeed: the bundled configs, and ZeRO-3 over 2 processes (gloo, CPU) against a 1-process run,
evaluation included.

The 2-process run goes through the real entry point (``torchrun -m fastsft train``). CI needs
``pip install -e ".[deepspeed]"`` (deepspeed + accelerate); the test is skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import saved_tiny_model

from fastsft.train.checkpoints import checkpoint_problem
from fastsft.train.config import DEEPSPEED_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_YAML = REPO_ROOT / "examples" / "tiny_sft.yaml"
CONFIGS = {
    "ds_z2_config.json": 2,
    "ds_z3_config.json": 3,
    "ds_z3_offload_config.json": 3,
}


@pytest.mark.parametrize(("name", "stage"), CONFIGS.items())
def test_bundled_configs_leave_batch_and_precision_to_trainer(name: str, stage: int) -> None:
    config = json.loads((DEEPSPEED_DIR / name).read_text(encoding="utf-8"))
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto"  # filled from TrainingArguments
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    # No optimizer / scheduler section: Trainer creates torch AdamW and its scheduler, so DeepSpeed
    # compiles no optimizer op (zero_allow_untested_optimizer lets ZeRO take a torch optimizer).
    assert "optimizer" not in config and "scheduler" not in config
    assert config["zero_allow_untested_optimizer"] is True
    if stage == 3:
        # Final save gathers the full 16-bit weights, so from_pretrained(output_dir) works.
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    offloaded = "offload" in name
    assert ("offload_optimizer" in config["zero_optimization"]) is offloaded
    assert ("offload_param" in config["zero_optimization"]) is offloaded


def read_losses(output_dir: Path, key: str = "loss") -> list[float]:
    lines = (output_dir / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry[key] for entry in map(json.loads, lines) if key in entry]


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_two_processes_match_one_process_and_the_saved_model_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    from fastsft.train.config import load_config
    from fastsft.train.workflow import train

    monkeypatch.chdir(REPO_ROOT)
    saved_tiny_model(tmp_path / "initial")  # one initial model for both runs
    # Tiny parameters stay unpartitioned under the "auto" persistence threshold; 0 shards them all.
    ds_config = json.loads((DEEPSPEED_DIR / "ds_z3_config.json").read_text(encoding="utf-8"))
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "ds_z3.json").write_text(json.dumps(ds_config), encoding="utf-8")

    common = [
        "model_config=null",
        f"model_name_or_path={tmp_path / 'initial'}",
        "max_steps=4",
        "logging_steps=1",
        "save_steps=4",
        "max_samples=60",
        "plot_loss=false",
        # Evaluation: 7 held-out samples in batches of 1 row, so one process is a batch short.
        "val_size=7",
        "eval_strategy=steps",
        "eval_steps=2",
        "per_device_eval_batch_size=1",
    ]
    zero3_dir = tmp_path / "zero3"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_port", str(29500 + os.getpid() % 1000)),
        *("-m", "fastsft", "train", str(TINY_YAML)),
        *common,
        f"deepspeed={tmp_path / 'ds_z3.json'}",
        "per_device_train_batch_size=1",  # global batch 2 = 2 processes x 1
        f"output_dir={zero3_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # torch's deprecation of the collectives ZeRO calls, dozens per step before, is filtered precisely.
    assert "FutureWarning" not in done.stderr, done.stderr[-3000:]

    reference_dir = tmp_path / "single"
    train(load_config(TINY_YAML, [*common, "per_device_train_batch_size=2", f"output_dir={reference_dir}"]))

    zero3_losses, reference_losses = read_losses(zero3_dir), read_losses(reference_dir)
    assert len(zero3_losses) == 4
    assert zero3_losses == pytest.approx(reference_losses, rel=1e-5)
    # Eval at steps 2 and 4 and the final one: the same token-level loss as one process.
    zero3_eval, reference_eval = read_losses(zero3_dir, "eval_loss"), read_losses(reference_dir, "eval_loss")
    assert len(zero3_eval) == 2  # the final evaluation is in eval_results.json, as LLaMA-Factory's
    zero3_eval.append(json.loads((zero3_dir / "eval_results.json").read_text(encoding="utf-8"))["eval_loss"])
    reference_eval.append(
        json.loads((reference_dir / "eval_results.json").read_text(encoding="utf-8"))["eval_loss"]
    )
    assert zero3_eval == pytest.approx(reference_eval, rel=1e-5)
    # Each rank wrote its own ZeRO partition: the model really was sharded.
    shards = sorted(p.name for p in (zero3_dir / "checkpoint-4").glob("global_step*/*model_states.pt"))
    assert shards == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    ]
    # Published atomically after every rank's files were written: the marker lists both ranks'
    # shards, the checkpoint passes the resume check, and no unfinished save is left.
    marker = json.loads((zero3_dir / "checkpoint-4" / "fastsft_checkpoint.json").read_text(encoding="utf-8"))
    assert sum(name.endswith("model_states.pt") for name in marker["files"]) == 2
    assert checkpoint_problem(zero3_dir / "checkpoint-4") is None
    assert not list(zero3_dir.glob(".checkpoint-*"))
    # The final save gathered full weights: from_pretrained loads them, equal to the 1-process model.
    zero3_model = AutoModelForCausalLM.from_pretrained(zero3_dir)
    reference_model = AutoModelForCausalLM.from_pretrained(reference_dir)
    for (name, weight), reference in zip(
        zero3_model.state_dict().items(), reference_model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(weight, reference, atol=2e-5, rtol=1e-4, msg=name)
