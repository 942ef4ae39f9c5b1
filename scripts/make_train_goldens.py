"""Generate LLaMA-Factory 0.9.5 training goldens (full, LoRA, freeze) into ``tests/goldens/train/``.

Run with the reference environment from the repository root::

    /work/venv-lf/bin/python scripts/make_train_goldens.py [--only GLOB] [--rebuild-base]

The same cases on the oldest transformers fastsft supports (transformers' numerics differ between
4.56 and 5 by ~1e-4 in these losses, for LLaMA-Factory and fastsft alike), into
``tests/goldens/train_transformers4/``, with ``.ci/oldest.txt`` installed over the reference venv::

    pip install --no-deps --target /tmp/oldest -r .ci/oldest.txt
    PYTHONPATH=/tmp/oldest /work/venv-lf/bin/python scripts/make_train_goldens.py \
        --output-dir tests/goldens/train_transformers4

What it does:

1. Builds the tiny base model once: a random-init ``Qwen2ForCausalLM`` from
   ``examples/tiny/model/config.json`` (``torch.manual_seed(BASE_SEED)``), saved with
   ``save_pretrained`` (safetensors) plus the tokenizer files of ``examples/tiny/tokenizer`` into
   ``tests/goldens/train/tiny_base/``. If the folder exists, the weights are rebuilt in memory and
   must equal the stored ones (else it stops, unless ``--rebuild-base``), so fastsft's tests and
   these goldens always use the very same weights.
2. Runs every case in a fresh process through ``llamafactory.train.tuner.run_exp(args=dict)``,
   which is what ``llamafactory-cli train case.yaml`` runs on a machine without GPUs (the launcher
   only goes through ``torchrun`` for several devices or ``FORCE_TORCHRUN``; ``read_args`` returns a
   dict unchanged where it would otherwise parse the YAML). A ``TrainerCallback`` passed to
   ``run_exp`` records the parameters after LLaMA-Factory's set-up (names, shapes, dtypes,
   ``requires_grad``, LLaMA-Factory's own ``count_parameters``, a checksum of each trainable tensor
   before the first step) and the trained model's logits in memory at ``on_train_end``.
3. Reads back what LLaMA-Factory saved: ``trainer_state.json``'s ``log_history`` (per-step
   ``loss``, ``grad_norm``, ``learning_rate``), the output file names, ``adapter_config.json``, and
   the logits on ``PROBE_TEXT`` of the model reloaded from disk (``PeftModel.from_pretrained`` on the
   base for LoRA, ``AutoModelForCausalLM.from_pretrained`` on the output folder for full/freeze).

Determinism: one CPU thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``),
``PYTHONHASHSEED=0``, no GPU visible, fixed seeds, an empty ``datasets`` cache per case.

Output: ``tests/goldens/train/<case>.json``, ``<case>_logits.npz`` (float32 ``logits``
``[1, len(probe), vocab]`` and ``input_ids``) and ``MANIFEST.json`` (versions, command, sha256).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens" / "train"
BASE_DIR = GOLDEN_DIR / "tiny_base"
TINY_CONFIG_DIR = REPO_ROOT / "examples" / "tiny" / "model"
TINY_TOKENIZER_DIR = REPO_ROOT / "examples" / "tiny" / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
FORMAT_VERSION = 1
BASE_SEED = 20241206
TRAIN_SEED = 42
# The probe the saved models' logits are taken on: a qwen-template prompt, cut to PROBE_TOKENS ids.
PROBE_TEXT = "<|im_start|>user\nWhat is the capital of Norway?<|im_end|>\n<|im_start|>assistant\nThe capital"
PROBE_TOKENS = 10

# Relative paths: the cases run from the repository root, so the stored YAMLs are portable.
COMMON_ARGS: dict[str, Any] = {
    "model_name_or_path": "tests/goldens/train/tiny_base",
    "stage": "sft",
    "do_train": True,
    "dataset": "tiny_sharegpt",
    "dataset_dir": "examples/tiny/data",
    "template": "qwen",
    "cutoff_len": 128,
    "max_samples": 64,
    "packing": False,
    "overwrite_cache": True,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "max_steps": 10,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 3,
    "logging_steps": 1,
    "seed": TRAIN_SEED,
    "report_to": "none",
    "overwrite_output_dir": True,
}
CASES: dict[str, dict[str, Any]] = {
    "full": {"finetuning_type": "full", "learning_rate": 1.0e-3},
    "lora_all": {"finetuning_type": "lora", "lora_target": "all", "learning_rate": 1.0e-2},
    "lora_qv_alpha32": {
        "finetuning_type": "lora",
        "lora_target": "q_proj,v_proj",
        "lora_alpha": 32,
        "learning_rate": 1.0e-2,
    },
    "lora_rslora": {
        "finetuning_type": "lora",
        "lora_target": "all",
        "use_rslora": True,
        "learning_rate": 1.0e-2,
    },
    "lora_dora": {"finetuning_type": "lora", "lora_target": "all", "use_dora": True, "learning_rate": 1.0e-2},
    "freeze_last1": {"finetuning_type": "freeze", "freeze_trainable_layers": 1, "learning_rate": 1.0e-3},
}
ADAPTER_CONFIG_KEYS = (
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "modules_to_save",
    "use_rslora",
    "use_dora",
    "bias",
    "init_lora_weights",
    "fan_in_fan_out",
    "base_model_name_or_path",
    "inference_mode",
)
OUTPUT_DIR_PLACEHOLDER = "<tmp>/output"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _deterministic_env() -> dict[str, str]:
    """The environment each LLaMA-Factory run gets: one thread, no GPU, fixed hashing, offline."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "PYTHONHASHSEED": "0",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def build_tiny_base(rebuild: bool) -> None:
    """Create (or check) the committed tiny base model the goldens and fastsft's tests share."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(BASE_SEED)
    model = Qwen2ForCausalLM(Qwen2Config.from_pretrained(TINY_CONFIG_DIR))
    if (BASE_DIR / "model.safetensors").exists() and not rebuild:
        stored = load_file(BASE_DIR / "model.safetensors")
        fresh = model.state_dict()
        different = [
            name
            for name, tensor in stored.items()
            if name not in fresh or not torch.equal(tensor, fresh[name])
        ]
        if different or len(stored) != len([n for n in fresh if n != "lm_head.weight"]):
            sys.exit(
                f"{BASE_DIR}: stored weights differ from a fresh build ({different[:3]}); use --rebuild-base"
            )
        return
    with tempfile.TemporaryDirectory(dir=GOLDEN_DIR) as staging:
        model.save_pretrained(staging)
        for name in TOKENIZER_FILES:
            shutil.copyfile(TINY_TOKENIZER_DIR / name, Path(staging) / name)
        if BASE_DIR.exists():
            shutil.rmtree(BASE_DIR)
        shutil.copytree(staging, BASE_DIR)
    BASE_DIR.chmod(0o755)  # the staging folder was private; the committed files are plain readable
    for path in BASE_DIR.iterdir():
        path.chmod(0o644)


def _param_report(model: Any) -> dict[str, Any]:
    """Trainable names/shapes/dtypes, dtype counts and LLaMA-Factory's own parameter count."""
    import torch
    from llamafactory.extras.misc import count_parameters

    trainable, frozen_dtypes = [], {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            data = param.detach().to(torch.float32).contiguous().numpy().tobytes()
            trainable.append(
                {
                    "name": name,
                    "shape": list(param.shape),
                    "dtype": str(param.dtype),
                    "initial_sha256": hashlib.sha256(data).hexdigest(),
                    "initial_sum": float(param.detach().double().sum()),
                }
            )
        else:
            frozen_dtypes[str(param.dtype)] = frozen_dtypes.get(str(param.dtype), 0) + param.numel()
    trainable_count, all_count = count_parameters(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "model_class": type(model).__name__,
        "trainable_params": trainable_count,
        "all_params": all_count,
        "trainable": trainable,
        "frozen_numel_by_dtype": frozen_dtypes,
        "gradient_checkpointing": bool(getattr(base, "is_gradient_checkpointing", False)),
        "input_embeddings_require_grad_hook": getattr(base, "_require_grads_hook", None) is not None,
        "config_use_cache": getattr(base.config, "use_cache", None),
        "training_mode": model.training,
    }


def _probe_ids() -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:PROBE_TOKENS]
    if len(ids) != PROBE_TOKENS:
        sys.exit(f"PROBE_TEXT gives {len(ids)} tokens, fewer than {PROBE_TOKENS}")
    return ids


def _logits(model: Any, ids: list[int]) -> Any:
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits.to(torch.float32).numpy()
    model.train(was_training)
    return logits


def run_worker(args_path: Path, report_path: Path) -> None:
    """Child process: run LLaMA-Factory's ``run_exp`` on one case with a recording callback."""
    import numpy as np
    import torch
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    lf_args = json.loads(args_path.read_text())
    probe = _probe_ids()
    report: dict[str, Any] = {}

    class Recorder(TrainerCallback):
        """Records the model as LLaMA-Factory set it up, and its logits when training ends."""

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            report["setup"] = _param_report(model)
            report["trainer_args"] = {
                "gradient_checkpointing": args.gradient_checkpointing,
                "gradient_checkpointing_kwargs": args.gradient_checkpointing_kwargs,
                "optim": str(args.optim),
                "adam_beta1": args.adam_beta1,
                "adam_beta2": args.adam_beta2,
                "adam_epsilon": args.adam_epsilon,
                "weight_decay": args.weight_decay,
                "max_grad_norm": args.max_grad_norm,
                "bf16": args.bf16,
                "fp16": args.fp16,
                "data_seed": args.data_seed,
                "ddp_find_unused_parameters": args.ddp_find_unused_parameters,
                "remove_unused_columns": args.remove_unused_columns,
            }

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            np.save(report_path.with_suffix(".npy"), _logits(model, probe))

    run_exp(args=lf_args, callbacks=[Recorder()])
    report_path.write_text(json.dumps(report))


def _load_trained(case_args: dict[str, Any], output_dir: Path) -> Any:
    """The model as a user reloads what LLaMA-Factory saved."""
    import torch
    from transformers import AutoModelForCausalLM

    if case_args["finetuning_type"] == "lora":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
        return PeftModel.from_pretrained(base, output_dir)
    return AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32)


def run_case(name: str, work_dir: Path, output: Path) -> None:
    """Run one case in a fresh process and write its golden JSON and logits."""
    import numpy as np

    case_args = {**COMMON_ARGS, **CASES[name]}
    output_dir = work_dir / "output"
    lf_args = {**case_args, "output_dir": str(output_dir)}
    args_path, report_path = work_dir / "args.json", work_dir / "report.json"
    args_path.write_text(json.dumps(lf_args))
    env = {**_deterministic_env(), "HF_DATASETS_CACHE": str(work_dir / "datasets_cache")}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(args_path), str(report_path)]
    log_path = work_dir / "train.log"
    with log_path.open("w") as log:
        status = subprocess.run(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        ).returncode
    if status != 0:
        sys.exit(
            f"case {name}: LLaMA-Factory run failed (exit {status}); log tail:\n{log_path.read_text()[-3000:]}"
        )

    report = json.loads(report_path.read_text())
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    steps = [
        {key: entry[key] for key in ("step", "epoch", "loss", "grad_norm", "learning_rate")}
        for entry in history
        if "loss" in entry
    ]
    summary = next(entry for entry in history if "train_loss" in entry)
    if [entry["step"] for entry in steps] != list(range(1, COMMON_ARGS["max_steps"] + 1)):
        sys.exit(f"case {name}: expected one log entry per step, got steps {[e['step'] for e in steps]}")

    adapter_config = None
    if (output_dir / "adapter_config.json").exists():
        stored = json.loads((output_dir / "adapter_config.json").read_text())
        adapter_config = {key: stored.get(key) for key in ADAPTER_CONFIG_KEYS}
        if isinstance(adapter_config["target_modules"], list):  # peft saves a set: order is hash-dependent
            adapter_config["target_modules"] = sorted(adapter_config["target_modules"])

    import torch

    torch.set_num_threads(1)
    probe = _probe_ids()
    reloaded = _logits(_load_trained(case_args, output_dir), probe)
    in_memory = np.load(report_path.with_suffix(".npy"))
    saved_tensors = None
    if (output_dir / "adapter_model.safetensors").exists():
        from safetensors import safe_open

        with safe_open(output_dir / "adapter_model.safetensors", "pt") as handle:
            saved_tensors = sorted(handle.keys())

    golden = {
        "format_version": FORMAT_VERSION,
        "case": name,
        "yaml": {**case_args, "output_dir": OUTPUT_DIR_PLACEHOLDER},
        "steps": steps,
        "train_loss": summary["train_loss"],
        "setup": report["setup"],
        "trainer_args": report["trainer_args"],
        "output_files": sorted(path.name for path in output_dir.iterdir()),
        "adapter_config": adapter_config,
        "adapter_tensor_names": saved_tensors,
        "probe": {"text": PROBE_TEXT, "input_ids": probe},
        "logits_file": f"{name}_logits.npz",
        # The trained model's logits in memory (on_train_end) against the reloaded ones: how much the
        # save/reload round trip changes the model; fastsft is compared with the reloaded logits.
        "in_memory_vs_reloaded_max_abs_diff": float(np.abs(in_memory - reloaded).max()),
    }
    (output / f"{name}.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(
        output / f"{name}_logits.npz", logits=reloaded.astype(np.float32), input_ids=np.array(probe)
    )


def write_manifest(cases: list[str], command: str, output: Path) -> None:
    """Record versions, the command and the sha256 of every golden and base file."""
    import datasets
    import llamafactory
    import peft
    import torch
    import transformers

    files = sorted(
        path.relative_to(output).as_posix()
        for path in output.rglob("*")
        if path.is_file() and path.name != "MANIFEST.json"
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "command": command,
        "versions": {
            "llamafactory": llamafactory.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
        },
        "base_seed": BASE_SEED,
        "train_seed": TRAIN_SEED,
        "cases": cases,
        "sha256": {name: _sha256(output / name) for name in files},
    }
    (output / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="*", help="glob over case names")
    parser.add_argument("--rebuild-base", action="store_true", help="rewrite tests/goldens/train/tiny_base")
    parser.add_argument("--output-dir", type=Path, default=GOLDEN_DIR, help="where the cases go")
    parser.add_argument("--worker", nargs=2, metavar=("ARGS_JSON", "REPORT_JSON"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        run_worker(Path(options.worker[0]), Path(options.worker[1]))
        return
    if Path.cwd().resolve() != REPO_ROOT:
        sys.exit(f"run from the repository root {REPO_ROOT}")
    os.environ.update({"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    options.output_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_base(options.rebuild_base)
    selected = [name for name in CASES if fnmatch.fnmatch(name, options.only)]
    if not selected:
        sys.exit(f"no case matches {options.only!r}; cases: {', '.join(CASES)}")
    for name in selected:
        print(f"case {name} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"lf_train_{name}_") as work_dir:
            run_case(name, Path(work_dir), options.output_dir)
    write_manifest(sorted(CASES), " ".join([Path(sys.executable).as_posix(), *sys.argv]), options.output_dir)


if __name__ == "__main__":
    main()
