"""Train LLaMA-Factory 0.9.5 on fastsft's preprocess outputs via ``tokenized_path``; record what reached the model.

For each of the five output layouts (unpacked, ``--packing``, ``--neat-packing`` and
``--packing-strategy bfd`` packed and neat), this runs LLaMA-Factory's own ``run_exp`` (its
``tokenized_path`` loading, SFT workflow, ``SFTDataCollatorWith4DAttentionMask`` and trainer) for
a few steps on the tiny random-init Qwen2 of ``examples/tiny/model/config.json``, with a forward
pre-hook on the model that records every batch: ``input_ids``, ``labels``, ``position_ids`` and
the attention mask (2-D, or for neat packing whether LLaMA-Factory's 4-D mask is block-diagonal
over the sequences its ``position_ids`` delimit). A layout LLaMA-Factory cannot train is
recorded with its one-line error. ``tests/test_recipes.py`` rebuilds the outputs with the
same commands, checks their fingerprints against this golden, and checks that every sequence
and token of the trained rows reached the model. LLaMA-Factory is not installed in CI; run this
with its interpreter from the repository root (the fastsft outputs are built by this
checkout's ``.venv``)::

    /work/venv-lf/bin/python scripts/make_lf_tokenized_path_golden.py
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_collator_goldens import hide_broken_media_packages

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "tests" / "data" / "lf_tokenized_path_golden.json"
FASTSFT = REPO / ".venv" / "bin" / "fastsft"
CUTOFF_LEN = 1024
ROWS_TRAINED = 4  # per layout: the first rows, so the CPU run stays within seconds
BATCH_SIZE = 2
# name -> fastsft preprocess flags (LLaMA-Factory's options follow from them)
LAYOUTS = {
    "unpacked": [],
    "packing": ["--packing"],
    "neat_packing": ["--neat-packing"],
    "bfd": ["--packing", "--packing-strategy", "bfd"],
    "neat_bfd": ["--neat-packing", "--packing-strategy", "bfd"],
}
PREPROCESS = [
    "preprocess",
    "--dataset",
    "tiny_sharegpt",
    "--dataset-dir",
    "examples/tiny/data",
    "--template",
    "qwen",
    "--tokenizer",
    "examples/tiny/tokenizer",
    "--cutoff-len",
    str(CUTOFF_LEN),
    "--quiet",
]


def fingerprint(rows: list[dict]) -> str:
    """sha256 of the trained rows' token columns (the CI test computes the same on its rebuild)."""
    digest = hashlib.sha256()
    for row in rows:
        for key in ("input_ids", "labels", "position_ids", "attention_mask"):
            digest.update(json.dumps(row.get(key)).encode())
    return digest.hexdigest()


def block_diagonal(mask_4d: torch.Tensor, position_ids: torch.Tensor) -> bool:
    """Whether a 4-D additive mask lets each token attend only to earlier tokens of its own sequence."""
    allowed = mask_4d[:, 0] == 0
    for row in range(allowed.size(0)):
        starts = (position_ids[row] == 0).long().cumsum(0)
        same = starts[:, None] == starts[None, :]
        causal = torch.ones_like(same).tril()
        if torch.any(allowed[row] & ~(same & causal)):
            return False
    return True


def record_forward(model: torch.nn.Module, seen: list[dict]) -> None:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        batch = {
            key: kwargs[key].tolist() for key in ("input_ids", "labels", "position_ids") if key in kwargs
        }
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            batch["block_diagonal_mask"] = block_diagonal(mask, kwargs["position_ids"])
        elif mask is not None:
            batch["attention_mask"] = mask.tolist()
        seen.append(batch)

    model.register_forward_pre_hook(hook, with_kwargs=True)


def run_layout(name: str, flags: list[str], model_dir: Path, work: Path) -> dict:
    from datasets import load_from_disk
    from llamafactory.train import tuner

    output = work / name
    subprocess.run([str(FASTSFT), *PREPROCESS, "--output", str(output), *flags], check=True, cwd=REPO)
    saved = load_from_disk(str(output))
    saved["train"] = saved["train"].select(range(ROWS_TRAINED))
    trimmed = work / f"{name}_rows"
    saved.save_to_disk(str(trimmed))
    rows = [dict(row) for row in saved["train"]]

    import llamafactory.train.sft.workflow as workflow

    seen: list[dict] = []
    original = workflow.load_model

    def load_and_record(*args, **kwargs):
        model = original(*args, **kwargs)
        record_forward(model, seen)
        return model

    workflow.load_model = load_and_record
    args = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "tiny_sharegpt",  # LLaMA-Factory asks for it; tokenized_path is what it loads
        "dataset_dir": str(REPO / "examples" / "tiny" / "data"),
        "tokenized_path": str(trimmed),
        "template": "qwen",
        "cutoff_len": CUTOFF_LEN,
        "packing": "--packing" in flags or "--neat-packing" in flags,
        "neat_packing": "--neat-packing" in flags,
        "output_dir": str(work / f"{name}_out"),
        "per_device_train_batch_size": BATCH_SIZE,
        "num_train_epochs": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "overwrite_output_dir": True,
        "seed": 0,
    }
    result = {"flags": flags, "rows_fingerprint": fingerprint(rows), "batch_size": BATCH_SIZE}
    try:
        tuner.run_exp(args)
        result["trained"] = True
    except Exception as err:  # a layout LLaMA-Factory cannot train is recorded, not hidden
        traceback.print_exc()
        result["trained"] = False
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    finally:
        workflow.load_model = original
    result["batches"] = seen
    return result


def main() -> None:
    hide_broken_media_packages()
    import llamafactory
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "tiny_model"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(REPO / "examples/tiny/model"))
        model.save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(REPO / "examples/tiny/tokenizer").save_pretrained(model_dir)
        layouts = {name: run_layout(name, flags, model_dir, work) for name, flags in LAYOUTS.items()}
    golden = {
        "made_by": "scripts/make_lf_tokenized_path_golden.py",
        "llamafactory": llamafactory.__version__,
        "transformers": transformers.__version__,
        "cutoff_len": CUTOFF_LEN,
        "rows_trained": ROWS_TRAINED,
        "layouts": layouts,
    }
    OUTPUT.write_text(json.dumps(golden) + "\n", encoding="utf-8")
    for name, layout in layouts.items():
        print(name, "trained" if layout["trained"] else layout["error"], len(layout["batches"]), "batches")


if __name__ == "__main__":
    main()
