"""Token-for-token parity with LLaMA-Factory 0.9.5 on the goldens made by ``scripts/make_goldens.py``.

Each golden file holds one case (tokenizer x template x options) and LLaMA-Factory's complete SFT
output for it. The parity tests rebuild the case with fastsft's pipeline on both encode backends;
the consistency tests check the goldens themselves and need nothing from fastsft.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fastsft import IGNORE_INDEX

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*/*.json.gz"))
MANIFEST_PATH = GOLDEN_DIR / "MANIFEST.json"
TOKEN_COLUMNS = ("input_ids", "attention_mask", "labels", "position_ids")
CASE_KEYS = (
    "dataset",
    "dataset_dir",
    "template",
    "cutoff_len",
    "train_on_prompt",
    "mask_history",
    "packing",
    "neat_packing",
    "preprocessing_batch_size",
    "enable_thinking",
    "tool_format",
    "default_system",
)
# Mixing and split keys: only the mix__ / split__ goldens hold them (the others use the defaults).
SPLIT_KEYS = ("mix_strategy", "interleave_probs", "val_size", "eval_dataset", "eval_on_each_dataset", "seed")
OPTIONAL_CASE_KEYS = ("preserve_thinking",)  # set by the cases that test it only
SPLIT_GOLDENS = [path for path in GOLDEN_FILES if path.name.startswith(("mix__", "split__"))]
CONTEXT_TOKENS = 12  # tokens shown on each side of the first difference
REAL_TOKENIZERS = ("qwen2", "llama3")  # outside the repository; their cases are slow (loading them)


def golden_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name.removesuffix('.json.gz')}"


# Parity runs on the real Qwen2 tokenizer cost ~2 s each, mostly loading it fresh: marked slow.
PARITY_PARAMS = [
    pytest.param(
        path, id=golden_id(path), marks=[pytest.mark.slow] if path.parent.name in REAL_TOKENIZERS else []
    )
    for path in GOLDEN_FILES
]


@functools.cache
def load_golden(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def load_manifest() -> dict[str, Any]:
    return json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def golden_tokenizer_path(golden: dict[str, Any], request: pytest.FixtureRequest) -> Path:
    """The tokenizer directory a golden was made with (the Qwen2 and Llama 3 ones skip when absent)."""
    fixture_name = {
        "fixture": "fixture_tokenizer_path",
        "qwen2": "qwen2_tokenizer_path",
        "llama3": "llama3_tokenizer_path",
    }.get(golden["tokenizer"])
    if fixture_name is None:
        raise AssertionError(f"unknown tokenizer {golden['tokenizer']!r} in golden {golden['case']}")
    return request.getfixturevalue(fixture_name)


def frozen_datetime(date_text: str) -> type[datetime]:
    """A ``datetime`` whose ``now()`` is the day the goldens' Llama 3 tool prompts were stamped with."""
    frozen = datetime.strptime(date_text, "%d %b %Y")

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return frozen

    return FrozenDatetime


# Per (golden, backend) run: columns (token ones as None) and features, for the feature test.
_NON_TOKEN_OUTPUTS: dict[tuple[Path, str], tuple[dict[str, Any], dict[str, Any]]] = {}


def golden_data_args(golden: dict[str, Any], backend: str, dataset: str | None = None) -> Any:
    """The ``DataArgs`` of a golden's case, LLaMA-Factory's rows (``packing_strategy: llamafactory``);
    ``dataset`` replaces its datasets."""
    from fastsft.data.data_args import DataArgs

    case = golden["args"]
    return DataArgs(
        dataset=dataset or case["dataset"],
        dataset_dir=str(REPO_ROOT / case["dataset_dir"]),
        template=case["template"],
        cutoff_len=case["cutoff_len"],
        train_on_prompt=case["train_on_prompt"],
        mask_history=case["mask_history"],
        packing=case["packing"],
        neat_packing=case["neat_packing"],
        preprocessing_batch_size=case["preprocessing_batch_size"],
        enable_thinking=case["enable_thinking"],
        tool_format=case["tool_format"],
        default_system=case["default_system"],
        packing_strategy="llamafactory",
        backend=backend,
        **{key: case[key] for key in (*SPLIT_KEYS, *OPTIONAL_CASE_KEYS) if key in case},
    )


def build_with_fastsft(
    path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, list[Any]], dict[str, Any], Any]:
    """Run fastsft's pipeline on a golden's case: (columns as lists, features dict, fixed tokenizer)."""
    golden = load_golden(path)
    tokenizer_path = golden_tokenizer_path(golden, request)
    if backend == "compiled":
        try:
            importlib.import_module("fastsft._core")
        except ImportError as err:
            pytest.skip(f"compiled backend unavailable: fastsft._core cannot be imported ({err})")

    from transformers import AutoTokenizer

    from fastsft.data.chat import tool_utils as tools
    from fastsft.data.pipeline import build_dataset

    monkeypatch.setattr(tools, "datetime", frozen_datetime(golden["llama3_tool_date"]))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    dataset, _summary = build_dataset(golden_data_args(golden, backend), tokenizer)
    columns, features = dataset.to_dict(), dataset.features.to_dict()
    # Token columns are the token test's job; only their names are kept for the feature test.
    _NON_TOKEN_OUTPUTS[(path, backend)] = (
        {name: None if name in TOKEN_COLUMNS else values for name, values in columns.items()},
        features,
    )
    return columns, features, tokenizer


def first_difference(expected: list[Any], actual: list[Any]) -> int:
    """Index of the first differing element (the shorter length when one is a prefix)."""
    for position, (want, got) in enumerate(zip(expected, actual)):
        if want != got:
            return position
    return min(len(expected), len(actual))


def decode_window(tokenizer: Any, ids: list[int], lo: int, hi: int, position: int) -> str:
    """``ids[lo:hi]`` decoded, with ``⟦`` marking ``position``."""
    before = tokenizer.decode(ids[lo:position], skip_special_tokens=False)
    after = tokenizer.decode(ids[position:hi], skip_special_tokens=False)
    return f"{before!r} ⟦ {after!r}"


def describe_mismatch(
    case_label: str,
    column: str,
    row: int,
    expected_columns: dict[str, list[Any]],
    actual_columns: dict[str, list[Any]],
    tokenizer: Any,
) -> str:
    expected, actual = expected_columns[column][row], actual_columns[column][row]
    position = first_difference(expected, actual)
    lo, hi = max(0, position - CONTEXT_TOKENS), position + CONTEXT_TOKENS
    expected_ids, actual_ids = expected_columns["input_ids"][row], actual_columns["input_ids"][row]
    return "\n".join(
        [
            f"{case_label}: column {column!r} row {row} first differs at position {position} "
            f"(LLaMA-Factory length {len(expected)}, fastsft length {len(actual)})",
            f"  LLaMA-Factory {column}[{lo}:{hi}] = {expected[lo:hi]}",
            f"  fastsft       {column}[{lo}:{hi}] = {actual[lo:hi]}",
            f"  LLaMA-Factory text: {decode_window(tokenizer, expected_ids, lo, hi, position)}",
            f"  fastsft       text: {decode_window(tokenizer, actual_ids, lo, hi, position)}",
        ]
    )


@pytest.mark.parametrize("backend", ["python", "compiled"])
@pytest.mark.parametrize("path", PARITY_PARAMS)
def test_golden_token_columns(
    path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every token column equals LLaMA-Factory's, row by row."""
    golden = load_golden(path)
    actual_columns, _features, tokenizer = build_with_fastsft(path, backend, request, monkeypatch)
    expected_columns = golden["rows"]
    label = f"{golden_id(path)} [{backend}]"

    expected_lengths = [len(ids) for ids in expected_columns["input_ids"]]
    actual_lengths = [len(ids) for ids in actual_columns.get("input_ids", [])]
    assert len(actual_lengths) == golden["num_rows"], (
        f"{label}: {len(actual_lengths)} rows, LLaMA-Factory has {golden['num_rows']}\n"
        f"  LLaMA-Factory row lengths: {expected_lengths}\n  fastsft row lengths:       {actual_lengths}"
    )
    for column in TOKEN_COLUMNS:
        if column not in expected_columns:
            continue
        assert column in actual_columns, f"{label}: fastsft output lacks column {column!r}"
        for row, (want, got) in enumerate(zip(expected_columns[column], actual_columns[column])):
            if want != got:
                pytest.fail(
                    describe_mismatch(label, column, row, expected_columns, actual_columns, tokenizer)
                )


@pytest.mark.parametrize("backend", ["python", "compiled"])
@pytest.mark.parametrize("path", PARITY_PARAMS)
def test_golden_columns_and_features(
    path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same column names, Arrow feature types and non-token values (packing_params, media) as LF.

    Reuses the run of ``test_golden_token_columns`` for the same case when there was one.
    """
    golden = load_golden(path)
    if (path, backend) not in _NON_TOKEN_OUTPUTS:
        build_with_fastsft(path, backend, request, monkeypatch)
    actual_columns, actual_features = _NON_TOKEN_OUTPUTS[(path, backend)]
    label = f"{golden_id(path)} [{backend}]"
    assert sorted(actual_columns) == sorted(golden["columns"]), f"{label}: columns differ"
    for column, feature in golden["features"].items():
        assert actual_features[column] == feature, (
            f"{label}: feature of {column!r} is {actual_features[column]}, LLaMA-Factory has {feature}"
        )
    for column in golden["columns"]:
        if column not in TOKEN_COLUMNS:
            assert actual_columns[column] == golden["rows"][column], f"{label}: values of {column!r} differ"


# --- consistency of the goldens themselves (no fastsft code involved) ---


def efficient_eos(template: str) -> bool:
    """Whether ``template`` uses efficient_eos (read from fastsft's table, which mirrors LF's)."""
    from fastsft.data.chat.registry import get_template

    return get_template(template).efficient_eos


def check_row(golden: dict[str, Any], row: int) -> None:
    """Invariants of one LLaMA-Factory output row."""
    args, rows, fixed = golden["args"], golden["rows"], golden["tokenizer_after_fix"]
    input_ids, labels, attention = rows["input_ids"][row], rows["labels"][row], rows["attention_mask"][row]
    where = f"{golden['tokenizer']}/{golden['case']} row {row}"
    assert len(input_ids) == len(labels) == len(attention), f"{where}: column lengths differ"
    assert all(0 <= token < fixed["num_tokens"] for token in input_ids), f"{where}: token id out of range"
    # efficient_eos templates label the first prompt token of each later turn with eos (LF's
    # supervised processor): the one label drawn from elsewhere.
    extra = {fixed["eos_token_id"]} if efficient_eos(args["template"]) else set()
    assert all(label in (IGNORE_INDEX, token, *extra) for label, token in zip(labels, input_ids)), (
        f"{where}: a label is neither -100 nor the input token at its position"
    )

    if not args["packing"]:
        assert "position_ids" not in rows, f"{where}: unpacked rows carry position_ids"
        assert 0 < len(input_ids) <= args["cutoff_len"], (
            f"{where}: length {len(input_ids)} exceeds cutoff_len"
        )
        assert set(attention) == {1}, f"{where}: attention_mask is not all ones"
        if args["train_on_prompt"]:
            assert labels == input_ids, f"{where}: train_on_prompt must label every token"
        return

    # Packed: LF packs into cutoff_len - 1 tokens and pads to exactly cutoff_len (at least one pad).
    positions = rows["position_ids"][row]
    assert len(input_ids) == len(positions) == args["cutoff_len"], f"{where}: packed row length"
    starts = {i for i, position in enumerate(positions) if position == 0}
    pad_start = len(input_ids) - 1
    while pad_start > 0 and positions[pad_start] == 0 and positions[pad_start - 1] == 0:
        pad_start -= 1  # trailing zeros after the last sequence are padding
    assert all(positions[i] == positions[i - 1] + 1 for i in range(1, pad_start) if i not in starts), (
        f"{where}: position_ids do not count up within a packed sequence"
    )
    padding = range(pad_start, len(input_ids))
    assert all(input_ids[i] == fixed["pad_token_id"] and labels[i] == IGNORE_INDEX for i in padding), (
        f"{where}: padding is not pad_token_id with ignored labels"
    )
    if args["neat_packing"]:
        params = rows["packing_params"][row]
        boundaries = params["sequence_boundaries"]
        assert boundaries[0] == 0 and boundaries[-1] == len(input_ids), f"{where}: sequence_boundaries span"
        assert params["right_padding_length"] == boundaries[-1] - boundaries[-2], f"{where}: right padding"
        for index, (begin, end) in enumerate(itertools.pairwise(boundaries[:-1])):
            assert set(attention[begin:end]) == {index + 1}, (
                f"{where}: neat attention_mask of sequence {index}"
            )
            assert positions[begin:end] == list(range(end - begin)), f"{where}: positions of sequence {index}"
        assert set(attention[boundaries[-2] :]) == {0}, f"{where}: neat padding attention must be 0"
    else:
        assert set(attention) == {1}, f"{where}: packed attention_mask is all ones (padding included)"


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=golden_id)
def test_golden_internal_consistency(path: Path) -> None:
    """Goldens are self-consistent: args complete, columns aligned, labels drawn from input_ids."""
    golden = load_golden(path)
    assert golden["case"] == path.name.removesuffix(".json.gz") and golden["tokenizer"] == path.parent.name
    extra_keys = set(golden["args"]) - set(CASE_KEYS) - set(OPTIONAL_CASE_KEYS)
    assert set(CASE_KEYS) <= set(golden["args"]) and extra_keys <= set(SPLIT_KEYS), sorted(golden["args"])
    assert not extra_keys or path in SPLIT_GOLDENS, f"{path.name} sets {sorted(extra_keys)}"
    assert golden["num_rows"] > 0
    assert set(golden["rows"]) == set(golden["columns"]) == set(golden["features"])
    assert {"input_ids", "attention_mask", "labels"} <= set(golden["columns"])
    assert all(len(values) == golden["num_rows"] for values in golden["rows"].values())
    fixed = golden["tokenizer_after_fix"]
    assert fixed["eos_token_id"] is not None and fixed["pad_token_id"] is not None
    if golden["tokenizer"] == "fixture":  # it has no pad token: LLaMA-Factory sets pad = eos
        assert fixed["pad_token_id"] == fixed["eos_token_id"]
    for row in range(golden["num_rows"]):
        check_row(golden, row)
    for split in golden.get("eval", {}).values():
        assert split["num_rows"] > 0 and set(split["rows"]) == set(golden["columns"])
        for row in range(split["num_rows"]):
            check_row({**golden, "rows": split["rows"]}, row)
    assert any(label != IGNORE_INDEX for labels in golden["rows"]["labels"] for label in labels), "no labels"


def test_manifest_lists_every_golden_with_its_hash() -> None:
    manifest = load_manifest()
    on_disk = {path.relative_to(GOLDEN_DIR).as_posix(): path for path in GOLDEN_FILES}
    assert set(manifest["files"]) == set(on_disk), "MANIFEST.json and tests/goldens disagree on the files"
    for name, path in on_disk.items():
        assert manifest["files"][name] == sha256_of(path), f"{name} changed since MANIFEST.json was written"
    total_bytes = sum(path.stat().st_size for path in GOLDEN_FILES)
    assert total_bytes < 10_000_000, f"goldens take {total_bytes} bytes"


def test_goldens_are_current_with_repo_inputs() -> None:
    """Sample data and fixture tokenizer are unchanged since the goldens were made."""
    stale = [
        key
        for key, digest in load_manifest()["inputs"].items()
        if key.startswith(("tests/", "examples/")) and sha256_of(REPO_ROOT / key) != digest
    ]
    assert not stale, f"inputs changed since the goldens were made: {stale}; rerun scripts/make_goldens.py"


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_goldens_match_the_local_real_tokenizers(name: str, request: pytest.FixtureRequest) -> None:
    """The Qwen2 / Llama 3 tokenizer found here is the one their goldens were made with."""
    path = request.getfixturevalue(f"{name}_tokenizer_path")
    recorded = {
        key: digest for key, digest in load_manifest()["inputs"].items() if key.startswith(f"{name}/")
    }
    assert recorded, f"MANIFEST.json records no {name} tokenizer files"
    differing = [key for key, digest in recorded.items() if sha256_of(path / key.split("/", 1)[1]) != digest]
    assert not differing, f"{name} tokenizer at {path} differs from the goldens' one: {differing}"


def test_every_template_has_goldens() -> None:
    """Each registered template has LLaMA-Factory goldens, or the manifest says LF fails on it."""
    from fastsft.data.chat.registry import TEMPLATE_NAMES

    with_goldens = {load_golden(path)["args"]["template"] for path in GOLDEN_FILES}
    lf_fails = {case.split("/")[1].split("__")[0] for case in load_manifest().get("lf_fails", {})}
    missing = sorted(set(TEMPLATE_NAMES) - with_goldens - lf_fails)
    assert not missing, f"templates without goldens: {missing}"


def _refused_cases() -> list[Any]:
    """One case per (tokenizer, template, dataset) that LLaMA-Factory refused while making a golden."""
    seen: dict[tuple[str, str, str], Any] = {}
    for path in GOLDEN_FILES:
        golden = load_golden(path)
        for dataset, lf_error in golden.get("lf_refuses", {}).items():
            if any(bug in lf_error for bug in LF_INTERNAL_FAILURES):
                continue
            key = (golden["tokenizer"], golden["args"]["template"], dataset)
            marks = [pytest.mark.slow] if golden["tokenizer"] in REAL_TOKENIZERS else []
            seen.setdefault(
                key, pytest.param(path, dataset, lf_error, id=f"{golden_id(path)}:{dataset}", marks=marks)
            )
    return list(seen.values())


# LLaMA-Factory failures that are its own bugs, not bad input: fastsft builds these samples.
# (Packing a val_size split: `datasets` fails concatenating the packed batches' Arrow tables.)
LF_INTERNAL_FAILURES = ("Schema and number of arrays unequal",)

# What fastsft's located error says for each kind of LLaMA-Factory failure.
LF_FAILURE_WORDS = {
    "GLM-4 does not support parallel functions": "GLM-4 does not support parallel functions",
    "Invalid JSON format in function message": "invalid JSON in function message",
    "'str' object has no attribute 'items'": "invalid function call",
}


@pytest.mark.parametrize("backend", ["python", "compiled"])
@pytest.mark.parametrize(("path", "dataset", "lf_error"), _refused_cases())
def test_what_llamafactory_refuses_is_a_located_error(
    path: Path, dataset: str, lf_error: str, backend: str, request: pytest.FixtureRequest
) -> None:
    """Where LLaMA-Factory raises (a traceback), fastsft raises one located line on both encode paths."""
    from transformers import AutoTokenizer

    from fastsft.data.pipeline import build_dataset
    from fastsft.errors import DataError

    golden = load_golden(path)
    tokenizer = AutoTokenizer.from_pretrained(
        str(golden_tokenizer_path(golden, request)), local_files_only=True
    )
    with pytest.raises(DataError) as raised:
        build_dataset(golden_data_args(golden, backend, dataset), tokenizer)
    error = raised.value
    assert error.dataset is not None and error.dataset.split("/")[0] == dataset
    assert error.index is not None and error.field is not None and "\n" not in str(error)
    words = [ours for theirs, ours in LF_FAILURE_WORDS.items() if theirs in lf_error]
    assert words, f"no expectation for LLaMA-Factory's failure {lf_error!r}; add it to LF_FAILURE_WORDS"
    assert words[0] in str(error)


# --- mixing and validation splits: every split of LLaMA-Factory's DatasetDict ---


def assert_rows_equal(label: str, expected: dict[str, list[Any]], actual: dict[str, list[Any]]) -> None:
    """The same rows, column by column (sample order included)."""
    assert len(actual["input_ids"]) == len(expected["input_ids"]), (
        f"{label}: {len(actual['input_ids'])} rows, LLaMA-Factory has {len(expected['input_ids'])}"
    )
    for column in TOKEN_COLUMNS:
        if column in expected:
            assert actual[column] == expected[column], f"{label}: column {column!r} differs"


def golden_splits(golden: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    return {
        "train": golden["rows"],
        **{name: split["rows"] for name, split in golden.get("eval", {}).items()},
    }


def test_split_goldens_cover_every_mix_strategy_and_eval_source() -> None:
    cases = [load_golden(path)["args"] for path in SPLIT_GOLDENS]
    assert {case["mix_strategy"] for case in cases} >= {"interleave_under", "interleave_over"}
    assert any(case["interleave_probs"] for case in cases) and any(case["val_size"] for case in cases)
    assert any(case["eval_on_each_dataset"] for case in cases) and any(case["packing"] for case in cases)
    # LLaMA-Factory 0.9.5 (datasets<=4.0.0) refuses interleave_once; fastsft refuses it too.
    refused = load_manifest()["lf_fails"]["fixture/mix__interleave_once"]
    assert "all_exhausted_without_replacement is not supported" in next(iter(refused.values()))


@pytest.mark.parametrize("backend", ["python", "compiled"])
@pytest.mark.parametrize("path", SPLIT_GOLDENS, ids=golden_id)
def test_golden_splits_build_alike(
    path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``build_dataset(split=...)`` gives LLaMA-Factory's rows of every split, in its sample order."""
    from transformers import AutoTokenizer

    from fastsft.data.pipeline import build_dataset
    from fastsft.data.sources.splitting import split_names

    if backend == "compiled":
        pytest.importorskip("fastsft._core")
    golden = load_golden(path)
    args = golden_data_args(golden, backend)
    expected = golden_splits(golden)
    assert split_names(args) == list(expected)
    tokenizer = AutoTokenizer.from_pretrained(
        str(golden_tokenizer_path(golden, request)), local_files_only=True
    )
    for name, rows in expected.items():
        dataset, _ = build_dataset(args, tokenizer, split=name)
        assert_rows_equal(f"{golden_id(path)} {name} [{backend}]", rows, dataset.to_dict())


@pytest.mark.parametrize("path", SPLIT_GOLDENS, ids=golden_id)
def test_golden_splits_preprocess_to_disk(path: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``fastsft preprocess`` saves LLaMA-Factory's ``DatasetDict`` (its ``tokenized_path`` layout)."""
    from datasets import load_from_disk

    from fastsft.cli import main

    golden = load_golden(path)
    case = {key: value for key, value in golden["args"].items() if value is not None}
    case["dataset_dir"] = str(REPO_ROOT / case["dataset_dir"])
    config = tmp_path / "lf.yaml"
    config.write_text(json.dumps({**case, "packing_strategy": "llamafactory"}), encoding="utf-8")
    output = tmp_path / "out"
    tokenizer = golden_tokenizer_path(golden, request)
    assert (
        main(
            [
                "preprocess",
                "--config",
                str(config),
                "--tokenizer",
                str(tokenizer),
                "--output",
                str(output),
                "--quiet",
            ]
        )
        == 0
    )
    saved = load_from_disk(str(output))
    expected = golden_splits(golden)
    assert list(saved) == list(expected)
    for name, rows in expected.items():
        assert_rows_equal(f"{golden_id(path)} {name} [preprocess]", rows, saved[name].to_dict())


@pytest.mark.parametrize("path", SPLIT_GOLDENS, ids=golden_id)
def test_golden_splits_through_fastsft_train(
    path: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``fastsft train``'s data step (``load_datasets``) gives LLaMA-Factory's splits too."""
    from transformers import AutoTokenizer, TrainingArguments

    from fastsft.train.config import config_from_mapping
    from fastsft.train.model import model_vocab_size
    from fastsft.train.workflow import load_datasets

    golden = load_golden(path)
    case = {key: value for key, value in golden["args"].items() if value is not None}
    case["dataset_dir"] = str(REPO_ROOT / case["dataset_dir"])
    tokenizer_path = str(golden_tokenizer_path(golden, request))
    config = config_from_mapping(
        {
            **case,
            "packing_strategy": "llamafactory",  # fastsft train packs best-fit-decreasing by default
            "model_config": str(REPO_ROOT / "examples" / "tiny" / "model" / "config.json"),
            "tokenizer_name_or_path": tokenizer_path,
            "output_dir": str(tmp_path / "out"),
            "attn": "varlen",
        }
    )
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    splits = load_datasets(config, tokenizer, training_args, model_vocab_size(config))
    expected = golden_splits(golden)
    assert list(splits) == list(expected)
    for name, rows in expected.items():
        assert_rows_equal(f"{golden_id(path)} {name} [train]", rows, splits[name].to_dict())
