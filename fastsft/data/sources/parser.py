"""Which files a dataset name means, and their rows.

Names resolve like LLaMA-Factory 0.9.5's ``parser.get_dataset_list``: a key of
``<dataset_dir>/dataset_info.json`` with its ``file_name``, ``formatting``, ``columns`` and
``tags``. fastsft also accepts a plain file or folder path, whose format it detects from the
first row. Only local files are read: hub, script and cloud entries are refused.

``iter_rows`` streams ``.json``/``.jsonl`` with its own reader (so a bad line is reported with
its line number) and reads ``.parquet``/``.arrow``/``.csv`` through ``datasets``, as LLaMA-Factory does.
OpenAI-format JSON rows are passed through Arrow first (see ``_arrow_normalized``), because there
the normalization ``datasets`` applies changes the text LLaMA-Factory tokenizes.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import orjson

from fastsft.data.data_args import dataset_names
from fastsft.errors import ConfigError, DataError
from fastsft.kernels.types import SCAN_CLOSED, SCAN_MORE, SCAN_OPEN

__all__ = ["DatasetAttr", "count_rows", "input_bytes", "input_paths", "iter_rows", "resolve_datasets"]

DATA_CONFIG = "dataset_info.json"

FILEEXT2TYPE = {
    "arrow": "arrow",
    "csv": "csv",
    "json": "json",
    "jsonl": "json",
    "parquet": "parquet",
    "txt": "text",
}
"""LLaMA-Factory's extension → ``datasets`` builder map; ``text`` is refused (no SFT columns)."""

FORMATTINGS = ("alpaca", "sharegpt", "openai")

_REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


@dataclass
class DatasetAttr:
    """Dataset attributes, as LLaMA-Factory's ``DatasetAttr``, plus ``name`` for messages."""

    # basic configs
    load_from: Literal["hf_hub", "ms_hub", "om_hub", "script", "file"]
    dataset_name: str
    formatting: Literal["alpaca", "sharegpt", "openai"] = "alpaca"
    ranking: bool = False
    # extra configs
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    # common columns
    system: str | None = None
    tools: str | None = None
    images: str | None = None
    videos: str | None = None
    audios: str | None = None
    # dpo columns
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None
    # alpaca columns
    prompt: str | None = "instruction"
    query: str | None = "input"
    response: str | None = "output"
    history: str | None = None
    # sharegpt columns
    messages: str | None = "conversations"
    # sharegpt tags
    role_tag: str | None = "from"
    content_tag: str | None = "value"
    user_tag: str | None = "human"
    assistant_tag: str | None = "gpt"
    observation_tag: str | None = "observation"
    function_tag: str | None = "function_call"
    system_tag: str | None = "system"
    # fastsft: the dataset as the user named it, for error messages
    name: str = ""

    def __repr__(self) -> str:
        return self.dataset_name

    @property
    def label(self) -> str:
        """The name errors show: what the user wrote, else the file name."""
        return self.name or self.dataset_name

    def set_attr(self, key: str, obj: dict[str, Any], default: Any | None = None) -> None:
        setattr(self, key, obj.get(key, default))

    def join(self, attr: dict[str, Any]) -> None:
        """Take a ``dataset_info.json`` entry, exactly as LLaMA-Factory does.

        Note LLaMA-Factory's quirk: once ``columns`` (or ``tags``) is given, every column (tag)
        it does not name becomes ``None``, not the default.
        """
        self.set_attr("formatting", attr, default="alpaca")
        self.set_attr("ranking", attr, default=False)
        self.set_attr("subset", attr)
        self.set_attr("split", attr, default="train")
        self.set_attr("folder", attr)
        self.set_attr("num_samples", attr)

        if "columns" in attr:
            column_names = ["prompt", "query", "response", "history", "messages", "system", "tools"]
            column_names += ["images", "videos", "audios", "chosen", "rejected", "kto_tag"]
            for column_name in column_names:
                self.set_attr(column_name, attr["columns"])

        if "tags" in attr:
            tag_names = ["role_tag", "content_tag"]
            tag_names += ["user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"]
            for tag in tag_names:
                self.set_attr(tag, attr["tags"])


def _split_names(names: str | list[str]) -> list[str]:
    stripped = dataset_names(names)
    if not stripped or "" in stripped:
        raise ConfigError(f"empty dataset name in {names!r}")

    return stripped


def _load_dataset_info(dataset_dir: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """(path of dataset_info.json, its entries); entries are ``None`` when the file does not exist."""
    if dataset_dir is None:
        return None, None

    config_path = os.path.join(dataset_dir, DATA_CONFIG)
    if not os.path.isfile(config_path):
        return config_path, None

    try:
        with open(config_path, encoding="utf-8") as f:
            dataset_info = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {config_path}: {err}") from None

    if not isinstance(dataset_info, dict):
        raise ConfigError(f"{config_path} must hold a JSON object of dataset entries")

    return config_path, dataset_info


def _attr_from_entry(name: str, entry: Any, config_path: str) -> DatasetAttr:
    if not isinstance(entry, dict):
        raise ConfigError(f"dataset '{name}' in {config_path} must be a JSON object")

    remote = [key for key in _REMOTE_KEYS if key in entry]
    if remote:
        raise ConfigError(
            f"dataset '{name}' in {config_path} uses '{remote[0]}': fastsft reads local files only "
            "(download it and point 'file_name' at it)"
        )

    if "file_name" not in entry:
        raise ConfigError(f"dataset '{name}' in {config_path} has no 'file_name'")

    attr = DatasetAttr("file", dataset_name=entry["file_name"], name=name)
    attr.join(entry)
    return attr


def _check_supported(attr: DatasetAttr) -> None:
    """Refuse what LLaMA-Factory's SFT stage refuses, and what fastsft cannot reproduce."""
    where = f"dataset '{attr.label}'"
    if attr.formatting not in FORMATTINGS:
        raise ConfigError(
            f"{where}: unknown formatting '{attr.formatting}' (valid: {', '.join(FORMATTINGS)})"
        )

    if attr.ranking:
        raise ConfigError(
            f"{where} is a ranking (preference) dataset, not applicable to supervised fine-tuning"
        )

    if attr.formatting == "alpaca" and not attr.response:
        raise ConfigError(
            f"{where} is a pretraining dataset (its columns name no response; LLaMA-Factory trains it "
            "with `stage: pt` and drops every sample of it under `stage: sft`): supervised fine-tuning "
            "needs a 'response' column"
        )

    if attr.split != "train":
        raise ConfigError(f"{where}: local files have only the 'train' split, got split '{attr.split}'")

    if attr.num_samples is not None:
        raise ConfigError(
            f"{where}: 'num_samples' (LLaMA-Factory's random resampling) is not supported; use max_samples"
        )


def _existing_path(name: str, dataset_dir: str | None) -> str | None:
    candidates = [name] if dataset_dir is None else [name, os.path.join(dataset_dir, name)]
    for candidate in candidates:
        if os.path.exists(candidate):
            return os.path.abspath(candidate)

    return None


def _detect_formatting(attr: DatasetAttr, first_row: dict[str, Any]) -> None:
    """Set formatting, columns and tags of a plain-path dataset from its first row."""
    where = f"dataset '{attr.label}'"
    if "conversations" in first_row:
        attr.formatting = "sharegpt"
        attr.messages = "conversations"
    elif "messages" in first_row:
        messages = first_row["messages"]
        first = messages[0] if isinstance(messages, list) and messages else None
        if isinstance(first, dict) and "role" in first:
            attr.formatting = "openai"
            attr.messages = "messages"
            attr.role_tag, attr.content_tag = "role", "content"
            attr.user_tag, attr.assistant_tag = "user", "assistant"
            attr.observation_tag, attr.system_tag = "tool", "system"
        elif isinstance(first, dict) and "from" in first:
            attr.formatting = "sharegpt"
            attr.messages = "messages"
        else:
            raise ConfigError(
                f"{where}: cannot detect the format: the first row's 'messages' does not start with a "
                "message that has 'role' or 'from'; describe it in dataset_info.json"
            )
    elif "instruction" in first_row:
        attr.formatting = "alpaca"
        attr.history = "history"
    else:
        raise ConfigError(
            f"{where}: cannot detect the format from the first row's keys {sorted(first_row)}; expected "
            "'conversations' (sharegpt), 'messages' (openai/sharegpt) or 'instruction' (alpaca), "
            "or describe it in dataset_info.json"
        )

    # Optional columns are read from every row that has them (a row without one reads None),
    # so a value that first appears in a later row is not ignored.
    attr.system = "system" if attr.formatting != "openai" else None
    attr.tools = "tools"


def _plain_path_attr(name: str, path: str) -> DatasetAttr:
    attr = DatasetAttr("file", dataset_name=path, name=name)
    first_row = next(iter_rows(attr), None)
    if first_row is None:
        raise ConfigError(f"dataset '{name}' ({path}) has no rows")

    _detect_formatting(attr, first_row)
    return attr


def resolve_datasets(names: str | list[str], dataset_dir: str | None) -> list[DatasetAttr]:
    """Attributes of each dataset in ``names`` (comma-separated when a string).

    A ``dataset_info.json`` entry wins; otherwise the name must be a file or folder, as given
    or under ``dataset_dir``.
    """
    config_path, dataset_info = _load_dataset_info(dataset_dir)
    attrs = []
    for name in _split_names(names):
        if dataset_info is not None and name in dataset_info:
            attr = _attr_from_entry(name, dataset_info[name], config_path or DATA_CONFIG)
        elif (path := _existing_path(name, dataset_dir)) is not None:
            attr = _plain_path_attr(name, path)
        elif dataset_info is None:
            needs = f"{config_path} does not exist" if config_path else "no dataset_dir is given"
            raise ConfigError(f"unknown dataset '{name}': it is not a file or folder, and {needs}")
        else:
            closest = difflib.get_close_matches(name, list(dataset_info), n=3)
            hint = f"; closest: {', '.join(closest)}" if closest else ""
            raise ConfigError(f"unknown dataset '{name}' (not in {config_path}, not a file){hint}")

        _check_supported(attr)
        attrs.append(attr)

    return attrs


def input_paths(attrs: list[DatasetAttr], dataset_dir: str | None) -> list[str]:
    """Every local path the datasets are read from: their files or folders, ``dataset_dir`` and its
    ``dataset_info.json`` (what an output must never overwrite)."""
    paths = [os.path.join(dataset_dir or "", attr.dataset_name) for attr in attrs]
    if dataset_dir is not None and os.path.isdir(dataset_dir):
        paths += [dataset_dir, os.path.join(dataset_dir, DATA_CONFIG)]
    return [path for path in paths if os.path.exists(path)]


def input_bytes(attrs: list[DatasetAttr], dataset_dir: str | None) -> int:
    """How many bytes the datasets' local files hold (0 for what is not a local file or folder)."""
    total = 0
    for attr in attrs:
        path = os.path.join(dataset_dir or "", attr.dataset_name)
        if os.path.isfile(path):
            total += os.path.getsize(path)
        elif os.path.isdir(path):
            total += sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    return total


def _data_files(attr: DatasetAttr, dataset_dir: str | None) -> tuple[str, list[str], bool]:
    """(builder type, files, is a folder) under LLaMA-Factory's rules: one type for all files of a folder."""
    local_path = os.path.join(dataset_dir or "", attr.dataset_name)
    is_folder = os.path.isdir(local_path)
    if is_folder:
        data_files = [os.path.join(local_path, file_name) for file_name in sorted(os.listdir(local_path))]
        if not data_files:
            raise DataError(f"folder {local_path} is empty", dataset=attr.label)
    elif os.path.isfile(local_path):
        data_files = [local_path]
    else:
        raise DataError(f"file {local_path} not found", dataset=attr.label)

    def file_type(path: str) -> str | None:
        return FILEEXT2TYPE.get(os.path.splitext(path)[-1][1:])

    data_type = file_type(data_files[0])
    if data_type is None or data_type == "text":
        allowed = ", ".join(ext for ext, kind in FILEEXT2TYPE.items() if kind != "text")
        raise DataError(f"cannot read {data_files[0]}: allowed file types are {allowed}", dataset=attr.label)

    mismatched = [path for path in data_files if file_type(path) != data_type]
    if mismatched:
        raise DataError(
            f"file types in {local_path} should be identical: {os.path.basename(mismatched[0])} is not {data_type}",
            dataset=attr.label,
        )

    return data_type, data_files, is_folder


def _first_non_whitespace(f: Any) -> bytes:
    """The first byte from ``f``'s position on that is not JSON whitespace (empty if there is none),
    however much whitespace comes first."""
    while chunk := f.read(1 << 16):
        rest = chunk.lstrip(b" \t\r\n")
        if rest:
            return rest[:1]
    return b""


def _iter_json_file(path: str, label: str) -> Iterator[dict[str, Any]]:
    """Rows of a JSON array file or a JSON Lines file (either extension, like ``datasets``).

    orjson parses each document (several times faster than ``json``); whatever it refuses is parsed
    again by ``json`` on the decoded text, which either accepts it as ``json`` does (``NaN``,
    ``Infinity``, numbers beyond a double's range, lone surrogate escapes, lines split by a lone
    ``\\r``) or gives the error reported. orjson reads integers beyond 64 bits as floats, where
    ``json`` keeps them exact; no text field can hold one.
    """
    with open(path, "rb") as f:
        head = f.read(len(_BOM))
        if head != _BOM:  # a leading byte-order mark is skipped, as `datasets` does
            f.seek(0)
        start = f.tell()
        is_array = _first_non_whitespace(f) == b"["
        f.seek(start)
        if is_array:
            yield from _streamed_json_array_rows(f, label)
            return

        for lineno, line in enumerate(f, start=1):
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield from _rows_of_refused_line(line, label, lineno)
                continue

            if not isinstance(row, dict):
                raise DataError(
                    f"expected a JSON object, got {type(row).__name__}", dataset=label, line=lineno
                )

            yield row


_BOM = b"\xef\xbb\xbf"
# Python's json recurses once per nesting level; orjson refuses more than 1024 levels.
TOO_DEEP = "invalid JSON: nested too deeply (more levels than the parser's recursion limit)"
# Text-mode reading ends lines at \r too; the binary lines above end at \n only.
_LONE_CR = re.compile(r"\r(?!\n)")


def _rows_of_refused_line(line: bytes, label: str, lineno: int) -> Iterator[dict[str, Any]]:
    """A line orjson refused, read as ``json`` reads text: blank (skipped), valid for ``json``, or an error."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text: {err}", dataset=label, line=lineno) from None

    for part in _LONE_CR.split(text):
        if not part.strip():
            continue

        try:
            row = json.loads(part)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err}", dataset=label, line=lineno) from None
        except RecursionError:
            raise DataError(TOO_DEEP, dataset=label, line=lineno) from None

        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", dataset=label, line=lineno)

        yield row


# Bytes read at a time from a JSON array file; an element longer than this is read whole.
_ARRAY_CHUNK = 1 << 20


def _streamed_json_array_rows(f: BinaryIO, label: str) -> Iterator[dict[str, Any]]:
    """The objects of the JSON array in ``f`` (positioned at its start), one at a time, in bounded memory.

    ``scan_json_array`` (compiled) finds each element's bytes in a chunk of the file and orjson
    parses them (``json`` where orjson refuses, as for a JSON Lines line); memory holds a chunk and
    the element in hand, not the file. Whatever the scan or both parsers refuse (a syntax error, an
    element that is not an object, a truncated file, trailing garbage) is handed to
    ``_json_array_rows`` on the whole file, which gives the error exactly as it always has (line,
    or sample index); the rows before it have been yielded already.
    """
    from fastsft.kernels.compiled import scan_json_array

    start = f.tell()
    index = 0

    def whole_file_from_here() -> Iterator[dict[str, Any]]:
        f.seek(start)
        return itertools.islice(_json_array_rows(f.read(), label), index, None)

    buf, pos, state = f.read(_ARRAY_CHUNK), 0, SCAN_OPEN
    while True:
        scan = scan_json_array(buf, pos, state)
        view = memoryview(buf)
        for begin, end in scan.spans:
            row = _array_element(view[begin:end])
            if row is None:
                yield from whole_file_from_here()
                return
            yield row
            index += 1
        if scan.status == SCAN_CLOSED and _only_json_space(buf[scan.pos :]) and _rest_is_json_space(f):
            return
        more = f.read(max(_ARRAY_CHUNK, len(buf) - scan.pos)) if scan.status == SCAN_MORE else b""
        if not more:  # invalid, truncated or followed by more than whitespace
            yield from whole_file_from_here()
            return
        buf, pos, state = buf[scan.pos :] + more, 0, scan.state


def _array_element(data: memoryview) -> dict[str, Any] | None:
    """One element's object, as orjson or else ``json`` reads it; None when both refuse it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        row = json.loads(data.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) else None


def _only_json_space(data: bytes) -> bool:
    return not data.translate(None, b" \t\n\r")


def _rest_is_json_space(f: BinaryIO) -> bool:
    """Whether the rest of ``f`` is JSON whitespace (read a chunk at a time)."""
    while chunk := f.read(_ARRAY_CHUNK):
        if not _only_json_space(chunk):
            return False
    return True


def _json_array_rows(data: bytes, label: str) -> Iterator[dict[str, Any]]:
    try:
        rows = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            rows = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise DataError(f"not UTF-8 text: {err}", dataset=label, line=line) from None
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err}", dataset=label, line=err.lineno) from None
        except RecursionError:
            raise DataError(TOO_DEEP, dataset=label) from None

    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", dataset=label, index=index)

        yield row


def _arrow_normalized(rows: Iterator[dict[str, Any]], label: str) -> Iterator[dict[str, Any]]:
    """The rows as LLaMA-Factory sees them once ``datasets`` has loaded the file into one Arrow table.

    Arrow gives every object at the same place one struct type: keys missing from a row come back
    as ``None``, keys are ordered by first appearance across the dataset, ints mixed with floats
    become floats. LLaMA-Factory's OpenAI converter ``json.dumps`` the native ``tools`` and
    ``tool_calls`` objects, so these ``null`` keys and that key order end up in the tokens. The
    schema depends on every row, so this reads the whole dataset before yielding.
    """
    import pyarrow as pa

    try:
        table = pa.array(list(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(
            f"rows disagree on the type of a field, which LLaMA-Factory's loader (datasets) rejects too: {err}",
            dataset=label,
        ) from None

    yield from table.to_pylist()


def _iter_with_datasets(data_type: str, data_files: list[str], label: str) -> Iterator[dict[str, Any]]:
    """Rows of parquet/arrow/csv files, loaded by ``datasets`` exactly as LLaMA-Factory loads them."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(data_type, data_files=data_files, split="train")
    except Exception as err:  # datasets/pyarrow raise many types; report them as one line
        raise DataError(f"cannot read {data_type} data: {type(err).__name__}: {err}", dataset=label) from None

    yield from dataset


def iter_rows(
    attr: DatasetAttr, dataset_dir: str | None = None, *, max_samples: int | None = None
) -> Iterator[dict[str, Any]]:
    """Stream the rows of a dataset; with ``max_samples``, only its first rows (LLaMA-Factory's truncation)."""
    data_type, data_files, is_folder = _data_files(attr, dataset_dir)
    if data_type == "json":
        rows: Iterator[dict[str, Any]] = itertools.chain.from_iterable(
            _iter_json_file(path, f"{attr.label}/{os.path.basename(path)}" if is_folder else attr.label)
            for path in data_files
        )
        if attr.formatting == "openai":
            rows = _arrow_normalized(rows, attr.label)
    else:
        rows = _iter_with_datasets(data_type, data_files, attr.label)

    return rows if max_samples is None else itertools.islice(rows, max_samples)


def count_rows(attr: DatasetAttr, dataset_dir: str | None = None, *, max_samples: int | None = None) -> int:
    """How many rows ``iter_rows`` yields (one read of the dataset)."""
    return sum(1 for _ in iter_rows(attr, dataset_dir, max_samples=max_samples))
