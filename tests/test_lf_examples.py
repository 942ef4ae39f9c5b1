"""LLaMA-Factory 0.9.5's own example YAMLs (CPU copies in ``tests/data/lf_examples/``, each listing
its changes at the top) train with LLaMA-Factory's losses, packing included, and preprocess in
one process despite their ``preprocessing_num_workers: 16``.

The goldens in ``tests/goldens/lf_examples/`` come from ``scripts/make_lf_example_goldens.py``,
which ran ``llamafactory-cli train``'s code path on the same files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fastsft.cli import main
from fastsft.train.config import load_config
from fastsft.train.workflow import train

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = REPO_ROOT / "tests" / "data" / "lf_examples"
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens" / "lf_examples"
EXAMPLES = sorted(path.stem for path in EXAMPLE_DIR.glob("*.yaml"))
TOLERANCE = 1e-5
ONE_PROCESS = "encoding in 1 process (preprocessing_num_workers: 16 is a ceiling)"

pytestmark = pytest.mark.usefixtures("repo_cwd")


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN_DIR / f"{name}.json").read_text(encoding="utf-8"))


def logged_steps(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry]


def test_every_example_has_a_golden() -> None:
    assert EXAMPLES and sorted(path.stem for path in GOLDEN_DIR.glob("*.json")) == EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains_with_llamafactorys_losses(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fastsft train`` on the committed YAML, output paths in ``tmp_path`` (one CPU thread, as the
    goldens were made): every step's loss, grad norm and learning rate are LLaMA-Factory's."""
    overrides = [f"output_dir={tmp_path / 'output'}", "cpu_threads=1"]
    if "tokenized_path" in (EXAMPLE_DIR / f"{name}.yaml").read_text(encoding="utf-8"):
        overrides.append(f"tokenized_path={tmp_path / 'tokenized'}")
    config = load_config(EXAMPLE_DIR / f"{name}.yaml", overrides)
    train(config)
    expected = golden(name)["steps"]
    steps = logged_steps(tmp_path / "output")
    assert len(steps) == len(expected)
    for ours, theirs in zip(steps, expected, strict=True):
        for key in ("loss", "grad_norm", "learning_rate"):
            assert ours[key] == pytest.approx(theirs[key], abs=TOLERANCE), (name, theirs["step"], key)

    out = capsys.readouterr().out
    assert ONE_PROCESS in out
    if config.data.packing and not config.data.neat_packing:
        assert config.data.packing_notice() in out


def test_preprocess_config_writes_llamafactorys_tokenized_path_in_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fastsft preprocess --config qwen3_preprocess.yaml``: LLaMA-Factory's rows, in one process."""
    from datasets import load_from_disk

    output = tmp_path / "tokenized"
    config = EXAMPLE_DIR / "qwen3_preprocess.yaml"
    assert main(["preprocess", "--config", str(config), "--output", str(output), "--quiet"]) == 0
    assert ONE_PROCESS in capsys.readouterr().out
    digests = {}
    for split_name, split in load_from_disk(str(output)).items():
        digest = hashlib.sha256()
        for row in split:
            digest.update((json.dumps(row, sort_keys=True) + "\n").encode())
        digests[split_name] = digest.hexdigest()
    assert digests == golden("qwen3_preprocess")["tokenized_sha256"]
