"""``fastsft train`` with ``finetuning_type: full | lora | freeze`` against LLaMA-Factory 0.9.5.

The goldens in ``tests/goldens/train/`` come from ``scripts/make_train_goldens.py``, which ran
``llamafactory-cli train``'s code path on the committed tiny base weights (``tiny_base/``). Each
test runs ``fastsft train`` on the very YAML LLaMA-Factory ran and compares:

* the set-up: trainable parameter names, shapes and dtypes, and their initial values (sha256),
  so the LoRA init draws the same random numbers;
* every step's loss, grad norm and learning rate (within 1e-5);
* what was saved: the adapter's config and tensor names, and the reloaded model's logits on the
  golden probe.

``full`` is the control: the full-SFT path already matched LLaMA-Factory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from fastsft.train.config import load_config
from fastsft.train.workflow import train

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens" / "train"
BASE_DIR = GOLDEN_DIR / "tiny_base"
# Adapters fastsft trained, with LLaMA-Factory's logits for them (scripts/make_adapter_load_goldens.py).
ADAPTER_DIR = GOLDEN_DIR / "fastsft_adapters"
COMMITTED_ADAPTERS = ("lora_all", "lora_dora")
CASES = ("full", "lora_all", "lora_qv_alpha32", "lora_rslora", "lora_dora", "freeze_last1")
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("repo_cwd")


def golden(case: str) -> dict[str, Any]:
    return json.loads((GOLDEN_DIR / f"{case}.json").read_text(encoding="utf-8"))


class SetupRecorder(TrainerCallback):
    """The trainable parameters as training starts: name, shape, dtype and sha256 of the fp32 bytes."""

    def __init__(self) -> None:
        self.trainable: list[dict[str, Any]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        for name, param in model.named_parameters():
            if param.requires_grad:
                data = param.detach().to(torch.float32).contiguous().numpy().tobytes()
                self.trainable.append(
                    {
                        "name": name,
                        "shape": list(param.shape),
                        "dtype": str(param.dtype),
                        "initial_sha256": hashlib.sha256(data).hexdigest(),
                    }
                )


def run_case(case: str, tmp_path: Path) -> tuple[Path, SetupRecorder]:
    """``fastsft train`` on the golden's own YAML (one CPU thread, as the goldens were made)."""
    values = golden(case)["yaml"]
    config_path = tmp_path / f"{case}.yaml"
    config_path.write_text(yaml.safe_dump(values), encoding="utf-8")
    output_dir = tmp_path / "output"
    recorder = SetupRecorder()
    config = load_config(config_path, [f"output_dir={output_dir}", "cpu_threads=1", "plot_loss=false"])
    train(config, callbacks=[recorder])
    return output_dir, recorder


def logged_steps(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry]


def reload_trained(case: str, output_dir: Path) -> Any:
    """The saved model as a user reloads it: peft on the base for LoRA, the folder itself otherwise."""
    if golden(case)["yaml"]["finetuning_type"] == "lora":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
        return PeftModel.from_pretrained(base, output_dir)
    return AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32)


def probe_logits(model: Any, input_ids: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(input_ids)[None], use_cache=False).logits.float().numpy()


@pytest.mark.parametrize("case", CASES)
def test_training_matches_llamafactory(case: str, tmp_path: Path) -> None:
    expected = golden(case)
    output_dir, recorder = run_case(case, tmp_path)

    # The same trainable parameters, dtypes and initial values (LoRA A draws the same numbers).
    wanted = [
        {key: entry[key] for key in ("name", "shape", "dtype", "initial_sha256")}
        for entry in expected["setup"]["trainable"]
    ]
    assert recorder.trainable == wanted

    steps = logged_steps(output_dir)
    assert [entry["step"] for entry in steps] == [entry["step"] for entry in expected["steps"]]
    for ours, theirs in zip(steps, expected["steps"], strict=True):
        for key in ("loss", "grad_norm", "learning_rate"):
            assert ours[key] == pytest.approx(theirs[key], abs=TOLERANCE), (ours["step"], key)

    reference = np.load(GOLDEN_DIR / expected["logits_file"])
    logits = probe_logits(reload_trained(case, output_dir), reference["input_ids"])
    np.testing.assert_allclose(logits, reference["logits"], atol=TOLERANCE, rtol=0)

    if expected.get("adapter_config"):
        saved = json.loads((output_dir / "adapter_config.json").read_text(encoding="utf-8"))
        for key, value in expected["adapter_config"].items():
            if key == "target_modules":
                assert sorted(saved[key]) == sorted(value)
            else:
                assert saved[key] == value, key
        with safe_open(output_dir / "adapter_model.safetensors", "pt") as handle:
            assert sorted(handle.keys()) == sorted(expected["adapter_tensor_names"])
        assert not (output_dir / "model.safetensors").exists()  # the adapter only, as LLaMA-Factory saves
        if case in COMMITTED_ADAPTERS:  # the adapter LLaMA-Factory was shown to load is today's
            trained, committed = (
                load_file(folder / "adapter_model.safetensors") for folder in (output_dir, ADAPTER_DIR / case)
            )
            assert trained.keys() == committed.keys()
            for name, tensor in trained.items():
                torch.testing.assert_close(tensor, committed[name], atol=TOLERANCE, rtol=0, msg=name)
    else:
        assert (output_dir / "model.safetensors").is_file()
        assert not (output_dir / "adapter_config.json").exists()


@pytest.mark.parametrize("case", COMMITTED_ADAPTERS)
def test_a_fastsft_adapter_loads_in_peft_as_in_llamafactory(case: str) -> None:
    """peft's ``PeftModel.from_pretrained`` on the base gives the logits LLaMA-Factory's own loader
    gave for the same fastsft-trained adapter (merged into the base by ``load_model``)."""
    from peft import PeftModel

    llamafactory = np.load(ADAPTER_DIR / f"{case}_lf_logits.npz")
    base = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
    base_logits = probe_logits(base, llamafactory["input_ids"])
    model = PeftModel.from_pretrained(base, ADAPTER_DIR / case)
    logits = probe_logits(model, llamafactory["input_ids"])
    np.testing.assert_allclose(logits, llamafactory["logits"], atol=TOLERANCE, rtol=0)
    # The adapter changes the model: the comparison is not one of two bare bases.
    assert np.abs(base_logits - logits).max() > 1e-3
