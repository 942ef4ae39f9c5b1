"""``fastsft train``'s output files against the ones LLaMA-Factory 0.9.5 itself writes for the same YAML
(``tests/goldens/train/lf_outputs.json``, from ``scripts/make_lf_outputs_golden.py``): the
``trainer_log.jsonl`` fields, ``all_results.json`` / ``train_results.json`` / ``eval_results.json``, the
plot names, the warning when nothing was logged, and the token count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import transformers
import yaml

from fastsft.train.config import load_config
from fastsft.train.workflow import train

REPO_ROOT = Path(__file__).resolve().parent.parent
# LLaMA-Factory's files on the installed transformers' major version (4.56 logs the loss rounded and
# evaluates at the last step only on eval_steps; their losses differ by ~1e-4).
GOLDEN_DIR = "train" if int(transformers.__version__.split(".")[0]) >= 5 else "train_transformers4"
GOLDEN = json.loads(
    (REPO_ROOT / "tests" / "goldens" / GOLDEN_DIR / "lf_outputs.json").read_text(encoding="utf-8")
)
# The token counts: non-padding tokens (fastsft's count) as transformers 5 counts them for
# LLaMA-Factory (`include_num_input_tokens_seen: non_padding`); 4.56 can only count padding too.
NON_PADDING = json.loads(
    (REPO_ROOT / "tests" / "goldens" / "train" / "lf_outputs.json").read_text(encoding="utf-8")
)
TOLERANCE = 1e-5
# Keys fastsft refuses because it sets them itself (it always counts non-padding tokens, as here).
FASTSFT_SETS = ("include_num_input_tokens_seen",)
RESULT_VALUES = ("epoch", "train_loss", "eval_loss")

pytestmark = pytest.mark.usefixtures("repo_cwd")


def kind(entry: dict[str, Any]) -> str:
    return "loss" if "loss" in entry else "eval" if "eval_loss" in entry else "summary"


@pytest.mark.parametrize("name", sorted(GOLDEN["cases"]))
def test_output_files_are_llamafactorys(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = GOLDEN["cases"][name]
    tokens = NON_PADDING["cases"][name]
    tokens_at = {entry["current_steps"]: entry["total_tokens"] for entry in tokens["trainer_log"]}
    values = {key: value for key, value in case["yaml"].items() if key not in FASTSFT_SETS}
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(values), encoding="utf-8")
    out = tmp_path / "output"
    metrics = train(load_config(config_path, [f"output_dir={out}", "cpu_threads=1"]))
    printed = capsys.readouterr().out

    # trainer_log.jsonl: LLaMA-Factory's lines, with its fields and values (fastsft's extra fields stay).
    ours = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    theirs = case["trainer_log"]
    assert [(e["current_steps"], kind(e)) for e in ours] == [(e["current_steps"], kind(e)) for e in theirs]
    for mine, lf in zip(ours, theirs, strict=True):
        assert lf.keys() <= mine.keys(), (mine["current_steps"], lf.keys() - mine.keys())
        assert list(mine)[: len(lf)] == [
            key for key in LF_ORDER if key in lf
        ]  # LF's fields first, in LF's order
        for key in ("current_steps", "total_steps", "percentage"):
            assert mine[key] == lf[key], key
        assert mine["total_tokens"] == tokens_at[mine["current_steps"]]
        for key in ("loss", "eval_loss", "lr", "epoch"):
            if key in lf:
                assert mine[key] == pytest.approx(lf[key], abs=TOLERANCE), (mine["current_steps"], key)

    # The *_results.json files: LLaMA-Factory's, with its keys (fastsft adds train_tokens_per_second).
    for file, lf in case["results"].items():
        mine = json.loads((out / file).read_text(encoding="utf-8"))
        assert lf.keys() <= mine.keys(), (file, lf.keys() - mine.keys())
        for key in RESULT_VALUES:
            if key in lf:
                assert mine[key] == pytest.approx(lf[key], abs=TOLERANCE), (file, key)
        assert mine["num_input_tokens_seen"] == tokens["num_input_tokens_seen"], file
    assert not (out / "eval_results.json").exists() or "eval_results.json" in case["results"]

    # Every step's tokens count, the steps after the last log included.
    assert metrics["num_input_tokens_seen"] == tokens["num_input_tokens_seen"]
    assert metrics["train_tokens_per_second"] > 0

    # The plots LLaMA-Factory writes, and its warning where there was nothing to plot.
    for key in ("loss", "eval_loss"):
        plotted = f"training_{key}.png" in case["output_files"]
        assert (out / f"training_{key}.png").is_file() == plotted, key
        warned = f"No metric {key} to plot." in case["plot_warnings"]
        evaluates = "eval_strategy" in case["yaml"]
        assert (f"No metric {key} to plot" in printed) == (warned and (key == "loss" or evaluates)), key


LF_ORDER = (
    "current_steps", "total_steps", "loss", "eval_loss", "predict_loss", "reward", "accuracy", "lr", "epoch",
    "percentage", "elapsed_time", "remaining_time", "throughput", "total_tokens",
)  # fmt: skip
