"""A lone surrogate (``"\\ud800"``, which ``json.load`` accepts and no tokenizer encodes) is bad input
like any other (issue 35): one line naming the dataset, sample and field on every encode path and
tokenizer backend and in ``fastsft inspect``, and ``--skip-malformed`` skips and counts that row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastsft.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = REPO_ROOT / "examples" / "tiny" / "tokenizer"
EXPECTED = (
    "dataset bad.json, sample #1, field 'conversations[2].value': not valid Unicode: '\\ud800' "
    "at character 4 (surrogates not allowed)"
)


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``bad.json`` in the working directory (so that messages name it as given): sample 1's
    third message holds the lone surrogate."""
    monkeypatch.chdir(tmp_path)
    rows = [
        {
            "conversations": [
                {"from": "human", "value": f"question {i} ünïcode"},
                {"from": "gpt", "value": f"answer {i}"},
                {"from": "human", "value": "again"},
                {"from": "gpt", "value": "more"},
            ]
        }
        for i in range(5)
    ]
    rows[1]["conversations"][2]["value"] = "bad \ud800 text"
    path = Path("bad.json")
    path.write_text(json.dumps(rows), encoding="utf-8")  # ensure_ascii: the \ud800 escape
    return path


def preprocess(dataset: Path, output: Path, *extra: str) -> int:
    return main(
        [
            "preprocess",
            *("--dataset", str(dataset), "--tokenizer", str(TOKENIZER), "--template", "qwen"),
            *("--output", str(output), "--quiet", *extra),
        ]
    )


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--backend", "python"],
        ["--tokenizer-backend", "hf"],
        ["--tokenizer-backend", "fast"],
        ["--workers", "2"],
    ],
    ids=lambda options: " ".join(options) or "default",
)
def test_a_lone_surrogate_is_one_line_naming_dataset_sample_and_field(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    assert preprocess(dataset, tmp_path / "out", *options) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == [f"fastsft preprocess: error: {EXPECTED}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options", [[], ["--backend", "python"]], ids=["compiled", "python"])
def test_skip_malformed_skips_and_counts_the_row(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    from datasets import load_from_disk

    assert main(["preprocess", *(
        "--dataset", str(dataset), "--tokenizer", str(TOKENIZER), "--template", "qwen",
        "--output", str(tmp_path / "out"), "--skip-malformed", *options,
    )]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"malformed, skipped: 1 (first: {EXPECTED})" in out, out
    assert len(load_from_disk(str(tmp_path / "out"))["train"]) == 4


def test_inspect_names_the_sample_and_shows_the_others(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "inspect",
        "--dataset",
        str(dataset),
        "--tokenizer",
        str(TOKENIZER),
        "--template",
        "qwen",
        "-n",
        "3",
    ]
    assert main(args) == 0
    headings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("== ")]
    assert len(headings) == 3
    assert headings[1] == (
        "== dataset bad.json, sample #1: malformed: field 'conversations[2].value': not valid Unicode: "
        "'\\ud800' at character 4 (surrogates not allowed)"
    )
