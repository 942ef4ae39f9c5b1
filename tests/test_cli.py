"""``fastsft preprocess`` run in-process: output layout, config files, overwrite rules, summary,
workers, packing, and one-line errors that leave nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastsft.cli import main
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import build_dataset

SAMPLE_DATASETS = "sharegpt_chat,alpaca_mix,sharegpt_tools"


def sharegpt(*texts: Any, **extra: Any) -> dict[str, Any]:
    roles = ("human", "gpt")
    return {"conversations": [{"from": roles[i % 2], "value": t} for i, t in enumerate(texts)], **extra}


GOOD = sharegpt("1+1=?", "2")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A dataset folder with one good dataset and one per kind of bad input."""
    folder = tmp_path / "data"
    folder.mkdir()
    sharegpt_columns = {"messages": "conversations", "system": "system", "tools": "tools"}
    datasets = {
        "chat": [GOOD, sharegpt("2+2=?", "4")],
        "nofield": [GOOD, {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt"}]}],
        "nocolumn": [GOOD, {"dialog": [{"from": "human", "value": "x"}]}],
        "nonstr": [GOOD, sharegpt("a", ["b"])],
        "badtools": [GOOD, sharegpt("a", "b", tools="[{not json")],
        "badrole": [
            GOOD,
            {"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]},
        ],
        "mixed": [GOOD, sharegpt("a", "b", "c"), sharegpt("a", 5), GOOD, sharegpt("a", "b", tools="{")],
        # malformed for the template (sample #1), then for the converter (sample #5)
        "late": [GOOD, sharegpt("a", "b", tools="{"), GOOD, GOOD, GOOD, sharegpt("a", 5), GOOD],
    }
    info: dict[str, Any] = {}
    for name, rows in datasets.items():
        (folder / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
        info[name] = {"file_name": f"{name}.json", "formatting": "sharegpt", "columns": sharegpt_columns}
    (folder / "badjson.json").write_text(
        '[{"conversations": []},\n {"conversations": [}\n]', encoding="utf-8"
    )
    lines = [json.dumps(GOOD), json.dumps(GOOD), "{oops"]
    (folder / "badjsonl.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    info["badjson"] = {"file_name": "badjson.json", "formatting": "sharegpt"}
    info["badjsonl"] = {"file_name": "badjsonl.jsonl", "formatting": "sharegpt"}
    info["missing"] = {"file_name": "nope.json", "formatting": "sharegpt"}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def run_cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """``fastsft ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def preprocess(capsys, tokenizer: Path, dataset: str, dataset_dir: Path, output: Path, *flags: Any):
    return run_cli(
        capsys,
        "preprocess",
        "--dataset",
        dataset,
        "--dataset-dir",
        dataset_dir,
        "--template",
        "qwen",
        "--tokenizer",
        tokenizer,
        "--output",
        output,
        "--quiet",
        *flags,
    )


def load_train(path: Path) -> Any:
    from datasets import DatasetDict, load_from_disk

    saved = load_from_disk(str(path))
    assert isinstance(saved, DatasetDict)
    assert list(saved) == ["train"]
    return saved["train"]


def leftovers(folder: Path, output: Path) -> list[str]:
    """Temporary folders and lock files a run left beside ``output``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{output.name}."))


# --- end to end ---------------------------------------------------------------------------------


def test_preprocess_saves_what_build_dataset_builds(
    capsys, tmp_path, test_data_dir, fixture_tokenizer_path, new_fixture_tokenizer
):
    output = tmp_path / "out"
    code, out, err = preprocess(capsys, fixture_tokenizer_path, SAMPLE_DATASETS, test_data_dir, output)
    assert code == 0, err
    assert err == ""  # --quiet: no progress bars
    saved = load_train(output)
    args = DataArgs(dataset=SAMPLE_DATASETS, dataset_dir=str(test_data_dir), template="qwen")
    in_memory, _ = build_dataset(args, new_fixture_tokenizer())
    assert saved.features == in_memory.features
    assert saved.to_dict() == in_memory.to_dict()
    assert f"saved DatasetDict({{'train': {len(in_memory)} rows}}) to {output}" in out
    assert leftovers(tmp_path, output) == []


def test_each_input_file_is_opened_once_for_its_format_and_once_for_its_rows(
    capsys, tmp_path, fixture_tokenizer_path, monkeypatch
):
    """Datasets are resolved once per run: a plain-path file is read for its format once (its first
    row), then once for its rows, not again by each stage that needs the dataset list."""
    from fastsft.data.sources import parser as registry

    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("train.json", "eval.json"):
        (folder / name).write_text(json.dumps([GOOD, sharegpt("2+2=?", "4")]), encoding="utf-8")
    opened: list[str] = []
    original = registry._iter_json_file

    def counting(path: str, label: str) -> Any:
        opened.append(Path(path).name)
        return original(path, label)

    monkeypatch.setattr(registry, "_iter_json_file", counting)
    code, _, err = preprocess(
        capsys, fixture_tokenizer_path, "train.json", folder, tmp_path / "out", "--eval-dataset", "eval.json"
    )
    assert code == 0, err
    assert sorted(opened) == ["eval.json", "eval.json", "train.json", "train.json"]


def test_summary_lines_are_printed(
    capsys, tmp_path, test_data_dir, fixture_tokenizer_path, new_fixture_tokenizer
):
    code, out, _ = preprocess(
        capsys, fixture_tokenizer_path, SAMPLE_DATASETS, test_data_dir, tmp_path / "out", "--cutoff-len", 40
    )
    assert code == 0
    args = DataArgs(dataset=SAMPLE_DATASETS, dataset_dir=str(test_data_dir), template="qwen", cutoff_len=40)
    _, summary = build_dataset(args, new_fixture_tokenizer())
    assert summary.dropped > 0 and summary.truncated > 0
    assert (
        f"examples in: {summary.examples_in}  encoded: {summary.examples_encoded}  rows out: {summary.rows_out}"
        in out
    )
    assert f"dropped: {summary.dropped} (first: {summary.first_dropped})" in out
    assert f"truncated to cutoff_len: {summary.truncated}" in out
    assert f"tokens: {summary.tokens}  label tokens: {summary.label_tokens}  padding tokens: 0" in out
    time_line = next(line for line in out.splitlines() if line.startswith("time: "))
    assert " s  " in time_line and " examples/s  " in time_line and " tokens/s" in time_line
    # A few kB of text: fastsft's BPE, whose tables load in milliseconds (fastsft.tokenizer.encoders).
    assert "(encode: compiled, tokenizer: fastsft-bpe)" in time_line


def test_config_with_llamafactory_keys_and_flag_overrides(
    capsys, tmp_path, test_data_dir, fixture_tokenizer_path
):
    tokenized = tmp_path / "tokenized"
    config = {
        "model_name_or_path": str(fixture_tokenizer_path),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "sharegpt_chat, alpaca_mix",
        "dataset_dir": str(test_data_dir),
        "template": "qwen",
        "cutoff_len": 1024,
        "max_samples": 3,
        "overwrite_cache": True,
        "preprocessing_num_workers": 16,
        "tokenized_path": str(tokenized),
        "packing": False,
        "output_dir": str(tmp_path / "saves"),
        "learning_rate": 1.0e-5,
    }
    config_path = tmp_path / "sft.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    code, out, err = run_cli(capsys, "preprocess", "--config", config_path, "--quiet")
    assert code == 0, err
    from_config = load_train(tokenized)
    assert "examples in: 6" in out  # max_samples is per dataset, as in LLaMA-Factory
    assert max(len(ids) for ids in from_config["input_ids"]) > 16
    assert "position_ids" not in from_config.column_names

    overridden = tmp_path / "overridden"
    flags = ["--cutoff-len", 16, "--packing", "--max-samples", 1, "--output", overridden]
    code, out, err = run_cli(capsys, "preprocess", "--config", config_path, "--quiet", *flags)
    assert code == 0, err
    packed = load_train(overridden)
    assert "examples in: 2" in out
    assert all(len(ids) == 16 for ids in packed["input_ids"])
    assert "position_ids" in packed.column_names
    assert not (tmp_path / "saves").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset: [chat\ntemplate: qwen\n", "is not valid YAML: while parsing a flow sequence"),
        ("- chat\n", "must be a mapping of keys to values"),
        ("dataset: chat\ncutoff_len: 1k\n", "`cutoff_len` expects an integer, got '1k'"),
        ("dataset: chat\npacking: 'no'\n", "`packing` expects true or false or null, got 'no'"),
    ],
    ids=["invalid-yaml", "not-a-mapping", "not-an-integer", "not-a-bool"],
)
def test_bad_config_is_one_line(capsys, tmp_path, data_dir, fixture_tokenizer_path, text, message):
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(text, encoding="utf-8")
    output = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "preprocess",
        "--config",
        config_path,
        "--template",
        "qwen",
        "--dataset-dir",
        data_dir,
        "--tokenizer",
        fixture_tokenizer_path,
        "--output",
        output,
    )
    assert code == 2
    assert err.startswith("fastsft preprocess: error: ") and err.count("\n") == 1
    assert message in err
    assert not output.exists()


def test_existing_output_is_refused_without_overwrite(capsys, tmp_path, data_dir, fixture_tokenizer_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    code, _, err = preprocess(capsys, fixture_tokenizer_path, "chat", data_dir, output)
    assert code == 2
    assert (
        err == f"fastsft preprocess: error: output {output} already exists "
        "(pass --overwrite to replace a previous fastsft output)\n"
    )
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_a_previous_output(capsys, tmp_path, data_dir, fixture_tokenizer_path):
    output = tmp_path / "out"
    assert preprocess(capsys, fixture_tokenizer_path, "nonstr", data_dir, output, "--skip-malformed")[0] == 0
    assert len(load_train(output)) == 1
    code, _, err = preprocess(capsys, fixture_tokenizer_path, "chat", data_dir, output, "--overwrite")
    assert code == 0, err
    assert len(load_train(output)) == 2
    assert leftovers(tmp_path, output) == []


def test_overwrite_never_replaces_a_folder_fastsft_did_not_write(
    capsys, tmp_path, data_dir, fixture_tokenizer_path
):
    output = tmp_path / "out"
    output.mkdir()
    (output / "precious.txt").write_text("mine")
    code, _, err = preprocess(capsys, fixture_tokenizer_path, "chat", data_dir, output, "--overwrite")
    assert code == 2
    assert err == (
        f"fastsft preprocess: error: output {output} exists and is not a fastsft output "
        "(it has no fastsft_output.json); remove it yourself or choose another path\n"
    )
    assert [p.name for p in output.iterdir()] == ["precious.txt"]
    assert (output / "precious.txt").read_text() == "mine"


def test_failed_overwrite_keeps_the_previous_output(capsys, tmp_path, data_dir, fixture_tokenizer_path):
    output = tmp_path / "out"
    assert preprocess(capsys, fixture_tokenizer_path, "chat", data_dir, output)[0] == 0
    before = load_train(output).to_dict()
    code, _, err = preprocess(capsys, fixture_tokenizer_path, "nonstr", data_dir, output, "--overwrite")
    assert code == 2 and "sample #1" in err
    assert load_train(output).to_dict() == before
    assert leftovers(tmp_path, output) == []


@pytest.mark.parametrize("strategy", ["bfd", "llamafactory"])
def test_packed_rows_hold_every_sample_once(
    capsys, tmp_path, test_data_dir, fixture_tokenizer_path, new_fixture_tokenizer, strategy
):
    cutoff_len = 64
    output = tmp_path / "packed"
    flags = ["--packing", "--packing-strategy", strategy, "--cutoff-len", cutoff_len]
    code, _, err = preprocess(capsys, fixture_tokenizer_path, SAMPLE_DATASETS, test_data_dir, output, *flags)
    assert code == 0, err
    packed = load_train(output)

    # Packing truncates to cutoff_len - 1 (LLaMA-Factory), so the unpacked samples use that.
    args = DataArgs(
        dataset=SAMPLE_DATASETS, dataset_dir=str(test_data_dir), template="qwen", cutoff_len=cutoff_len - 1
    )
    samples, _ = build_dataset(args, new_fixture_tokenizer())
    expected = sorted((tuple(s["input_ids"]), tuple(s["labels"])) for s in samples)

    found = []
    for row in packed:
        ids, labels, positions = row["input_ids"], row["labels"], row["position_ids"]
        assert len(ids) <= cutoff_len
        assert len(ids) == cutoff_len  # bfd rows have LLaMA-Factory's row length too
        if strategy == "bfd":  # padding has attention_mask 0 (LLaMA-Factory's plain padding has 1)
            real = sum(row["attention_mask"])
            assert row["attention_mask"] == [1] * real + [0] * (len(ids) - real)
        starts = [i for i, p in enumerate(positions) if p == 0]
        for start, end in zip(starts, [*starts[1:], len(ids)]):
            assert positions[start:end] == list(range(end - start))
            found.append((tuple(ids[start:end]), tuple(labels[start:end])))
    # padding: single pad tokens at position 0, unlabelled
    pad = new_fixture_tokenizer().convert_tokens_to_ids("<|im_end|>")
    found = [seq for seq in found if seq != ((pad,), (-100,))]
    assert sorted(found) == expected


def test_max_samples_takes_the_first_rows_of_each_dataset(
    capsys, tmp_path, test_data_dir, fixture_tokenizer_path
):
    full, part = tmp_path / "full", tmp_path / "part"
    assert preprocess(capsys, fixture_tokenizer_path, "sharegpt_chat", test_data_dir, full)[0] == 0
    code, out, _ = preprocess(
        capsys, fixture_tokenizer_path, "sharegpt_chat", test_data_dir, part, "--max-samples", 3
    )
    assert code == 0
    assert "examples in: 3  encoded: 3  rows out: 3" in out
    assert load_train(part).to_dict() == load_train(full).select(range(3)).to_dict()


@pytest.fixture
def workers_pay_off(monkeypatch):
    """Worker processes as asked, even for tiny inputs on 2 cores (so that the pool path runs)."""
    from fastsft.data.rows import worker_count

    monkeypatch.setattr(worker_count, "available_cores", lambda: 4)
    monkeypatch.setattr(worker_count, "MIN_BYTES_PER_WORKER", 1)


def test_two_workers_give_the_same_output_as_one(
    capsys, tmp_path, test_data_dir, fixture_tokenizer_path, workers_pay_off
):
    results = []
    for workers in (1, 2):
        output = tmp_path / f"workers{workers}"
        flags = ["--workers", workers, "--preprocessing-batch-size", 2, "--cutoff-len", 48]
        code, out, err = preprocess(
            capsys, fixture_tokenizer_path, SAMPLE_DATASETS, test_data_dir, output, *flags
        )
        assert code == 0, err
        summary_lines = [
            line for line in out.splitlines() if not line.startswith(("time: ", "saved ", "encoding in "))
        ]
        assert ("encoding in 2 processes (preprocessing_num_workers: 2 is a ceiling)" in out) == (
            workers == 2
        )
        results.append((load_train(output).to_dict(), summary_lines))
    assert results[0] == results[1]


def test_workers_report_the_first_malformed_sample(
    capsys, tmp_path, data_dir, fixture_tokenizer_path, workers_pay_off
):
    """Workers encode while later batches are read: a later sample's error must not win over sample #1's."""
    first = "dataset late, sample #1, field 'tools': invalid JSON in tool description"
    for workers in (1, 2):
        flags = ["--workers", workers, "--preprocessing-batch-size", 2]
        output = tmp_path / f"skip{workers}"
        code, out, err = preprocess(
            capsys, fixture_tokenizer_path, "late", data_dir, output, "--skip-malformed", *flags
        )
        assert code == 0, err
        assert f"malformed, skipped: 2 (first: {first}" in out
        code, _, err = preprocess(
            capsys, fixture_tokenizer_path, "late", data_dir, tmp_path / f"fail{workers}", *flags
        )
        assert code == 2
        assert err.startswith(f"fastsft preprocess: error: {first}")


# --- bad input: one line on stderr, exit code 2, nothing written --------------------------------

BAD_INPUTS = {
    "missing-file": (["--dataset", "missing"], "dataset missing: file ", "nope.json not found"),
    "invalid-json": (["--dataset", "badjson"], "dataset badjson, line 2: invalid JSON"),
    "invalid-jsonl-line": (["--dataset", "badjsonl"], "dataset badjsonl, line 3: invalid JSON"),
    "unknown-dataset": (["--dataset", "chta"], "unknown dataset 'chta'", "closest: chat"),
    "missing-field": (
        ["--dataset", "nofield"],
        "dataset nofield, sample #1, field 'conversations[1]': message has no 'value' key",
    ),
    "missing-column": (
        ["--dataset", "nocolumn"],
        "dataset nocolumn, sample #1, field 'conversations': missing 'conversations'",
    ),
    "non-string-content": (
        ["--dataset", "nonstr"],
        "dataset nonstr, sample #1, field 'conversations[1].value': expected a string, got list",
    ),
    "invalid-tools-json": (
        ["--dataset", "badtools"],
        "dataset badtools, sample #1, field 'tools': invalid JSON in tool description",
    ),
    "unknown-role-strict": (
        ["--dataset", "badrole", "--strict"],
        "dataset badrole, sample #1: unknown role tag 'bot' in message 1",
    ),
    "mask-history-with-train-on-prompt": (
        ["--dataset", "chat", "--mask-history", "--train-on-prompt"],
        "`mask_history` is incompatible with `train_on_prompt`",
    ),
    "unknown-template": (
        ["--dataset", "chat", "--template", "qwn"],
        "unknown template 'qwn' (valid: aeva, alpaca, bailing, bailing_v2,",
    ),
    "no-tokenizer": (["--dataset", "chat", "--tokenizer", "no/such/folder"], "tokenizer folder not found"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, data_dir, fixture_tokenizer_path, case):
    flags, *expected = case
    output = tmp_path / "out"
    code, out, err = run_cli(
        capsys,
        "preprocess",
        "--dataset-dir",
        data_dir,
        "--template",
        "qwen",
        "--tokenizer",
        fixture_tokenizer_path,
        "--output",
        output,
        "--quiet",
        *flags,  # later flags win
    )
    assert code == 2
    assert err.startswith("fastsft preprocess: error: ")
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for part in expected:
        assert part in err
    assert out == ""
    assert not output.exists()
    assert leftovers(tmp_path, output) == []


def test_drops_and_malformed_are_reported_not_lost(capsys, tmp_path, data_dir, fixture_tokenizer_path):
    output = tmp_path / "out"
    code, _, err = preprocess(capsys, fixture_tokenizer_path, "mixed", data_dir, output)
    assert (code, err) == (
        2,
        "fastsft preprocess: error: dataset mixed, sample #2, field 'conversations[1].value': expected a string, got int 5\n",
    )

    code, out, err = preprocess(capsys, fixture_tokenizer_path, "mixed", data_dir, output, "--skip-malformed")
    assert code == 0, err
    assert "examples in: 5  encoded: 2  rows out: 2" in out
    assert "dropped: 1 (first: dataset mixed, sample #1: odd number of messages (3)" in out
    assert "malformed, skipped: 2 (first: dataset mixed, sample #2, field 'conversations[1].value'" in out
    assert len(load_train(output)) == 2

    code, _, err = preprocess(
        capsys, fixture_tokenizer_path, "mixed", data_dir, tmp_path / "strict", "--strict"
    )
    assert code == 2
    assert err.startswith("fastsft preprocess: error: dataset mixed, sample #1: odd number of messages (3)")


def test_missing_dataset_and_output_options(capsys, tmp_path, fixture_tokenizer_path):
    code, _, err = run_cli(capsys, "preprocess", "--template", "qwen", "--tokenizer", fixture_tokenizer_path)
    assert (code, err.strip()) == (
        2,
        "fastsft preprocess: error: no dataset given (use --dataset NAME_OR_FILE or `dataset:` in --config)",
    )
    code, _, err = run_cli(
        capsys, "preprocess", "--dataset", "x", "--template", "qwen", "--tokenizer", fixture_tokenizer_path
    )
    assert code == 2 and "no output folder given" in err


def test_module_entry_point_prints_help(repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "fastsft", "--help"], cwd=repo_root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for command in ("preprocess", "inspect", "train"):
        assert command in result.stdout


# --- outputs around inputs, and former tracebacks ------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("the dataset file", "is an input"),
        ("dataset_dir", "is an input"),
        ("inside dataset_dir", "lies inside an input folder"),
        ("around dataset_dir", "holds an input"),
        ("the tokenizer folder", "is an input"),
        ("the working directory", "is the working directory or holds it"),
    ],
)
def test_an_output_on_or_around_an_input_is_refused_and_the_input_kept(
    capsys, tmp_path, tmp_path_factory, monkeypatch, data_dir, fixture_tokenizer_path, where, message
):
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(fixture_tokenizer_path, tokenizer)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # outside tmp_path, which holds the inputs
    output = {
        "the dataset file": data_dir / "chat.json",
        "dataset_dir": data_dir,
        "inside dataset_dir": data_dir / "tokenized",
        "around dataset_dir": tmp_path,
        "the tokenizer folder": tokenizer,
        "the working directory": Path("."),
    }[where]
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    code, _, err = preprocess(capsys, tokenizer, "chat", data_dir, output, "--overwrite")
    assert code == 2
    assert err.startswith(f"fastsft preprocess: error: --output {output} {message}") and err.count("\n") == 1
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def test_a_folder_that_is_not_a_tokenizer_is_one_line(capsys, tmp_path, data_dir):
    not_a_tokenizer = tmp_path / "notes"
    not_a_tokenizer.mkdir()
    (not_a_tokenizer / "readme.txt").write_text("hello")
    code, _, err = preprocess(capsys, not_a_tokenizer, "chat", data_dir, tmp_path / "out")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"fastsft preprocess: error: cannot load a tokenizer from {not_a_tokenizer} ")


def test_inspect_of_a_missing_folder_is_one_line(capsys, tmp_path, fixture_tokenizer_path):
    code, _, err = run_cli(
        capsys, "inspect", "--data", tmp_path / "nope", "--tokenizer", fixture_tokenizer_path
    )
    assert code == 2
    assert (
        err
        == f"fastsft inspect: error: --data {tmp_path / 'nope'}: no such folder (give a folder written by fastsft preprocess)\n"
    )


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_a_file_with_a_byte_order_mark_reads_like_one_without(
    capsys, tmp_path, fixture_tokenizer_path, suffix
):
    rows = [GOOD, sharegpt("2+2=?", "4")]
    text = json.dumps(rows) if suffix == "json" else "\n".join(json.dumps(row) for row in rows) + "\n"
    outputs = {}
    folder = tmp_path / "data"
    folder.mkdir()
    for name, prefix in (("plain", b""), ("bom", b"\xef\xbb\xbf")):
        path = folder / f"{name}.{suffix}"
        path.write_bytes(prefix + text.encode("utf-8"))
        outputs[name] = tmp_path / f"out-{name}"
        code, _, err = preprocess(capsys, fixture_tokenizer_path, str(path), folder, outputs[name])
        assert code == 0, err
    assert load_train(outputs["bom"]).to_dict() == load_train(outputs["plain"]).to_dict()


def test_no_label_tokens_is_warned(capsys, tmp_path, data_dir, fixture_tokenizer_path):
    code, out, err = preprocess(
        capsys, fixture_tokenizer_path, "chat", data_dir, tmp_path / "out", "--cutoff-len", "1"
    )
    assert code == 0, err
    assert "warning: no label tokens: every response was truncated away or masked" in out
