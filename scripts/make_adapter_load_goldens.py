"""Goldens for "an adapter trained by fastsft loads in LLaMA-Factory": ``tests/goldens/train/fastsft_adapters/``.

Two steps, from the repository root, each in its own environment::

    .venv/bin/python scripts/make_adapter_load_goldens.py train     # fastsft's venv
    /work/venv-lf/bin/python scripts/make_adapter_load_goldens.py lf  # LLaMA-Factory 0.9.5's venv

and LLaMA-Factory's logits for the same adapters on the oldest transformers fastsft supports
(``.ci/oldest.txt`` installed over its venv)::

    pip install --no-deps --target /tmp/oldest -r .ci/oldest.txt
    PYTHONPATH=/tmp/oldest /work/venv-lf/bin/python scripts/make_adapter_load_goldens.py lf \
        tests/goldens/train_transformers4/fastsft_adapters

1. ``train``: ``fastsft train`` on the YAML of the LF training goldens ``lora_all`` and
   ``lora_dora`` (one CPU thread), and the saved adapters (``adapter_config.json``,
   ``adapter_model.safetensors``) copied to ``fastsft_adapters/<case>/``.
2. ``lf``: each committed adapter loaded by LLaMA-Factory's own loader, as
   ``llamafactory-cli export`` / ``chat`` load one (``get_infer_args`` then ``load_tokenizer`` and
   ``load_model(..., is_trainable=False)``, which merges the adapter into ``tiny_base``), and
   its logits on the training goldens' probe written to ``fastsft_adapters/<case>_lf_logits.npz``,
   with LLaMA-Factory's, peft's and transformers' versions in ``fastsft_adapters/lf_versions.json``.

``tests/test_train_lora.py`` checks that fastsft still trains those very adapters and that
peft's logits for them equal LLaMA-Factory's.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens" / "train"
ADAPTER_DIR = GOLDEN_DIR / "fastsft_adapters"
BASE_DIR = GOLDEN_DIR / "tiny_base"
CASES = ("lora_all", "lora_dora")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def train_adapters() -> None:
    """Train each case with ``fastsft train`` and keep its adapter."""
    import yaml

    from fastsft.train.config import load_config
    from fastsft.train.workflow import train

    for case in CASES:
        values = json.loads((GOLDEN_DIR / f"{case}.json").read_text(encoding="utf-8"))["yaml"]
        with tempfile.TemporaryDirectory() as work:
            config_path = Path(work) / "case.yaml"
            config_path.write_text(yaml.safe_dump(values), encoding="utf-8")
            output = Path(work) / "output"
            train(load_config(config_path, [f"output_dir={output}", "cpu_threads=1", "plot_loss=false"]))
            target = ADAPTER_DIR / case
            target.mkdir(parents=True, exist_ok=True)
            for name in ADAPTER_FILES:
                shutil.copyfile(output / name, target / name)
        print(f"{case}: adapter saved to {target.relative_to(REPO_ROOT)}")


def llamafactory_logits(output: Path = ADAPTER_DIR) -> None:
    """Load each committed adapter with LLaMA-Factory's loader and save its logits on the probe."""
    import numpy as np
    import torch
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    torch.set_num_threads(1)
    for case in CASES:
        probe = np.load(GOLDEN_DIR / f"{case}_logits.npz")["input_ids"]
        model_args, _, finetuning_args, _ = get_infer_args(
            {
                "model_name_or_path": str(BASE_DIR),
                "adapter_name_or_path": str(ADAPTER_DIR / case),
                "finetuning_type": "lora",
                "template": "qwen",
                "infer_dtype": "float32",
            }
        )
        tokenizer = load_tokenizer(model_args)["tokenizer"]
        model = load_model(tokenizer, model_args, finetuning_args, is_trainable=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(probe)[None], use_cache=False).logits.float().numpy()
        output.mkdir(parents=True, exist_ok=True)
        np.savez(output / f"{case}_lf_logits.npz", logits=logits, input_ids=probe)
        print(f"{case}: LLaMA-Factory loaded it as {type(model).__name__}; logits saved")
    import llamafactory
    import peft
    import transformers

    versions = {
        "llamafactory": llamafactory.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (output / "lf_versions.json").write_text(json.dumps(versions, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["train"]:
        train_adapters()
    elif sys.argv[1:2] == ["lf"] and len(sys.argv) <= 3:
        llamafactory_logits(*(Path(arg) for arg in sys.argv[2:]))
    else:
        sys.exit("usage: make_adapter_load_goldens.py train | lf [OUTPUT_DIR]")
