"""JSON array files read as a stream: the compiled scanner against its pure-Python reference, the
streamed rows against ``orjson.loads`` of the whole file, and errors exactly as the whole-file
reader gives them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsft.data.sources import parser as registry
from fastsft.data.sources.parser import DatasetAttr, iter_rows
from fastsft.errors import DataError
from fastsft.kernels import compiled, reference
from fastsft.kernels.types import SCAN_CLOSED, SCAN_INVALID, SCAN_MORE, SCAN_OPEN

# Text that stresses the scanner: quotes, backslashes, brackets and braces inside strings.
TRICKY_TEXT = st.text(
    alphabet=st.sampled_from(list('"\\[]{},: \n\tab\u00e9\u4e2d\U0001f600/'))
    | st.characters(exclude_categories=("Cs",)),
    max_size=12,
)
LEAVES = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | TRICKY_TEXT
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY_TEXT, inner, max_size=4),
    max_leaves=12,
)
OBJECTS = st.dictionaries(TRICKY_TEXT, VALUES, max_size=5)


def serialize(rows: list[Any], layout: str) -> bytes:
    if layout == "compact":
        return orjson.dumps(rows)
    if layout == "indented":
        return json.dumps(rows, indent=1, ensure_ascii=False).encode()
    if layout == "ascii":
        return json.dumps(rows, ensure_ascii=True).encode()
    return ("\r\n \t[ \n" + " ,\t\n".join(json.dumps(row) for row in rows) + "\n ]\n\t ").encode()


def read_rows(data: bytes, chunk: int) -> list[Any]:
    """``iter_rows`` of a file holding ``data``, read ``chunk`` bytes at a time."""
    original = registry._ARRAY_CHUNK
    registry._ARRAY_CHUNK = chunk
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "d.json")
        with open(path, "wb") as f:
            f.write(data)
        try:
            return list(iter_rows(DatasetAttr("file", path, name="d.json")))
        finally:
            registry._ARRAY_CHUNK = original


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(OBJECTS, max_size=8),
    layout=st.sampled_from(["compact", "indented", "ascii", "spaced"]),
    chunk=st.integers(1, 64),
    bom=st.booleans(),
)
def test_streamed_rows_are_the_whole_files_rows(rows, layout, chunk, bom):
    data = serialize(rows, layout)
    assert read_rows((b"\xef\xbb\xbf" if bom else b"") + data, chunk) == orjson.loads(data)


def scan_all(module: Any, data: bytes, cut: int) -> tuple[list[tuple[int, int]], int, int]:
    """Scan ``data`` given in two pieces (split at ``cut``): the spans found, in whole-buffer
    positions, and the final (pos, status)."""
    buf, offset, pos, state = data[:cut], 0, 0, SCAN_OPEN
    spans: list[tuple[int, int]] = []
    rest = data[cut:]
    while True:
        scan = module.scan_json_array(buf, pos, state)
        spans += [(offset + a, offset + b) for a, b in scan.spans]
        if scan.status != SCAN_MORE or not rest:
            return spans, offset + scan.pos, scan.status
        offset += scan.pos
        buf, pos, state, rest = buf[scan.pos :] + rest, 0, scan.state, b""


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(OBJECTS, max_size=6),
    layout=st.sampled_from(["compact", "indented", "spaced"]),
    cut=st.integers(0, 400),
    damage=st.one_of(st.none(), st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=3))),
)
def test_compiled_scanner_is_the_reference(rows, layout, cut, damage):
    data = serialize(rows, layout)
    if damage is not None:  # bytes replaced or the text cut short: the scanners must still agree
        at, replacement = damage
        data = data[:at] + replacement + data[at + len(replacement) :]
    expected = scan_all(reference, data, cut)
    assert scan_all(compiled, data, cut) == expected
    if damage is None:
        spans, pos, status = expected
        assert status == SCAN_CLOSED and data[pos:].strip() == b""
        assert [orjson.loads(data[a:b]) for a, b in spans] == rows


@pytest.mark.parametrize(
    ("data", "spans", "pos", "status"),
    [
        (b"[]", [], 2, SCAN_CLOSED),
        (b" \n[ \t]", [], 6, SCAN_CLOSED),
        (b'[{"a": "]}\\"{["}]', [(1, 16)], 17, SCAN_CLOSED),
        (b'[{"a": [1, {"b": []}]}, {}]', [(1, 22), (24, 26)], 27, SCAN_CLOSED),
        (b'[{"a": "x\\\\"}]', [(1, 13)], 14, SCAN_CLOSED),
        (b'[{"a": 1}', [(1, 9)], 9, SCAN_MORE),
        (b'[{"a": "}', [], 1, SCAN_MORE),  # truncated inside a string: resume at the element
        (b'[{"a": "\\', [], 1, SCAN_MORE),  # truncated after a backslash
        (b'[{"a": 1},]', [(1, 9)], 10, SCAN_INVALID),  # trailing comma
        (b"[,]", [], 1, SCAN_INVALID),
        (b'[{"a": 1} {"a": 2}]', [(1, 9)], 10, SCAN_INVALID),  # missing comma
        (b'[{"a": 1}, 2]', [(1, 9)], 11, SCAN_INVALID),  # not an object
        (b'{"a": 1}', [], 0, SCAN_INVALID),  # not an array
        (b"\x0c[]", [], 0, SCAN_INVALID),  # form feed is not JSON whitespace
    ],
)
def test_scanner_cases(data, spans, pos, status):
    for module in (compiled, reference):
        scan = module.scan_json_array(data, 0, SCAN_OPEN)
        assert (scan.spans, scan.pos, scan.status) == (spans, pos, status)


def whole_file_error(data: bytes) -> str:
    """The error the whole-file reader gives (the reader before streaming, kept as the fallback)."""
    with pytest.raises(DataError) as error:
        list(registry._json_array_rows(data.removeprefix(b"\xef\xbb\xbf"), "d.json"))
    return str(error.value)


@pytest.mark.parametrize(
    "data",
    [
        b'[\n{"a": 1},\n{"a": }\n]',  # a bad value inside an element
        b'[{"a": 1}, 2]',  # not an object
        b'[{"a": 1}, [{"a": 2}]]',  # a nested array is not an object either
        b'[{"a": 1},\n{"a": 2}',  # truncated after an element
        b'[{"a": 1},\n{"a": "tw',  # truncated inside a string
        b'[{"a": 1}]\n]',  # trailing garbage
        b'[{"a": 1}] x',
        b'[{"a": 1},]',  # trailing comma
        b'[{"a": 1} {"a": 2}]',  # missing comma
        b'[\n{"a": 1},\n{"a": "\xff"}\n]',  # not UTF-8
        b'\xef\xbb\xbf[{"a": 1}, {"a" 2}]',  # after a BOM
        b'[{"a": 1}, {"a": 1]}',  # brackets that do not match
    ],
)
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_errors_are_the_whole_file_readers(data, chunk):
    """Bad arrays fail with the whole-file reader's message (line or sample index), after the
    rows before the error; nothing is yielded twice."""
    expected = whole_file_error(data)
    rows: list[Any] = []
    with pytest.raises(DataError) as error:
        registry_chunk, registry._ARRAY_CHUNK = registry._ARRAY_CHUNK, chunk
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "d.json"
                path.write_bytes(data)
                for row in iter_rows(DatasetAttr("file", str(path), name="d.json")):
                    rows.append(row)
        finally:
            registry._ARRAY_CHUNK = registry_chunk
    assert str(error.value) == expected
    assert rows == [{"a": 1}, {"a": 2}][: len(rows)]


def test_elements_orjson_refuses_are_read_by_json_in_the_stream(monkeypatch):
    """NaN, infinities and lone surrogates are read as the whole-file reader reads them (``json``
    where orjson refuses), element by element, without falling back to it."""
    data = b'[{"a": NaN}, {"b": 1e400}, {"c": "\\ud800"}, {"d": -Infinity}]'

    def no_fallback(*args: Any) -> Iterator[Any]:
        raise AssertionError("fell back to the whole-file reader")

    expected = list(registry._json_array_rows(data, "d.json"))
    monkeypatch.setattr(registry, "_json_array_rows", no_fallback)
    got = read_rows(data, 8)
    assert json.dumps(got) == json.dumps(expected)  # NaN != NaN: compare the serializations


def test_the_first_row_is_read_without_the_rest(tmp_path):
    """Format detection of a plain-path array reads its first element only: a file whose tail is
    broken still resolves, and the break is reported when the rows are read."""
    path = tmp_path / "chat.json"
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    path.write_bytes(orjson.dumps([row] * 2)[:-1] + b" " * (4 << 20) + b"}")
    [attr] = registry.resolve_datasets(str(path), None)
    assert attr.formatting == "sharegpt"
    with pytest.raises(DataError, match=r"chat.json, line 1: invalid JSON"):
        list(iter_rows(attr))
