"""``streaming: true``: LLaMA-Factory 0.9.5's streamed order, loss parity with it, resume, bad input.

The goldens come from ``scripts/make_streaming_goldens.py`` (LLaMA-Factory's ``run_exp`` with
``streaming: true`` on the committed tiny base; ``datasets`` 4.0.0's own streamed orders).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastsft.data.sources.parser import resolve_datasets
from fastsft.data.streaming import SampleStream, StreamSpec
from fastsft.train.config import load_config
from fastsft.train.workflow import train

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens" / "train"
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("repo_cwd")


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN_DIR / f"{name}.json").read_text(encoding="utf-8"))


def conversation(text: str) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": f"q {text}"}, {"from": "gpt", "value": f"a {text}"}]}


@pytest.mark.parametrize("case", sorted(golden("streaming_orders")))
def test_sample_order_is_datasets(case: str, tmp_path: Path) -> None:
    """``SampleStream`` streams the samples in ``datasets`` 4.0.0's order, pass after pass, and a
    stream restored from its state at any sample continues with the same samples."""
    spec_values = golden("streaming_orders")[case]
    files = []
    for number, length in enumerate(spec_values["lengths"]):
        path = tmp_path / f"part{number}.json"
        path.write_text(json.dumps([conversation(f"{number}-{i}") for i in range(length)]))
        files.append(str(path))
    spec = StreamSpec(
        resolve_datasets(files, str(tmp_path)),
        str(tmp_path),
        buffer_size=spec_values["buffer_size"],
        seed=spec_values["seed"],
        skip=spec_values.get("skip", 0),
        take=spec_values.get("take"),
    )
    names = [attr.label for attr in spec.attrs]
    for epoch, expected in enumerate(spec_values["passes"]):
        stream = SampleStream(spec, epoch)
        got = [[names.index(attr.label), ref.index] for attr, ref, _ in stream]
        assert got == expected, f"pass {epoch}"
    stream = SampleStream(spec, 1)
    head = [next(stream) for _ in range(len(expected) // 3)]
    state = json.loads(json.dumps(stream.state()))  # as a checkpoint stores it
    rest = [[names.index(attr.label), ref.index] for attr, ref, _ in SampleStream(spec, 1, state)]
    assert [[names.index(a.label), r.index] for a, r, _ in head] + rest == spec_values["passes"][1]


def run_yaml(values: dict[str, Any], tmp_path: Path, *overrides: str, callbacks: list[Any] = ()) -> Path:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(values), encoding="utf-8")
    output_dir = tmp_path / "output"
    config = load_config(
        config_path, [f"output_dir={output_dir}", "cpu_threads=1", "plot_loss=false", *overrides]
    )
    train(config, callbacks=list(callbacks))
    return output_dir


def logged_steps(output_dir: Path) -> list[dict[str, Any]]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


@pytest.mark.parametrize("case", ["unpacked", "neat_packed"])
def test_losses_match_llamafactory(case: str, tmp_path: Path) -> None:
    """Every step's loss, grad norm and learning rate equal ``llamafactory-cli train``'s with
    ``streaming: true`` on the same YAML: the same samples, in the same order, packed alike."""
    reference = golden(f"streaming_{case}")
    steps = logged_steps(run_yaml(reference["yaml"], tmp_path))
    assert [s["step"] for s in steps] == [s["step"] for s in reference["steps"]]
    for mine, theirs in zip(steps, reference["steps"]):
        for key in ("loss", "grad_norm", "learning_rate"):
            assert mine[key] == pytest.approx(theirs[key], abs=TOLERANCE), (key, mine["step"])
