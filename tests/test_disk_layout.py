"""``build_to_disk`` writes what ``DatasetDict.save_to_disk`` writes, without importing ``datasets``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import build_dataset, build_to_disk
from fastsft.data.sources.splitting import plan_splits

SAMPLE_DATASETS = "sharegpt_chat,alpaca_mix,sharegpt_tools"

LAYOUTS = {
    "plain": {},
    "packed": {"packing": True, "cutoff_len": 64},
    "neat bfd": {"packing": True, "neat_packing": True, "packing_strategy": "bfd", "cutoff_len": 64},
    "validation split": {"val_size": 0.25},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_output_loads_as_save_to_disk_would_have_written_it(
    layout: str, tmp_path: Path, test_data_dir: Path, new_fixture_tokenizer: Any
) -> None:
    import datasets

    args = DataArgs(
        dataset=SAMPLE_DATASETS, dataset_dir=str(test_data_dir), template="qwen", **LAYOUTS[layout]
    )
    build_to_disk(args, new_fixture_tokenizer(), tmp_path / "ours")
    splits = {
        name: build_dataset(args, new_fixture_tokenizer(), source=source)[0]
        for name, source in plan_splits(args).items()
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "theirs"))

    ours, theirs = (
        datasets.load_from_disk(str(tmp_path / "ours")),
        datasets.load_from_disk(str(tmp_path / "theirs")),
    )
    assert list(ours) == list(theirs) == list(splits)
    for name in splits:
        assert ours[name].features == theirs[name].features
        assert ours[name].to_dict() == theirs[name].to_dict()
        assert ours[name].format == theirs[name].format
    names = sorted(str(p.relative_to(tmp_path / "theirs")) for p in (tmp_path / "theirs").rglob("*"))
    assert sorted(str(p.relative_to(tmp_path / "ours")) for p in (tmp_path / "ours").rglob("*")) == sorted(
        [*names, "fastsft_output.json"]
    )


def test_preprocess_imports_neither_torch_nor_datasets(
    tmp_path: Path, test_data_dir: Path, fixture_tokenizer_path: Path
) -> None:
    code = (
        "import sys\nfrom fastsft.cli import main\n"
        "assert main(sys.argv[1:]) == 0\n"
        "print(sorted({'torch', 'datasets'} & set(sys.modules)))\n"
    )
    env = {**os.environ, "FASTSFT_CACHE_DIR": str(tmp_path / "cache")}

    def imported(output: str) -> str:
        argv = [
            "preprocess",
            *("--dataset", SAMPLE_DATASETS, "--dataset-dir", str(test_data_dir)),
            *("--tokenizer", str(fixture_tokenizer_path), "--template", "qwen", "--quiet"),
            *("--output", str(tmp_path / output)),
        ]
        run = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip().splitlines()[-1]

    # The first load of a tokenizer folder goes through AutoTokenizer, which imports torch, and
    # remembers the class (fastsft.tokenizer.loader); later runs import neither.
    assert "datasets" not in imported("first")
    assert imported("second") == "[]"
