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
import transformers
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from fastsft.errors import ConfigError
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
# LLaMA-Factory's runs on the installed transformers' major version: 4.56 and 5 differ by ~1e-4 in
# these losses (LLaMA-Factory and fastsft alike), and 4.56 logs the loss rounded to 4 decimals.
CASE_DIR = (
    GOLDEN_DIR
    if int(transformers.__version__.split(".")[0]) >= 5
    else GOLDEN_DIR.with_name("train_transformers4")
)
# LLaMA-Factory's logits for the committed adapters, on the same transformers major.
LF_ADAPTER_LOGITS = ADAPTER_DIR if CASE_DIR == GOLDEN_DIR else CASE_DIR / "fastsft_adapters"

pytestmark = pytest.mark.usefixtures("repo_cwd")


def golden(case: str) -> dict[str, Any]:
    return json.loads((CASE_DIR / f"{case}.json").read_text(encoding="utf-8"))


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
    assert [entry["current_steps"] for entry in steps] == [entry["step"] for entry in expected["steps"]]
    for ours, theirs in zip(steps, expected["steps"], strict=True):
        for key in ("loss", "grad_norm", "learning_rate"):
            assert ours[key] == pytest.approx(theirs[key], abs=TOLERANCE), (ours["current_steps"], key)

    reference = np.load(CASE_DIR / expected["logits_file"])
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
        # The adapter LLaMA-Factory was shown to load is today's (trained on transformers 5's numerics).
        if case in COMMITTED_ADAPTERS and CASE_DIR == GOLDEN_DIR:
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

    llamafactory = np.load(LF_ADAPTER_LOGITS / f"{case}_lf_logits.npz")
    base = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
    base_logits = probe_logits(base, llamafactory["input_ids"])
    model = PeftModel.from_pretrained(base, ADAPTER_DIR / case)
    logits = probe_logits(model, llamafactory["input_ids"])
    np.testing.assert_allclose(logits, llamafactory["logits"], atol=TOLERANCE, rtol=0)
    # The adapter changes the model: the comparison is not one of two bare bases.
    assert np.abs(base_logits - logits).max() > 1e-3


def lora_yaml(tmp_path: Path, case: str = "lora_all", **changes: Any) -> Path:
    """A golden's YAML (``lora_all`` by default) with ``changes``, written to ``tmp_path``."""
    values = {**golden(case)["yaml"], "plot_loss": False, "cpu_threads": 1, **changes}
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def initial_adapter(tmp_path: Path) -> Path:
    """A fresh ``lora_target: all`` adapter on the base, saved: runs that must start from the same
    weights load it (``adapter_name_or_path``) instead of drawing their own init."""
    from peft import LoraConfig, get_peft_model

    from fastsft.train.adapter import find_all_linear_modules

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
    config = LoraConfig(
        task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=find_all_linear_modules(base)
    )
    model = get_peft_model(base, config)
    with torch.no_grad():  # lora_B starts at zero; make it matter from the first step
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.save_pretrained(tmp_path / "initial_adapter")
    return tmp_path / "initial_adapter"


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_lora_two_processes_match_one_process(tmp_path: Path) -> None:
    """ZeRO-3 over 2 processes (gloo, CPU) trains the same LoRA adapter as one process, and the
    adapter it saves (gathered from the shards) gives the same logits."""
    pytest.importorskip("deepspeed")
    import os
    import subprocess
    import sys

    from peft import PeftModel

    from fastsft.train.config import DEEPSPEED_DIR

    ds_config = json.loads((DEEPSPEED_DIR / "ds_z3_config.json").read_text(encoding="utf-8"))
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # shard even tiny tensors
    (tmp_path / "ds_z3.json").write_text(json.dumps(ds_config), encoding="utf-8")
    config_path = lora_yaml(tmp_path, max_steps=4, gradient_accumulation_steps=1)
    initial = initial_adapter(tmp_path)
    common = [f"adapter_name_or_path={initial}", "save_steps=4"]
    zero3_dir, single_dir = tmp_path / "zero3", tmp_path / "single"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_port", str(29500 + os.getpid() % 1000)),
        *("-m", "fastsft", "train", str(config_path), *common),
        f"deepspeed={tmp_path / 'ds_z3.json'}",
        "per_device_train_batch_size=1",  # global batch 2 = 2 processes x 1
        f"output_dir={zero3_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    train(load_config(config_path, [*common, "per_device_train_batch_size=2", f"output_dir={single_dir}"]))

    zero3_steps, single_steps = logged_steps(zero3_dir), logged_steps(single_dir)
    assert len(zero3_steps) == 4
    for ours, theirs in zip(zero3_steps, single_steps, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    shards = sorted(p.name for p in (zero3_dir / "checkpoint-4").glob("global_step*/*model_states.pt"))
    assert shards == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    ]
    probe = np.load(GOLDEN_DIR / "lora_all_logits.npz")["input_ids"]
    logits = []
    for folder in (zero3_dir, single_dir, initial):
        base = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
        logits.append(probe_logits(PeftModel.from_pretrained(base, folder), probe))
    np.testing.assert_allclose(logits[0], logits[1], atol=2e-5, rtol=0)
    assert np.abs(logits[0] - logits[2]).max() > 1e-3  # trained: not the adapter it started from


class StopAt(TrainerCallback):
    """Ends training after ``step`` as an interruption would (the checkpoint at ``step`` is kept)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


@pytest.mark.parametrize("case", ["lora_all", "freeze_last1"])
def test_resume_continues_lora_and_freeze_runs_exactly(case: str, tmp_path: Path) -> None:
    config_path = lora_yaml(tmp_path, case, max_steps=6, save_steps=3, overwrite_output_dir=False)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    train(load_config(config_path, [f"output_dir={reference}"]))
    train(load_config(config_path, [f"output_dir={interrupted}"]), callbacks=[StopAt(3)])
    assert [entry["current_steps"] for entry in logged_steps(interrupted)] == [1, 2, 3]
    # What a checkpoint holds: the adapter alone for LoRA, the whole model for freeze.
    kept = "adapter_model.safetensors" if case.startswith("lora") else "model.safetensors"
    assert (interrupted / "checkpoint-3" / kept).is_file()
    train(load_config(config_path, [f"output_dir={interrupted}", "resume_from_checkpoint=true"]))

    resumed, expected = logged_steps(interrupted), logged_steps(reference)
    assert [entry["current_steps"] for entry in resumed] == list(range(1, 7))
    for ours, theirs in zip(resumed, expected, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5), ours["current_steps"]
    probe = np.load(GOLDEN_DIR / "lora_all_logits.npz")["input_ids"]
    np.testing.assert_allclose(
        probe_logits(reload_trained(case, interrupted), probe),
        probe_logits(reload_trained(case, reference), probe),
        atol=1e-5,
        rtol=0,
    )


def test_adapter_name_or_path_trains_that_adapter_or_a_new_one(tmp_path: Path) -> None:
    """As LLaMA-Factory: the last adapter is trained further with its own rank (``lora_rank`` does
    not apply to it); with ``create_new_adapter`` it is merged and a new one is created."""
    from safetensors.torch import load_file

    initial = initial_adapter(tmp_path)
    saved = load_file(initial / "adapter_model.safetensors")
    config_path = lora_yaml(tmp_path, max_steps=1, lora_rank=4)

    recorder = SetupRecorder()
    overrides = [f"adapter_name_or_path={initial}", f"output_dir={tmp_path / 'continued'}"]
    train(load_config(config_path, overrides), callbacks=[recorder])
    assert len(recorder.trainable) == len(saved)
    for entry in recorder.trainable:
        tensor = saved[entry["name"].replace(".default.", ".")]
        assert entry["shape"] == list(tensor.shape)  # rank 8, the adapter's own
        assert entry["initial_sha256"] == hashlib.sha256(tensor.numpy().tobytes()).hexdigest()

    recorder = SetupRecorder()
    overrides = [*overrides[:1], "create_new_adapter=true", f"output_dir={tmp_path / 'new'}"]
    train(load_config(config_path, overrides), callbacks=[recorder])
    lora_a = [entry for entry in recorder.trainable if "lora_A" in entry["name"]]
    assert lora_a and all(entry["shape"][0] == 4 for entry in lora_a)  # a new rank-4 adapter


def test_freeze_keys_follow_llamafactory_and_name_bad_modules(tmp_path: Path) -> None:
    recorder = SetupRecorder()
    config_path = lora_yaml(
        tmp_path,
        "freeze_last1",
        max_steps=1,
        freeze_trainable_layers=-1,
        freeze_trainable_modules="mlp",
        freeze_extra_modules="norm",
    )
    train(load_config(config_path, [f"output_dir={tmp_path / 'out'}"]), callbacks=[recorder])
    names = [entry["name"] for entry in recorder.trainable]
    # Layer 0's mlp, and every name holding "norm" (LLaMA-Factory's substring rule takes the layer norms too).
    assert {name for name in names if ".0.mlp." in name} == {
        f"model.layers.0.mlp.{part}_proj.weight" for part in ("gate", "up", "down")
    }
    assert "model.norm.weight" in names and "model.layers.1.input_layernorm.weight" in names
    assert not any("self_attn" in name or ".1.mlp." in name for name in names)

    with pytest.raises(
        ConfigError, match="freeze_trainable_modules: attn is not a module of the model's layers"
    ):
        train(load_config(config_path, [f"output_dir={tmp_path / 'bad'}", "freeze_trainable_modules=attn"]))


def export_yaml(tmp_path: Path, export_dir: Path) -> Path:
    """LLaMA-Factory's merge YAML (examples/merge_lora) for the committed fastsft adapter."""
    values = {
        "model_name_or_path": str(BASE_DIR),
        "adapter_name_or_path": str(ADAPTER_DIR / "lora_all"),
        "template": "qwen",
        "finetuning_type": "lora",
        "export_dir": str(export_dir),
        "export_size": 5,
        "export_device": "cpu",
        "export_legacy_format": False,
    }
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def test_export_merges_the_adapter_into_a_full_model_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastsft.cli import main

    merged = tmp_path / "merged"
    config_path = export_yaml(tmp_path, merged)
    assert main(["export", str(config_path)]) == 0
    # The merged model alone gives the logits LLaMA-Factory's loader gives base + adapter.
    llamafactory = np.load(LF_ADAPTER_LOGITS / "lora_all_lf_logits.npz")
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.dtype == torch.float32  # auto: the base's dtype (fp32 stays fp32 on a CPU)
    np.testing.assert_allclose(
        probe_logits(model, llamafactory["input_ids"]), llamafactory["logits"], atol=TOLERANCE, rtol=0
    )
    assert not (merged / "adapter_config.json").exists()
    assert (merged / "tokenizer_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.tmp-")]  # nothing staged is left

    # An existing export_dir is replaced only when asked, and only when fastsft wrote it.
    before = (merged / "model.safetensors").stat().st_mtime_ns
    assert main(["export", str(config_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (merged / "model.safetensors").stat().st_mtime_ns == before
    assert main(["export", str(config_path), "infer_dtype=bfloat16", "--overwrite"]) == 0
    assert AutoModelForCausalLM.from_pretrained(merged, dtype="auto").dtype == torch.bfloat16
    someone = tmp_path / "someone"
    someone.mkdir()
    (someone / "notes.txt").write_text("keep", encoding="utf-8")
    assert main(["export", str(config_path), f"export_dir={someone}", "--overwrite"]) == 2
    assert "is not a fastsft output" in capsys.readouterr().err
    assert (someone / "notes.txt").read_text(encoding="utf-8") == "keep"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("export_quantization_bit=4", "`export_quantization_bit` is not supported by fastsft export"),
        ("finetuning_type=full", "fastsft export merges LoRA adapters"),
        ("adapter_name_or_path=null", "no `adapter_name_or_path` given"),
        ("export_sise=5", "did you mean export_size"),
    ],
)
def test_export_refuses_what_it_cannot_do_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    from fastsft.cli import main

    assert main(["export", str(export_yaml(tmp_path, tmp_path / "merged")), override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "merged").exists()


def test_lora_on_the_random_init_example_saves_its_base_and_exports(tmp_path: Path) -> None:
    """The README's variant (``examples/tiny_sft.yaml finetuning_type=lora``) on a random-init
    ``model_config``: the base is saved beside the adapter, peft finds it, export merges both."""
    from peft import AutoPeftModelForCausalLM

    from fastsft.cli import main

    out = tmp_path / "out"
    tiny = REPO_ROOT / "examples" / "tiny_sft.yaml"
    overrides = ["finetuning_type=lora", f"output_dir={out}", "max_steps=2", "val_size=0", "eval_strategy=no"]
    train(load_config(tiny, [*overrides, "plot_loss=false", "max_samples=40"]))
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == str(out / "base_model")
    model = AutoPeftModelForCausalLM.from_pretrained(out)  # loads the base named in the adapter config
    probe = np.load(GOLDEN_DIR / "lora_all_logits.npz")["input_ids"]
    logits = probe_logits(model, probe)

    merge = tmp_path / "merge.yaml"
    values = {"model_name_or_path": str(out / "base_model"), "adapter_name_or_path": str(out)}
    merge.write_text(yaml.safe_dump({**values, "export_dir": str(tmp_path / "merged")}), encoding="utf-8")
    assert main(["export", str(merge)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    np.testing.assert_allclose(probe_logits(merged, probe), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["lora_all", "freeze_last1"])
def test_a_bf16_checkpoint_keeps_its_frozen_weights_in_bf16_and_trains_fp32(
    case: str, tmp_path: Path
) -> None:
    """As LLaMA-Factory: LoRA / freeze load the checkpoint's dtype and upcast only what trains."""
    base = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.bfloat16)
    base.save_pretrained(tmp_path / "bf16_base")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "bf16_base" / name).write_bytes((BASE_DIR / name).read_bytes())
    dtypes: dict[str, set[str]] = {"trainable": set(), "frozen": set()}

    class DtypeRecorder(TrainerCallback):
        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            for param in model.parameters():
                dtypes["trainable" if param.requires_grad else "frozen"].add(str(param.dtype))

    config_path = lora_yaml(tmp_path, case, model_name_or_path=str(tmp_path / "bf16_base"), max_steps=2)
    overrides = [f"output_dir={tmp_path / 'out'}", "bf16=true", "use_cpu=true"]  # CPU bf16 autocast
    train(load_config(config_path, overrides), callbacks=[DtypeRecorder()])
    assert dtypes == {"trainable": {"torch.float32"}, "frozen": {"torch.bfloat16"}}
    losses = [entry["loss"] for entry in logged_steps(tmp_path / "out")]
    assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora_target=qkv"], "lora_target ['qkv']: Target modules {'qkv'} not found in the base model"),
        (
            ["adapter_name_or_path=examples"],
            "adapter_name_or_path examples is a folder without adapter_config.json",
        ),
        (["finetuning_type=freeze", "freeze_trainable_layers=0"], "leaves no parameter to train"),
        (
            ["finetuning_type=freeze", "freeze_extra_modules=head"],
            "freeze_extra_modules: head is not a module",
        ),
    ],
)
def test_bad_lora_and_freeze_settings_fail_in_one_line(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    config_path = lora_yaml(tmp_path, max_steps=1)
    with pytest.raises(ConfigError) as info:
        train(load_config(config_path, [f"output_dir={tmp_path / 'out'}", *overrides]))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
