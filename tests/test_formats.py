"""Raw rows → Conversation under LLaMA-Factory 0.9.5's Alpaca / ShareGPT / OpenAI converter rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fastsft.data.sources.converter import Conversation, Dropped, convert
from fastsft.data.sources.parser import DatasetAttr
from fastsft.errors import ConfigError, DataError

ALPACA = DatasetAttr("file", "alpaca.json", system="system", history="history", tools="tools", name="alpaca")
SHAREGPT = DatasetAttr("file", "sg.json", formatting="sharegpt", system="system", tools="tools", name="sg")
OPENAI = DatasetAttr(
    "file",
    "oa.json",
    formatting="openai",
    messages="messages",
    tools="tools",
    role_tag="role",
    content_tag="content",
    user_tag="user",
    assistant_tag="assistant",
    observation_tag="tool",
    system_tag="system",
    name="oa",
)


def msg(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


def sg(role: str, value: Any) -> dict[str, Any]:
    return {"from": role, "value": value}


def oa(role: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


# --- alpaca -------------------------------------------------------------------------------------


def test_alpaca_joins_instruction_and_input() -> None:
    row = {"instruction": "Translate", "input": "hello", "output": "bonjour", "system": "S"}
    assert convert(row, ALPACA) == Conversation(
        [msg("user", "Translate\nhello"), msg("assistant", "bonjour")], "S", None
    )


def test_alpaca_history_and_empty_parts() -> None:
    row = {"instruction": "", "input": "q2", "output": "a2", "history": [["q1", "a1"]], "system": ""}
    conv = convert(row, ALPACA)
    assert conv == Conversation(
        [msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2"), msg("assistant", "a2")], None, None
    )


def test_alpaca_missing_columns_read_as_none() -> None:
    conv = convert({"output": "x"}, ALPACA)
    assert conv == Conversation([msg("user", ""), msg("assistant", "x")], None, None)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "q"}, "no 'output' (response) in the row"),
        ({"instruction": "q", "output": None}, "no 'output' (response) in the row"),
        ({"instruction": "q", "output": 3}, "'output' is a int, not a string"),
    ],
)
def test_alpaca_without_string_output_is_dropped(row: dict[str, Any], reason: str) -> None:
    assert convert(row, ALPACA) == Dropped(reason)


def test_kto_examples_are_dropped() -> None:
    attr = DatasetAttr("file", "k.json", kto_tag="label")
    result = convert({"instruction": "q", "output": "a", "label": True}, attr)
    assert isinstance(result, Dropped)
    assert "KTO" in result.reason
    assert isinstance(convert({"instruction": "q", "output": "a", "label": "yes"}, attr), Conversation)


@pytest.mark.parametrize(
    ("row", "field", "match"),
    [
        ({"instruction": 5, "output": "a"}, "instruction", "expected a string, got int 5"),
        ({"instruction": "q", "input": ["x"], "output": "a"}, "input", "got list"),
        ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history[0]", "pair"),
        ({"instruction": "q", "output": "a", "history": [["q0", 1]]}, "history[0][1]", "got int"),
        ({"instruction": "q", "output": "a", "system": 7}, "system", "got int"),
        ({"instruction": "q", "output": "a", "tools": [{"name": "f"}]}, "tools", "got list"),
    ],
)
def test_alpaca_malformed(row: dict[str, Any], field: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        convert(row, ALPACA)
    assert info.value.field == field


def test_alpaca_falsy_non_string_instruction_is_skipped() -> None:
    # LLaMA-Factory tests truthiness before joining, so 0 and [] count as empty.
    conv = convert({"instruction": 0, "input": "q", "output": "a"}, ALPACA)
    assert isinstance(conv, Conversation)
    assert conv.messages[0] == msg("user", "q")


# --- sharegpt ------------------------------------------------------------------------------------


def test_sharegpt_roles_and_leading_system_message() -> None:
    row = {
        "conversations": [
            sg("system", "SYS"),
            sg("human", "q"),
            sg("function_call", '{"name": "f", "arguments": {}}'),
            sg("observation", "r"),
            sg("gpt", "a"),
        ],
        "system": "ignored",
        "tools": '[{"name": "f"}]',
    }
    conv = convert(row, SHAREGPT)
    assert conv == Conversation(
        [
            msg("user", "q"),
            msg("function", '{"name": "f", "arguments": {}}'),
            msg("observation", "r"),
            msg("assistant", "a"),
        ],
        "SYS",
        '[{"name": "f"}]',
    )


def test_sharegpt_system_column_and_empty_tools() -> None:
    row = {"conversations": [sg("human", "q"), sg("gpt", "a")], "system": "S", "tools": []}
    assert convert(row, SHAREGPT) == Conversation([msg("user", "q"), msg("assistant", "a")], "S", None)


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (
            [sg("human", "q"), sg("gpt", "a"), sg("gpt", "b"), sg("gpt", "c")],
            "message 2 has role 'gpt' where human/observation is expected",
        ),
        (
            [sg("system", "s"), sg("human", "q"), sg("human", "a")],
            "message 2 has role 'human' where gpt/function_call is expected",
        ),
        (
            [sg("humann", "q"), sg("gpt", "a")],
            "unknown role tag 'humann' in message 0 (known: human, gpt, observation, function_call, system)",
        ),
        (
            [sg("human", "q"), sg("gpt", "a"), sg("human", "q2")],
            "odd number of messages (3): every prompt needs a response",
        ),
        ([], "empty conversation"),
        ([sg("system", "only a system prompt")], "empty conversation"),
        (
            [sg("human", "q"), sg("system", "late")],
            "message 1 has role 'system' where gpt/function_call is expected",
        ),
    ],
)
def test_sharegpt_dropped(messages: list[dict[str, Any]], reason: str) -> None:
    assert convert({"conversations": messages}, SHAREGPT) == Dropped(reason)


def test_sharegpt_drop_wins_over_bad_content() -> None:
    # LLaMA-Factory skips broken rows before any template sees their content.
    row = {"conversations": [sg("human", 1), sg("human", 2)]}
    assert isinstance(convert(row, SHAREGPT), Dropped)


@pytest.mark.parametrize(
    ("row", "field", "match"),
    [
        ({"messages": []}, "conversations", "missing 'conversations'"),
        ({"conversations": None}, "conversations", "expected a list of messages, got NoneType"),
        (
            {"conversations": [sg("human", "q"), "gpt: a"]},
            "conversations[1]",
            "expected a message object, got str",
        ),
        ({"conversations": [sg("human", "q"), {"from": "gpt"}]}, "conversations[1]", "no 'value' key"),
        ({"conversations": [{"value": "q"}, sg("gpt", "a")]}, "conversations[0]", "no 'from' key"),
        ({"conversations": [sg("human", "q"), sg("gpt", None)]}, "conversations[1].value", "got NoneType"),
        ({"conversations": [sg("system", 3), sg("human", "q"), sg("gpt", "a")]}, "system", "got int"),
        (
            {"conversations": [sg("human", "q"), sg("gpt", "a")], "tools": [{"name": "f"}]},
            "tools",
            "got list",
        ),
    ],
)
def test_sharegpt_malformed(row: dict[str, Any], field: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        convert(row, SHAREGPT)
    assert info.value.field == field


def test_sharegpt_unset_tags_quirk() -> None:
    # dataset_info.json "tags" without observation/function tags sets them to None (LLaMA-Factory's join):
    # a null role then passes as an observation-or-function tag and maps to "function".
    attr = DatasetAttr("file", "x.json", formatting="sharegpt")
    attr.join(
        {
            "formatting": "sharegpt",
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
                "system_tag": "system",
            },
        }
    )
    conv = convert({"conversations": [sg("human", "q"), sg(None, '{"name": "f", "arguments": {}}')]}, attr)
    assert isinstance(conv, Conversation)
    assert conv.messages[1]["role"] == "function"


# --- openai ----------------------------------------------------------------------------------------


def test_openai_system_gets_thinking_off() -> None:
    row = {"messages": [oa("system", "Be nice."), oa("user", "q"), oa("assistant", "a")]}
    conv = convert(row, OPENAI)
    assert conv == Conversation(
        [msg("user", "q"), msg("assistant", "a")], "Be nice.\ndetailed thinking off", None
    )


@pytest.mark.parametrize(
    ("system", "tools", "expected_system"),
    [
        (None, None, "detailed thinking off"),
        (None, [{"name": "f"}], None),
        ("S", [{"name": "f"}], "S\n"),
        ("S detailed thinking on", None, "S detailed thinking on"),
        ("detailed thinking off please", None, "detailed thinking off please"),
        ("S", "", "S\ndetailed thinking off"),
        ("S", [], "S\n"),  # [] is dumped to "[]", which is truthy
    ],
)
def test_openai_system_prompt_rules(system: str | None, tools: Any, expected_system: str | None) -> None:
    messages = [oa("user", "q"), oa("assistant", "a")]
    if system is not None:
        messages.insert(0, oa("system", system))
    row: dict[str, Any] = {"messages": messages}
    if tools is not None:
        row["tools"] = tools
    conv = convert(row, OPENAI)
    assert isinstance(conv, Conversation)
    assert conv.system == expected_system


def test_openai_tool_calls_and_merged_tool_responses() -> None:
    tools = [{"type": "function", "function": {"name": "weather", "description": "天气"}}]
    row = {
        "messages": [
            oa("user", "q"),
            oa(
                "assistant",
                None,
                tool_calls=[
                    {
                        "id": "1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "北京"}'},
                    }
                ],
            ),
            oa("tool", "r1"),
            oa("tool", "r2"),
            oa("assistant", "a"),
        ],
        "tools": tools,
    }
    conv = convert(row, OPENAI)
    assert conv == Conversation(
        [
            msg("user", "q"),
            msg("function", '[{"name": "weather", "arguments": "{\\"city\\": \\"北京\\"}"}]'),
            msg("observation", "r1\n</tool_response>\n<tool_response>\nr2"),
            msg("assistant", "a"),
        ],
        None,
        json.dumps(tools, ensure_ascii=False),
    )


def test_openai_trailing_tool_responses_are_lost() -> None:
    row = {"messages": [oa("user", "q"), oa("assistant", "a"), oa("tool", "never flushed")]}
    conv = convert(row, OPENAI)
    assert isinstance(conv, Conversation)
    assert conv.messages == [msg("user", "q"), msg("assistant", "a")]


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (
            [oa("user", "q"), oa("user", "q2")],
            "message 1 has role 'user' where assistant/function_call is expected",
        ),
        (
            [oa("assistant", "a"), oa("user", "q")],
            "message 0 has role 'assistant' where user/tool is expected",
        ),
        ([oa("user", "q")], "odd number of messages (1): every prompt needs a response"),
        ([oa("system", "s")], "empty conversation"),
    ],
)
def test_openai_dropped(messages: list[dict[str, Any]], reason: str) -> None:
    assert convert({"messages": messages}, OPENAI) == Dropped(reason)


@pytest.mark.parametrize(
    ("messages", "field", "match"),
    [
        ([oa("developer", "x"), oa("user", "q")], "messages[0].role", "unknown role 'developer'"),
        (
            [oa("user", "q"), oa("assistant", None, tool_calls=[{"name": "f"}])],
            "messages[1].tool_calls",
            "tool calls",
        ),
        (
            [oa("user", "q"), oa("assistant", "a", tool_calls=None), oa("tool", 5), oa("assistant", "b")],
            "messages[2].content",
            "got int",
        ),
        ([oa("user", "q"), {"role": "assistant"}], "messages[1]", "no 'content' key"),
        ([oa("user", "q"), oa("assistant", ["part"])], "messages[1].content", "got list"),
    ],
)
def test_openai_malformed(messages: list[dict[str, Any]], field: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        convert({"messages": messages}, OPENAI)
    assert info.value.field == field


def test_function_tag_none_maps_tool_calls_to_function() -> None:
    # LLaMA-Factory's own openai dataset_info entries leave function_tag unset (None).
    attr = DatasetAttr("file", "x.json", formatting="openai")
    attr.join(
        {
            "formatting": "openai",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "observation_tag": "tool",
                "system_tag": "system",
            },
        }
    )
    row = {
        "messages": [
            oa("user", "q"),
            oa("assistant", "", tool_calls=[{"function": {"name": "f", "arguments": "{}"}}]),
        ]
    }
    conv = convert(row, attr)
    assert isinstance(conv, Conversation)
    assert conv.messages[1] == msg("function", '[{"name": "f", "arguments": "{}"}]')


def test_ranking_attr_is_refused() -> None:
    with pytest.raises(ConfigError, match="ranking"):
        convert({"instruction": "q", "output": "a"}, DatasetAttr("file", "x.json", ranking=True))


def test_error_can_be_located_by_the_pipeline() -> None:
    with pytest.raises(DataError) as info:
        convert({"conversations": [sg("human", "q"), sg("gpt", 1)]}, SHAREGPT)
    located = info.value.located(dataset="sg", index=7)
    assert (
        str(located) == "dataset sg, sample #7, field 'conversations[1].value': expected a string, got int 1"
    )


def test_openai_system_errors_come_before_drops() -> None:
    # LLaMA-Factory's converter builds the system prompt even for rows it then skips: `in` on an int fails
    # there, while a list passes the converter and is only rejected by the template.
    broken = [oa("system", 7), oa("user", "q"), oa("user", "q2")]
    with pytest.raises(DataError, match="got int 7") as info:
        convert({"messages": broken}, OPENAI)
    assert info.value.field == "messages[0].content"
    assert isinstance(convert({"messages": [oa("system", ["l"]), *broken[1:]]}, OPENAI), Dropped)
    with pytest.raises(DataError, match="got list"):
        convert({"messages": [oa("system", ["l"]), oa("user", "q"), oa("assistant", "a")]}, OPENAI)


# --- media ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "row"),
    [
        (SHAREGPT, {"conversations": [sg("human", "<image>What is it?"), sg("gpt", "A cat.")]}),
        (ALPACA, {"instruction": "<image>What is it?", "output": "A cat."}),
    ],
    ids=["sharegpt", "alpaca"],
)
@pytest.mark.parametrize(
    ("kind", "value", "words"),
    [
        ("images", ["a.png", "b.png"], "2 images"),
        ("videos", "v.mp4", "1 video"),
        ("audios", ["a.wav"], "1 audio"),
    ],
)
def test_a_sample_with_media_is_malformed(
    attr: DatasetAttr, row: dict[str, Any], kind: str, value: Any, words: str
) -> None:
    import dataclasses

    with_media = dataclasses.replace(attr, **{kind: "media"})
    with pytest.raises(DataError, match=f"the sample has {words}, and fastsft is text-only") as raised:
        convert({**row, "media": value}, with_media)
    assert raised.value.field == "media"
    # Empty media, or a media column dataset_info.json does not map, is text as LLaMA-Factory reads it.
    assert isinstance(convert({**row, "media": []}, with_media), Conversation)
    assert isinstance(convert({**row, kind: value}, attr), Conversation)
