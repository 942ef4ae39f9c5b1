"""Dataset names → DatasetAttr (dataset_info.json or plain paths) and streaming rows from files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastsft.data.sources.converter import convert
from fastsft.data.sources.parser import DatasetAttr, iter_rows, resolve_datasets
from fastsft.errors import ConfigError, DataError

SHAREGPT_ROW = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
ALPACA_ROW = {"instruction": "q", "input": "", "output": "a"}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_info(dataset_dir: Path, info: dict[str, Any]) -> None:
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")


# --- dataset_info.json ----------------------------------------------------------------------------


def test_dataset_info_entry_with_columns_and_tags(tmp_path: Path) -> None:
    write_info(
        tmp_path,
        {
            "chat": {
                "file_name": "chat.json",
                "formatting": "openai",
                "columns": {"messages": "messages", "tools": "tools"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                },
            }
        },
    )
    [attr] = resolve_datasets("chat", str(tmp_path))
    assert (attr.name, attr.load_from, attr.dataset_name, attr.formatting) == (
        "chat",
        "file",
        "chat.json",
        "openai",
    )
    assert (attr.messages, attr.tools, attr.role_tag, attr.user_tag) == ("messages", "tools", "role", "user")
    # LLaMA-Factory's join: columns/tags not named in the entry become None, not their defaults.
    assert (attr.prompt, attr.system, attr.observation_tag, attr.system_tag) == (None, None, None, None)


def test_dataset_info_defaults_without_columns(tmp_path: Path) -> None:
    write_info(
        tmp_path, {"a": {"file_name": "a.json"}, "b": {"file_name": "b.jsonl", "formatting": "sharegpt"}}
    )
    a, b = resolve_datasets(" a , b ", str(tmp_path))
    assert (a.formatting, a.prompt, a.query, a.response) == ("alpaca", "instruction", "input", "output")
    assert (b.formatting, b.messages, b.role_tag, b.user_tag) == (
        "sharegpt",
        "conversations",
        "from",
        "human",
    )
    assert [attr.name for attr in resolve_datasets(["b", "a"], str(tmp_path))] == ["b", "a"]


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"hf_hub_url": "org/ds"}, "uses 'hf_hub_url': fastsft reads local files only"),
        ({"ms_hub_url": "org/ds"}, "fastsft reads local files only"),
        ({"script_url": "ds"}, "fastsft reads local files only"),
        ({"cloud_file_name": "s3://b/k"}, "fastsft reads local files only"),
        ({"formatting": "sharegpt"}, "has no 'file_name'"),
        ({"file_name": "x.json", "ranking": True}, "ranking"),
        (
            {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
            r"dataset 'ds' is a pretraining dataset \(its columns name no response; LLaMA-Factory trains it "
            r"with `stage: pt`",
        ),
        ({"file_name": "x.json", "num_samples": 10}, "num_samples"),
        ({"file_name": "x.json", "split": "test"}, "only the 'train' split"),
        ({"file_name": "x.json", "formatting": "chatml"}, "unknown formatting 'chatml'"),
        ("x.json", "must be a JSON object"),
    ],
)
def test_dataset_info_entries_refused(tmp_path: Path, entry: Any, match: str) -> None:
    write_info(tmp_path, {"ds": entry})
    with pytest.raises(ConfigError, match=match):
        resolve_datasets("ds", str(tmp_path))


def test_unknown_name_suggests_closest(tmp_path: Path) -> None:
    write_info(tmp_path, {"alpaca_en": {"file_name": "a.json"}, "sharegpt": {"file_name": "s.json"}})
    with pytest.raises(ConfigError) as info:
        resolve_datasets("alpaca_em", str(tmp_path))
    assert str(info.value) == (
        f"unknown dataset 'alpaca_em' (not in {tmp_path}/dataset_info.json, not a file); closest: alpaca_en"
    )


def test_missing_dataset_info_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=rf"unknown dataset 'x': .*{tmp_path}/dataset_info.json does not exist"
    ):
        resolve_datasets("x", str(tmp_path))
    with pytest.raises(ConfigError, match="no dataset_dir is given"):
        resolve_datasets("definitely_not_a_file_xyz", None)


def test_invalid_dataset_info(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot read .*dataset_info\.json"):
        resolve_datasets("x", str(tmp_path))


def test_empty_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty dataset name"):
        resolve_datasets("a,,b", str(tmp_path))


# --- plain paths and auto-detection ---------------------------------------------------------------


def test_plain_path_as_given_and_under_dataset_dir(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [SHAREGPT_ROW])
    [given] = resolve_datasets(str(path), None)
    [under] = resolve_datasets("chat.jsonl", str(tmp_path))  # no dataset_info.json needed
    for attr in (given, under):
        assert (attr.formatting, attr.messages, attr.dataset_name) == ("sharegpt", "conversations", str(path))
    assert under.name == "chat.jsonl"
    assert list(iter_rows(under)) == [SHAREGPT_ROW]


def test_dataset_info_entry_wins_over_a_path(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [SHAREGPT_ROW])
    write_info(tmp_path, {"data.jsonl": {"file_name": "data.jsonl"}})
    [attr] = resolve_datasets("data.jsonl", str(tmp_path))
    assert attr.formatting == "alpaca"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"conversations": [], "system": "s", "tools": "[]"},
            {"formatting": "sharegpt", "messages": "conversations", "system": "system", "tools": "tools"},
        ),
        (
            {"messages": [{"role": "user", "content": "q"}], "tools": []},
            {
                "formatting": "openai",
                "messages": "messages",
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "observation_tag": "tool",
                "system_tag": "system",
                "tools": "tools",
                "system": None,
            },
        ),
        (
            {"messages": [{"from": "human", "value": "q"}]},
            {"formatting": "sharegpt", "messages": "messages", "role_tag": "from", "tools": "tools"},
        ),
        (
            {"instruction": "q", "output": "a", "history": [], "system": "s"},
            {"formatting": "alpaca", "prompt": "instruction", "history": "history", "system": "system"},
        ),
        (
            {"instruction": "q", "output": "a"},
            {"formatting": "alpaca", "history": "history", "system": "system", "tools": "tools"},
        ),
    ],
)
def test_format_auto_detection(tmp_path: Path, row: dict[str, Any], expected: dict[str, Any]) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    [attr] = resolve_datasets(str(path), None)
    assert {key: getattr(attr, key) for key in expected} == expected


def test_plain_path_reads_optional_columns_first_seen_in_a_later_row(tmp_path: Path) -> None:
    rows = [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[]"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    [attr] = resolve_datasets(str(path), None)
    converted = [convert(row, attr) for row in iter_rows(attr, None)]
    assert [c.tools for c in converted] == [None, "[]"]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"text": "x"}], r"cannot detect the format from the first row's keys \['text'\]"),
        ([{"messages": []}], "cannot detect the format"),
        ([], "has no rows"),
    ],
)
def test_undetectable_plain_paths(tmp_path: Path, rows: list[Any], match: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ConfigError, match=match):
        resolve_datasets(str(path), None)


# --- reading rows ---------------------------------------------------------------------------------


def attr_for(path: Path) -> DatasetAttr:
    return DatasetAttr("file", str(path), name=path.name)


def test_jsonl_skips_blank_lines_and_streams(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": "二"}\n', encoding="utf-8")
    assert list(iter_rows(attr_for(path))) == [{"a": 1}, {"a": "二"}]


def test_jsonl_bad_line_reports_line_number(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n{"a": 3}\n', encoding="utf-8")
    rows = iter_rows(attr_for(path))
    assert next(rows) == {"a": 1}
    with pytest.raises(DataError) as info:
        next(rows)
    assert (info.value.dataset, info.value.line) == ("d.jsonl", 3)
    assert str(info.value).startswith("dataset d.jsonl, line 3: invalid JSON: ")


def test_jsonl_non_object_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n"just a string"\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: expected a JSON object, got str"):
        list(iter_rows(attr_for(path)))


def test_json_array_and_json_lines_in_a_json_file(tmp_path: Path) -> None:
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"a": 1}, {"a": 2}], indent=2), encoding="utf-8")
    assert list(iter_rows(attr_for(array))) == [{"a": 1}, {"a": 2}]
    lines = write_jsonl(tmp_path / "lines.json", [{"a": 1}, {"a": 2}])
    assert list(iter_rows(attr_for(lines))) == [{"a": 1}, {"a": 2}]


def test_json_array_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"a": 1},\n{"a": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match="line 3: invalid JSON"):
        list(iter_rows(attr_for(broken)))
    scalars = tmp_path / "scalars.json"
    scalars.write_text('[{"a": 1}, 2]', encoding="utf-8")
    with pytest.raises(DataError, match=r"sample #1: expected a JSON object, got int"):
        list(iter_rows(attr_for(scalars)))


def json_text_rows(path: Path) -> list[Any]:
    """What ``json`` reads from the file in text mode (utf-8-sig, universal newlines): the reading
    the orjson reader must reproduce."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# Documents orjson refuses or that take a special path: json accepts them all.
TRICKY_LINES = [
    '{"a": NaN, "b": Infinity, "c": -Infinity}',
    '{"a": 1e400}',
    '{"a": "lone surrogate \\ud800 here"}',
    '{"a": "dup", "a": "last wins"}',
    '{"a": 18446744073709551615, "b": -9223372036854775808, "c": 1.0000000000000002}',
    '{"a": "\\u0000 nul, \\u2028 line separator, \\ufeff"}',
    '  {"a": "padded"}  ',
]


@pytest.mark.parametrize(
    "layout", ["jsonl", "jsonl-crlf", "jsonl-lone-cr", "jsonl-bom", "array", "array-bom"]
)
def test_orjson_reader_reads_what_json_reads(tmp_path: Path, layout: str) -> None:
    if layout.startswith("array"):
        text = "[\n" + ",\n".join(TRICKY_LINES) + "\n]"
    else:
        text = {"jsonl-crlf": "\r\n", "jsonl-lone-cr": "\r"}.get(layout, "\n").join(TRICKY_LINES)
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\ufeff" if layout.endswith("bom") else "").encode() + text.encode("utf-8"))
    got, expected = list(iter_rows(attr_for(path))), json_text_rows(path)
    assert json.dumps(got) == json.dumps(expected)  # NaN != NaN: compare the serializations
    assert len(got) == len(TRICKY_LINES)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    lines = tmp_path / "d.jsonl"
    lines.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=r"dataset d.jsonl, line 3: not UTF-8 text"):
        list(iter_rows(attr_for(lines)))
    array = tmp_path / "a.json"
    array.write_bytes(b'[\n{"a": 1},\n{"a": "\xff"}\n]')
    with pytest.raises(DataError, match=r"dataset a.json, line 3: not UTF-8 text"):
        list(iter_rows(attr_for(array)))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    attr = DatasetAttr("file", "nope.jsonl", name="nope")
    with pytest.raises(DataError, match=f"dataset nope: file {tmp_path}/nope.jsonl not found"):
        iter_rows(attr, str(tmp_path))


def test_dataset_dir_is_joined_with_file_name(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x.jsonl", [{"a": 1}])
    write_info(tmp_path, {"x": {"file_name": "x.jsonl"}})
    [attr] = resolve_datasets("x", str(tmp_path))
    assert list(iter_rows(attr, str(tmp_path))) == [{"a": 1}]


def test_max_samples_truncates(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"i": i} for i in range(10)])
    assert [row["i"] for row in iter_rows(attr_for(path), max_samples=3)] == [0, 1, 2]
    assert len(list(iter_rows(attr_for(path), max_samples=100))) == 10


def test_folder_reads_files_sorted_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"i": 2}])
    write_jsonl(folder / "a.json", [{"i": 1}])
    (folder / "c.jsonl").write_text('{"i": 3}\n{bad\n', encoding="utf-8")
    rows = iter_rows(DatasetAttr("file", "parts", name="parts"), str(tmp_path))
    assert [next(rows)["i"] for _ in range(3)] == [1, 2, 3]
    with pytest.raises(DataError, match=r"dataset parts/c.jsonl, line 2: invalid JSON"):
        next(rows)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"a.jsonl": "{}\n", "b.csv": "x\n1\n"}, "file types in .* should be identical: b.csv is not json"),
        ({"a.txt": "hello\n"}, "allowed file types are arrow, csv, json, jsonl, parquet"),
        ({}, "is empty"),
    ],
)
def test_folder_rules(tmp_path: Path, files: dict[str, str], match: str) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        iter_rows(DatasetAttr("file", str(folder), name="parts"))


def test_parquet_and_csv_through_datasets(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "问", "output": "答"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert list(iter_rows(attr_for(tmp_path / "d.parquet"))) == rows
    [attr] = resolve_datasets(str(tmp_path / "d.parquet"), None)
    assert attr.formatting == "alpaca"

    (tmp_path / "d.csv").write_text("instruction,output\nq1,a1\n问,答\n", encoding="utf-8")
    assert list(iter_rows(attr_for(tmp_path / "d.csv"), max_samples=1)) == rows[:1]


def test_openai_rows_are_normalized_like_arrow(tmp_path: Path) -> None:
    # datasets gives every object at one place a single struct type: missing keys become None,
    # keys follow first appearance in the file, ints mixed with floats become floats.
    rows = [
        {"messages": [{"role": "user", "content": "q"}], "tools": [{"name": "a", "parameters": {"x": 1}}]},
        {
            "messages": [{"role": "user", "content": "q", "tool_calls": []}],
            "tools": [{"description": "d", "name": "b", "parameters": {"x": 1.5}}],
        },
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    attr = DatasetAttr("file", str(path), formatting="openai", messages="messages", tools="tools", name="d")
    assert list(iter_rows(attr)) == [
        {
            "messages": [{"role": "user", "content": "q", "tool_calls": None}],
            "tools": [{"name": "a", "parameters": {"x": 1.0}, "description": None}],
        },
        {
            "messages": [{"role": "user", "content": "q", "tool_calls": []}],
            "tools": [{"name": "b", "parameters": {"x": 1.5}, "description": "d"}],
        },
    ]
    assert list(next(iter_rows(attr))["tools"][0]) == ["name", "parameters", "description"]
    # other formats keep rows as written (Arrow changes nothing they tokenize)
    assert list(iter_rows(attr_for(path))) == rows


def test_openai_rows_with_conflicting_types(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"messages": [], "tools": "[]"}, {"messages": [], "tools": [{"name": "f"}]}]
    )
    attr = DatasetAttr("file", str(path), formatting="openai", messages="messages", tools="tools", name="d")
    with pytest.raises(DataError, match="dataset d: rows disagree on the type of a field"):
        list(iter_rows(attr))
