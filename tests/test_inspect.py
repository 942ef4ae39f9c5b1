"""``fastsft inspect``: trained spans, per-turn counts, truncation, dropped samples, packed rows, colors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fastsft.cli import main
from fastsft.data.data_args import DataArgs
from fastsft.inspection import BOLD, DIM, GREEN, RESET, highlight, inspect_dataset

PROMPT_1 = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n"
)
PROMPT_2 = "<|im_start|>user\n2+2=?<|im_end|>\n<|im_start|>assistant\n"


def sharegpt(*texts: Any) -> dict[str, Any]:
    roles = ("human", "gpt")
    return {"conversations": [{"from": roles[i % 2], "value": t} for i, t in enumerate(texts)]}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Dataset ``math``: the two-turn sum, a row LLaMA-Factory drops, a malformed row, a one-turn chat."""
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [
        sharegpt("1+1=?", "2", "2+2=?", "4"),
        sharegpt("a", "b", "c"),
        sharegpt("a", 5),
        sharegpt("x", "y"),
    ]
    (folder / "math.json").write_text(json.dumps(rows), encoding="utf-8")
    info = {"math": {"file_name": "math.json", "formatting": "sharegpt"}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def inspect(capsys, tokenizer: Path, data_dir: Path, *flags: Any) -> str:
    argv = ["inspect", "--dataset", "math", "--dataset-dir", data_dir, "--template", "qwen"]
    code = main([str(arg) for arg in [*argv, "--tokenizer", tokenizer, *flags]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_plain_text_brackets_trained_spans_and_counts_turns(
    capsys, data_dir, fixture_tokenizer_path, fixture_tokenizer
):
    out = inspect(capsys, fixture_tokenizer_path, data_dir, "-n", 1)
    assert "\x1b" not in out  # captured output is not a terminal
    prompt_1 = len(fixture_tokenizer.encode(PROMPT_1, add_special_tokens=False))
    prompt_2 = len(fixture_tokenizer.encode(PROMPT_2, add_special_tokens=False))
    assert f"== dataset math, sample #0: {prompt_1 + prompt_2 + 6} tokens, 6 trained\n" in out
    assert f"  turn 1: prompt {prompt_1} tokens, response 3 tokens\n" in out
    assert f"  turn 2: prompt {prompt_2} tokens, response 3 tokens\n" in out
    assert out.endswith(PROMPT_1 + "[[2<|im_end|>\n]]" + PROMPT_2 + "[[4<|im_end|>\n]]\n")
    assert "sample #1" not in out


def test_truncation_is_noted_per_turn(capsys, data_dir, fixture_tokenizer_path, fixture_tokenizer):
    prompt_1 = len(fixture_tokenizer.encode(PROMPT_1, add_special_tokens=False))
    out = inspect(capsys, fixture_tokenizer_path, data_dir, "-n", 1, "--cutoff-len", prompt_1 + 5)
    assert f"{prompt_1 + 5} tokens, 3 trained, truncated from {prompt_1 + 19}" in out
    assert "response 3 tokens  <- truncated: prompt cut to 2, response cut to 0" in out
    assert out.endswith("[[2<|im_end|>\n]]<|im_start|>user\n")

    out = inspect(capsys, fixture_tokenizer_path, data_dir, "-n", 1, "--cutoff-len", 10)
    assert "10 tokens, 3 trained, truncated from" in out
    assert ", 1 turn(s) cut entirely" in out
    assert f"turn 1: prompt {prompt_1} tokens, response 3 tokens  <- truncated: prompt cut to 7\n" in out
    assert "turn 2" not in out


def test_dropped_and_malformed_samples_say_why(capsys, data_dir, fixture_tokenizer_path):
    out = inspect(capsys, fixture_tokenizer_path, data_dir, "--index", 1, "-n", 3)
    lines = out.splitlines()
    assert (
        "== dataset math, sample #1: dropped (odd number of messages (3): every prompt needs a response)"
        in lines
    )
    assert (
        "== dataset math, sample #2: malformed: field 'conversations[1].value': expected a string, got int 5"
        in lines
    )
    assert any(line.startswith("== dataset math, sample #3: ") for line in lines)
    assert "sample #0" not in out
    assert out.endswith("[[y<|im_end|>\n]]\n")


@pytest.mark.parametrize(
    ("flags", "padding"),
    [(["--packing"], 12), (["--neat-packing"], 12), (["--packing", "--packing-strategy", "bfd"], 12)],
    ids=["llamafactory", "neat", "bfd"],
)
def test_saved_packed_rows_show_sequences_and_padding(
    capsys, tmp_path, data_dir, fixture_tokenizer_path, flags, padding
):
    """Samples of 64 and 44 tokens packed into a row of 120: two sequences, then 12 padding tokens."""
    output = tmp_path / "packed"
    argv = ["preprocess", "--dataset", "math", "--dataset-dir", data_dir, "--template", "qwen"]
    argv += ["--tokenizer", fixture_tokenizer_path, "--output", output, "--quiet", "--skip-malformed"]
    assert main([str(arg) for arg in [*argv, "--cutoff-len", 120, *flags]]) == 0
    capsys.readouterr()

    assert main(["inspect", "--data", str(output), "--tokenizer", str(fixture_tokenizer_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{output}: 1 rows, columns input_ids, ")
    assert f"== row #0: {108 + padding} tokens, 9 trained\n" in out
    first = out.index("  -- sequence 1: tokens 0..63 (64)\n")
    second = out.index("  -- sequence 2: tokens 64..107 (44)\n")
    assert first < out.index("[[2<|im_end|>\n]]") < out.index("[[4<|im_end|>\n]]") < second
    assert second < out.index("[[y<|im_end|>\n]]")
    assert "sequence 3" not in out
    assert ("  -- padding: 12 tokens" in out) == bool(padding)


def test_saved_unpacked_rows_are_highlighted(capsys, tmp_path, data_dir, fixture_tokenizer_path):
    output = tmp_path / "plain"
    argv = ["preprocess", "--dataset", "math", "--dataset-dir", data_dir, "--template", "qwen"]
    argv += ["--tokenizer", fixture_tokenizer_path, "--output", output, "--quiet", "--skip-malformed"]
    assert main([str(arg) for arg in argv]) == 0
    capsys.readouterr()
    assert (
        main(["inspect", "--data", str(output), "--tokenizer", str(fixture_tokenizer_path), "--index", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "== row #1: 44 tokens, 3 trained\n" in out
    assert out.endswith("[[y<|im_end|>\n]]\n")
    assert "row #0" not in out and "sequence" not in out


def test_colors_mark_trained_and_dim_prompt_spans(fixture_tokenizer):
    ids = fixture_tokenizer.encode("Q: 1+1?A: 2", add_special_tokens=False)
    answer = len(fixture_tokenizer.encode("A: 2", add_special_tokens=False))
    labels = [-100] * (len(ids) - answer) + ids[-answer:]
    colored = highlight(fixture_tokenizer, ids, labels, color=True)
    assert colored == f"{DIM}Q: 1+1?{RESET}{GREEN}A: 2{RESET}"
    assert highlight(fixture_tokenizer, ids, labels, color=False) == "Q: 1+1?[[A: 2]]"


def test_inspect_dataset_colors_headings_only_when_asked(
    data_dir, fixture_tokenizer_path, new_fixture_tokenizer
):
    options = DataArgs(dataset="math", dataset_dir=str(data_dir), template="qwen", backend="python")
    colored = inspect_dataset(options, new_fixture_tokenizer(), count=1, color=True)
    assert f"{BOLD}== dataset math, sample #0: " in colored
    assert f"{GREEN}2<|im_end|>\n{RESET}" in colored
    assert "[[" not in colored
    plain = inspect_dataset(options, new_fixture_tokenizer(), count=1, color=False)
    assert "\x1b" not in plain


def test_cli_colors_on_a_terminal_unless_no_color(capsys, monkeypatch, data_dir, fixture_tokenizer_path):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert GREEN in inspect(capsys, fixture_tokenizer_path, data_dir, "-n", 1)
    assert "\x1b" not in inspect(capsys, fixture_tokenizer_path, data_dir, "-n", 1, "--no-color")


def test_saved_data_needs_a_tokenizer(capsys, tmp_path):
    assert main(["inspect", "--data", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err == "fastsft inspect: error: --tokenizer is needed to decode a saved dataset\n"
    )
