"""Property: the compiled path equals the pure-Python reference path on every output.

Hypothesis draws whole datasets (random text with CJK, emoji, newlines and special-token strings;
1-4 turns; system prompts; tools; function calls and observations; rows LLaMA-Factory drops and
malformed rows) and option sets (any of the templates, train_on_prompt / mask_history, tiny to
large cutoff_len, both packing strategies, neat packing, small preprocessing batches, the HF or
the automatically chosen text encoder: fastsft's BPE, fastokens, or HF's batched Rust tokenizer
where neither is used). Each case is built with
``backend="python"`` and ``backend="compiled"``; every column of every row, the features, the
summary counts and any error must be identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsft.data.chat.registry import TEMPLATE_NAMES
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import build_dataset
from fastsft.data.rows import builder as row_stage
from fastsft.data.rows import tokenizing
from fastsft.errors import ConfigError, FastSFTError
from fastsft.tokenizer import encoders

SPECIAL_STRINGS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<s>",
    "</s>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "[INST]",
    "{{content}}",
]
PIECES = [
    *SPECIAL_STRINGS,
    "\n",
    "\n\n",
    " ",
    "  ",
    "\t",
    "Hello",
    " world",
    "1+1=?",
    "你好",
    "北京是中国的首都",
    "😀",
    "👍🏽",
    "é",
    "<think>\nhmm\n</think>\n\n",
]
# Tool-format overrides (None: the template's own); glm4 rejects parallel calls, a malformed sample.
TOOL_FORMATS = [None, None, "default", "qwen", "llama3", "mistral", "glm4"]


texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=5).map("".join)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
json_values = st.one_of(st.integers(-5, 100), texts, st.booleans(), st.lists(st.integers(0, 9), max_size=3))


@st.composite
def function_calls(draw: st.DrawFn) -> str:
    """An assistant function-call message: one JSON call or a parallel list, maybe after a thought."""
    calls = draw(
        st.lists(
            st.fixed_dictionaries(
                {"name": names, "arguments": st.dictionaries(names, json_values, max_size=3)}
            ),
            min_size=1,
            max_size=2,
        )
    )
    content = json.dumps(calls[0] if len(calls) == 1 and draw(st.booleans()) else calls, ensure_ascii=False)
    if draw(st.booleans()):
        content = f"<tool_call>{content}</tool_call>"
    if draw(st.integers(0, 3)) == 0:
        content = "<think>\n" + draw(texts) + "\n</think>\n\n" + content
    return content


@st.composite
def tool_lists(draw: st.DrawFn) -> str:
    """JSON text of a list of function schemas."""
    tools = []
    for _ in range(draw(st.integers(0, 2))):
        properties = draw(
            st.dictionaries(
                names,
                st.fixed_dictionaries({"type": st.sampled_from(["string", "integer"]), "description": texts}),
                max_size=2,
            )
        )
        required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True)) if properties else []
        tool = {
            "name": draw(names),
            "description": draw(texts),
            "parameters": {"type": "object", "properties": properties, "required": required},
        }
        tools.append({"type": "function", "function": tool} if draw(st.booleans()) else tool)
    return json.dumps(tools, ensure_ascii=False)


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    """A ShareGPT row: mostly valid; sometimes one LLaMA-Factory drops, sometimes a malformed one."""
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 4))):
        if messages and messages[-1]["from"] == "function_call" and draw(st.booleans()):
            messages.append({"from": "observation", "value": draw(texts)})
        else:
            messages.append({"from": "human", "value": draw(texts)})
        if draw(st.integers(0, 3)) == 0:
            messages.append({"from": "function_call", "value": draw(function_calls())})
        else:
            messages.append({"from": "gpt", "value": draw(texts)})
    row: dict[str, Any] = {"conversations": messages}
    if draw(st.booleans()):
        row["system"] = draw(texts)
    if draw(st.integers(0, 2)) == 0:
        row["tools"] = draw(tool_lists())

    kind = draw(st.integers(0, 15))
    if kind == 0:  # dropped: odd number of messages
        messages.pop()
    elif kind == 1:  # dropped: a response where a prompt belongs
        messages[0]["from"] = "gpt"
    elif kind == 2:  # malformed: content that is not a string
        messages[-1]["value"] = draw(st.sampled_from([None, 3, ["x"]]))
    elif kind == 3:  # malformed: a function call that is not JSON
        messages[-1] = {"from": "function_call", "value": draw(texts)}
    return row


options = st.fixed_dictionaries(
    {
        "history": st.sampled_from(["plain", "plain", "train_on_prompt", "mask_history"]),
        "cutoff_len": st.one_of(st.integers(1, 64), st.sampled_from([128, 1024])),
        "packing": st.sampled_from(["none", "none", "llamafactory", "neat", "bfd", "neat-bfd"]),
        "preprocessing_batch_size": st.integers(1, 5),
        "tool_format": st.sampled_from(TOOL_FORMATS),
        "default_system": st.one_of(st.none(), texts),
        "enable_thinking": st.booleans(),
        "preserve_thinking": st.booleans(),
        "skip_malformed": st.sampled_from([True, True, True, False]),
        "max_samples": st.one_of(st.none(), st.integers(1, 8)),
        "tokenizer_backend": st.sampled_from(["hf", "auto"]),
    }
)


def data_args(template: str, drawn: dict[str, Any], dataset_dir: str, backend: str) -> DataArgs:
    """``DataArgs`` from the drawn options."""
    values = dict(drawn)
    history = values.pop("history")
    packing = values.pop("packing")
    return DataArgs(
        dataset="drawn",
        dataset_dir=dataset_dir,
        template=template,
        train_on_prompt=history == "train_on_prompt",
        mask_history=history == "mask_history",
        packing=packing != "none",
        neat_packing=packing.startswith("neat"),
        packing_strategy="bfd" if packing.endswith("bfd") else "llamafactory",
        backend=backend,
        **values,
    )


def outcome(
    args: DataArgs, tokenizer_path: Path, cache_file: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """Everything a build produces (rows, features and counts, or the error it raised), and the
    tokenizer backend it used (``None`` after an error)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    try:
        dataset, summary = build_dataset(args, tokenizer, cache_file=cache_file)
    except FastSFTError as error:
        return {"error": f"{type(error).__name__}: {error}"}, None
    counts = dataclasses.asdict(summary)
    for name in ("seconds", "encode_path", "tokenizer_backend"):
        counts.pop(name)
    return {
        "features": dataset.features,
        "rows": dataset.to_list(),
        "summary": counts,
    }, summary.tokenizer_backend


def first_difference(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    """Where two outcomes differ, for the failure message."""
    if expected.keys() != actual.keys() or "error" in expected:
        return f"python: {expected.get('error', 'ok')}; compiled: {actual.get('error', 'ok')}"
    if expected["summary"] != actual["summary"]:
        return f"summary: {expected['summary']} != {actual['summary']}"
    if expected["features"] != actual["features"]:
        return f"features: {expected['features']} != {actual['features']}"
    if len(expected["rows"]) != len(actual["rows"]):
        return f"row count {len(expected['rows'])} != {len(actual['rows'])}"
    for index, (want, got) in enumerate(zip(expected["rows"], actual["rows"])):
        for column in want:
            if want[column] != got.get(column):
                return f"row {index}, column {column}: {want[column]} != {got.get(column)}"
    return "no difference"


# How the compiled side writes its rows: in memory or streamed to a cache file (BFD then spills its
# samples beside it), in record batches of about this many tokens (1: one packed row each).
# With the "auto" tokenizer backend, the encoder auto is made to choose: fastsft's BPE (its choice
# for this little text), fastokens (as for a large input, or past its break-even point where the
# BPE is not exact), or HF's batched Rust tokenizer (neither).
layouts = st.fixed_dictionaries(
    {
        "cache_file": st.booleans(),
        "row_chunk_tokens": st.sampled_from([row_stage.ROW_CHUNK_TOKENS, 1, 40]),
        "compiled_tokenizer": st.sampled_from(
            ["fastsft-bpe", "fastokens", "fastokens without the BPE", "hf without the BPE"]
        ),
    }
)

# Module attributes patched to make auto choose each of them (input_bytes is patched to 0, so the
# input counts 0 characters per vocabulary entry).
AUTO_CHOICES: dict[str, dict[str, Any]] = {
    "fastsft-bpe": {},
    "fastokens": {"FASTOKENS_CHARS_PER_TOKEN": 0},
    "fastokens without the BPE": {"BREAK_EVEN_CHARS_PER_TOKEN": 0, "_bpe": lambda *_: _without_bpe()},
    "hf without the BPE": {"_bpe": lambda *_: _without_bpe()},
}


def _without_bpe() -> Any:
    raise ConfigError("fastsft-bpe switched off: this example draws another encoder")


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
@settings(max_examples=18, deadline=None)
@given(dataset=st.lists(rows(), min_size=2, max_size=6), drawn=options, layout=layouts)
def test_compiled_path_equals_python_path(fixture_tokenizer_path, template, dataset, drawn, layout):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "drawn.jsonl").write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in dataset), encoding="utf-8"
        )
        info = {"drawn": {"file_name": "drawn.jsonl", "formatting": "sharegpt"}}
        info["drawn"]["columns"] = {"messages": "conversations", "system": "system", "tools": "tools"}
        (Path(folder) / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")

        reference, _ = outcome(data_args(template, drawn, folder, "python"), fixture_tokenizer_path)
        cache_file = str(Path(folder) / "out" / "rows.arrow") if layout["cache_file"] else None
        if cache_file:
            Path(cache_file).parent.mkdir()
        choice = AUTO_CHOICES[layout["compiled_tokenizer"]]
        with (
            mock.patch.object(row_stage, "ROW_CHUNK_TOKENS", layout["row_chunk_tokens"]),
            mock.patch.object(tokenizing, "input_bytes", lambda *_: 0),
            mock.patch.multiple(encoders, **choice) if choice else contextlib.nullcontext(),
        ):
            compiled, tokenizer_used = outcome(
                data_args(template, drawn, folder, "compiled"), fixture_tokenizer_path, cache_file
            )
        if cache_file:  # only the output is left: no spill folder
            assert [p.name for p in Path(cache_file).parent.iterdir()] in ([], ["rows.arrow"])
    assert compiled == reference, first_difference(reference, compiled)
    if tokenizer_used is not None:  # "auto" must really exercise the drawn encoder
        drawn_encoder = layout["compiled_tokenizer"].removesuffix(" without the BPE")
        assert tokenizer_used == ("hf" if drawn["tokenizer_backend"] == "hf" else drawn_encoder)
