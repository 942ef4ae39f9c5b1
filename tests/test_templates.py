"""Chat templates and tool formats render exactly what LLaMA-Factory 0.9.5 encodes.

Expected texts are written out from LLaMA-Factory's template definitions; a differential run
against LLaMA-Factory itself (many conversations, every template and tool format, Qwen2
tokenizer) agreed token for token when these were written.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsft.data.chat import formatter as formatters
from fastsft.data.chat import registry
from fastsft.data.chat import template as templates
from fastsft.data.chat import tool_utils as tools
from fastsft.data.chat.formatter import EmptyFormatter, StringFormatter
from fastsft.data.chat.registry import TEMPLATE_NAMES, get_template
from fastsft.data.chat.template import SpecialTokens, Template, fix_tokenizer
from fastsft.errors import ConfigError, DataError
from fastsft.kernels.supervised import pairs

BOS, EOS = 1, 2
SPECIALS = SpecialTokens(bos_token_id=BOS, eos_token_id=EOS)
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TWO_TURNS = [
    {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "2+2=?"},
    {"role": "assistant", "content": "4"},
]
IM_USER = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
L3_USER = "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
THOUGHT = "<think>\n\n</think>\n\n"

EXPECTED_TWO_TURNS: dict[str, list[list[Any]]] = {
    "chatml": [[IM_USER.format("1+1=?")], ["2<|im_end|>\n"], [IM_USER.format("2+2=?")], ["4<|im_end|>\n"]],
    "default": [
        ["Human: 1+1=?", EOS, "\nAssistant:"],
        ["2", EOS, "\n"],
        ["Human: 2+2=?", EOS, "\nAssistant:"],
        ["4", EOS, "\n"],
    ],
    "empty": [["1+1=?"], ["2"], ["2+2=?"], ["4"]],
    "llama2": [[BOS, "[INST] 1+1=? [/INST]"], ["2", EOS], [BOS, "[INST] 2+2=? [/INST]"], ["4", EOS]],
    "llama3": [[BOS, L3_USER.format("1+1=?")], ["2<|eot_id|>"], [L3_USER.format("2+2=?")], ["4<|eot_id|>"]],
    "mistral": [[BOS, "[INST] 1+1=?[/INST]"], [" 2", EOS], ["[INST] 2+2=?[/INST]"], [" 4", EOS]],
    "qwen": [
        [f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n", IM_USER.format("1+1=?")],
        ["2<|im_end|>\n"],
        [IM_USER.format("2+2=?")],
        ["4<|im_end|>\n"],
    ],
    "qwen3": [
        [IM_USER.format("1+1=?")],
        [THOUGHT, "2<|im_end|>\n"],
        [IM_USER.format("2+2=?")],
        [THOUGHT, "4<|im_end|>\n"],
    ],
    "qwen3_nothink": [
        [IM_USER.format("1+1=?")],
        ["2<|im_end|>\n"],
        [IM_USER.format("2+2=?")],
        ["4<|im_end|>\n"],
    ],
}

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_TOOLS = json.dumps([WEATHER_TOOL])
WEATHER_CALL = '{"name": "get_weather", "arguments": {"city": "北京"}}'
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Beijing?"},
    {"role": "function", "content": WEATHER_CALL},
    {"role": "observation", "content": '{"temp": 20}'},
    {"role": "assistant", "content": "20 degrees."},
]
WRAPPED_TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get weather", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
)


def render(
    template: Template,
    messages: list[dict[str, Any]],
    system: str | None = None,
    tools: str | None = None,
    **kwargs: Any,
) -> list[list[Any]]:
    return template.render(messages, system, tools, SPECIALS, **kwargs)


def test_written_expectations_name_registered_templates() -> None:
    # Every template is checked against LLaMA-Factory's own tokens in test_goldens; these are the
    # hand-written ones, readable without a tokenizer.
    assert set(EXPECTED_TWO_TURNS) <= set(TEMPLATE_NAMES)
    assert len(TEMPLATE_NAMES) == 121


@pytest.mark.parametrize("name", sorted(EXPECTED_TWO_TURNS))
def test_two_turn_conversation(name: str) -> None:
    assert render(get_template(name), TWO_TURNS) == EXPECTED_TWO_TURNS[name]


def test_qwen_first_message_text() -> None:
    first = render(get_template("qwen"), TWO_TURNS)[0]
    assert "".join(first) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_explicit_system_replaces_default() -> None:
    first = render(get_template("qwen"), TWO_TURNS, system="Be brief.")[0]
    assert first == ["<|im_start|>system\nBe brief.<|im_end|>\n", IM_USER.format("1+1=?")]


def test_llama2_fuses_system_into_first_user_message() -> None:
    rendered = render(get_template("llama2"), TWO_TURNS, system="Be brief.")
    assert rendered[0] == [BOS, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n1+1=? [/INST]"]
    assert rendered[2] == [BOS, "[INST] 2+2=? [/INST]"]


def test_user_placeholder_quirk() -> None:
    # LLaMA-Factory fills {{content}} first, then {{idx}} (the turn index) in the result.
    messages = [{"role": "user", "content": "turn {{idx}}"}, {"role": "assistant", "content": "{{idx}}"}] * 2
    rendered = render(get_template("empty"), messages)
    assert rendered == [["turn 0"], ["{{idx}}"], ["turn 1"], ["{{idx}}"]]


def test_empty_strings_are_not_segments() -> None:
    messages = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    assert render(get_template("empty"), messages) == [[], []]
    assert render(get_template("default"), messages) == [["Human: ", EOS, "\nAssistant:"], [EOS, "\n"]]


def test_missing_bos_is_skipped() -> None:
    rendered = get_template("llama3").render(TWO_TURNS, None, None, SpecialTokens(None, EOS))
    assert rendered[0] == [L3_USER.format("1+1=?")]


# --- tools, function calls, observations -------------------------------------------------------


def test_qwen_tools_function_call_and_observation() -> None:
    rendered = render(get_template("qwen"), TOOL_CONVERSATION, tools=WEATHER_TOOLS)
    assert rendered[0][0] == (
        f"<|im_start|>system\n{QWEN_SYSTEM}\n\n# Tools\n\nYou may call one or more functions to assist with the user "
        "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{WRAPPED_TOOL_JSON}\n</tools>\n\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    )
    assert rendered[1] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>\n'
    ]
    assert rendered[2] == [
        '<|im_start|>user\n<tool_response>\n{"temp": 20}\n</tool_response><|im_end|>\n<|im_start|>assistant\n'
    ]
    assert rendered[3] == ["20 degrees.<|im_end|>\n"]


def test_qwen_parallel_calls_and_thought_before_call() -> None:
    content = (
        '<think>\nplan\n</think>\n\n[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]'
    )
    messages = [{"role": "user", "content": "go"}, {"role": "function", "content": content}]
    rendered = render(get_template("qwen3_nothink"), messages)
    assert rendered[1] == [
        "<think>\nplan\n</think>\n\n"
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call><|im_end|>\n'
    ]


def test_function_call_wrapped_in_tool_call_words() -> None:
    content = 'Checking.<tool_call>{"name": "a", "arguments": {"q": "x"}}</tool_call>'
    messages = [{"role": "user", "content": "go"}, {"role": "function", "content": content}]
    rendered = render(get_template("qwen"), messages)
    assert rendered[1] == [
        'Checking.<tool_call>\n{"name": "a", "arguments": {"q": "x"}}\n</tool_call><|im_end|>\n'
    ]


def test_llama3_tools_function_call_and_observation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "_today", lambda: "26 Jul 2024")
    rendered = render(get_template("llama3"), TOOL_CONVERSATION, system="SYS", tools=WEATHER_TOOLS)
    tool_json = json.dumps({"type": "function", "function": WEATHER_TOOL}, indent=4)
    assert rendered[0] == [
        BOS,
        "<|start_header_id|>system<|end_header_id|>\n\nSYSCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024"
        "\n\nYou have access to the following functions. To call a function, please respond with JSON for a function "
        'call. Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
        f"value}}. Do not use variables.\n\n{tool_json}\n\n<|eot_id|>",
        L3_USER.format("Weather in Beijing?"),
    ]
    assert rendered[1] == ['{"name": "get_weather", "parameters": {"city": "北京"}}<|eot_id|>']
    assert rendered[2] == [
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 20}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ]


def test_mistral_tools_function_call_and_observation() -> None:
    rendered = render(get_template("mistral"), TOOL_CONVERSATION, system="SYS", tools=WEATHER_TOOLS)
    assert rendered[0] == [
        BOS,
        f"[INST] SYS[AVAILABLE_TOOLS] [{WRAPPED_TOOL_JSON}][/AVAILABLE_TOOLS]\n\nWeather in Beijing?[/INST]",
    ]
    assert rendered[1] == ['[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "北京"}}]', EOS]
    assert rendered[2] == ['[TOOL_RESULTS] {"content": {"temp": 20}}[/TOOL_RESULTS]']
    assert rendered[3] == [" 20 degrees.", EOS]


def test_tool_format_override_uses_default_slots() -> None:
    # LLaMA-Factory replaces the function formatter with ["{{content}}", {"eos_token"}], not the template's slots.
    template = get_template("qwen", tool_format="default")
    rendered = render(template, TOOL_CONVERSATION, tools=WEATHER_TOOLS)
    assert rendered[1] == ['Action: get_weather\nAction Input: {"city": "北京"}', EOS]
    assert "> Tool Name: get_weather\nTool Description: Get weather\nTool Args:\n" in rendered[0][0]


def test_empty_tool_list_adds_nothing() -> None:
    assert render(get_template("qwen"), TWO_TURNS, tools="[]") == EXPECTED_TWO_TURNS["qwen"]


def test_default_tool_format_text() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search",
            "parameters": {
                "type": "object",
                "properties": {
                    "q": {"type": "string", "description": "query"},
                    "mode": {"type": "string", "enum": ["fast", "deep"]},
                    "ids": {"type": "array", "items": {"type": "integer"}},
                },
                "required": ["q"],
            },
        },
    }
    assert tools.get_tool_utils("default").tool_formatter([tool]) == (
        "You have access to the following tools:\n"
        "> Tool Name: search\nTool Description: Search\nTool Args:\n"
        "  - q (string, required): query\n"
        "  - mode (string): , should be one of [fast, deep]\n"
        "  - ids (array): , where each item should be integer\n\n"
        "Use the following format if using a tool:\n```\n"
        "Action: tool name (one of [search])\n"
        "Action Input: the input to the tool, in a JSON format representing the kwargs "
        '(e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
    )


@pytest.mark.parametrize(
    ("tool_format", "expected"),
    [
        ("default", 'Action: f\nAction Input: {"a": 1}'),
        ("qwen", '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'),
        ("llama3", '{"name": "f", "parameters": {"a": 1}}'),
        ("mistral", '[{"name": "f", "arguments": {"a": 1}}]'),
        ("glm4", 'f\n{"a": 1}'),
        ("minimax1", '<tool_calls>\n{"name": "f", "arguments": {"a": 1}}\n</tool_calls>'),
        ("minimax2", '<invoke name="f">\n<parameter name="a">1</parameter>\n</invoke>'),
        ("qwen3_5", "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>"),
        ("glm4_moe", "\n<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>"),
        (
            "seed_oss",
            "\n<seed:tool_call>\n<function=f\n<parameter=a>1</parameter>\n</function>\n</seed:tool_call>",
        ),
        ("ling", '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'),
        ("lfm2", "<|tool_call_start|>[f(a=1)]<|tool_call_end|>"),
        ("gemma4", "<|tool_call>call:f{a:1}<tool_call|>"),
    ],
)
def test_function_call_text_per_tool_format(tool_format: str, expected: str) -> None:
    calls = [tools.FunctionCall("f", '{"a": 1}')]
    assert tools.get_tool_utils(tool_format).function_formatter(calls) == expected


def test_every_tool_format_has_a_function_call_case() -> None:
    assert len(tools.TOOL_FORMAT_NAMES) == 13


def test_unknown_tool_format() -> None:
    with pytest.raises(ConfigError, match=r"unknown tool format 'nope' \(valid: default, .*qwen"):
        tools.get_tool_utils("nope")
    with pytest.raises(ConfigError, match="unknown tool format"):
        get_template("qwen", tool_format="nope")


# --- reasoning template -------------------------------------------------------------------------

COT_TURNS = [
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "<think>\nr1\n</think>\n\na1"},
    {"role": "user", "content": "q2"},
    {"role": "assistant", "content": "a2"},
    {"role": "user", "content": "q3"},
    {"role": "assistant", "content": "<think>\nr3\n</think>\n\na3"},
]


def test_qwen3_thinking_keeps_thoughts_and_adds_empty_ones() -> None:
    rendered = render(get_template("qwen3"), COT_TURNS)
    assert rendered[1] == ["<think>\nr1\n</think>\n\na1<|im_end|>\n"]
    assert rendered[3] == [THOUGHT, "a2<|im_end|>\n"]
    assert rendered[5] == ["<think>\nr3\n</think>\n\na3<|im_end|>\n"]


def test_qwen3_enable_thinking_false_moves_empty_thought_to_prompt() -> None:
    rendered = render(get_template("qwen3", enable_thinking=False), COT_TURNS)
    for prompt_index in (0, 2, 4):
        assert rendered[prompt_index] == [IM_USER.format(f"q{prompt_index // 2 + 1}"), THOUGHT]
    assert [rendered[i] for i in (1, 3, 5)] == [["a1<|im_end|>\n"], ["a2<|im_end|>\n"], ["a3<|im_end|>\n"]]


def test_qwen3_enable_thinking_none_keeps_thoughts_but_prompts_empty_ones() -> None:
    # LLaMA-Factory removes thoughts only for `is False`, but adds to the prompt for any falsy value.
    rendered = render(get_template("qwen3", enable_thinking=None), COT_TURNS)
    assert rendered[1] == ["<think>\nr1\n</think>\n\na1<|im_end|>\n"]
    assert rendered[2] == [IM_USER.format("q2"), THOUGHT]
    assert rendered[3] == ["a2<|im_end|>\n"]


def test_qwen3_discarding_history_cot() -> None:
    rendered = render(get_template("qwen3"), COT_TURNS, discarding_history_cot=True)
    assert rendered[1] == ["a1<|im_end|>\n"]  # history thought removed, no empty thought added
    assert rendered[3] == ["a2<|im_end|>\n"]
    assert rendered[5] == ["<think>\nr3\n</think>\n\na3<|im_end|>\n"]

    last_without_thought = [*COT_TURNS[:-1], {"role": "assistant", "content": "a3"}]
    rendered = render(get_template("qwen3"), last_without_thought, discarding_history_cot=True)
    assert rendered[5] == [THOUGHT, "a3<|im_end|>\n"]


def test_remove_thought_strips_leading_newlines() -> None:
    template = get_template("qwen3")
    assert template.remove_thought("<think>\nx\n</think>\n\n\n\nanswer") == "answer"
    assert template.add_thought("a") == "<think>\n\n</think>\n\na"


def test_qwen3_nothink_never_adds_thoughts() -> None:
    rendered = render(get_template("qwen3_nothink", enable_thinking=False), COT_TURNS)
    assert rendered[1] == ["<think>\nr1\n</think>\n\na1<|im_end|>\n"]
    assert rendered[3] == ["a2<|im_end|>\n"]


# --- get_template ---------------------------------------------------------------------------------


def test_get_template_returns_fresh_objects() -> None:
    first = get_template("qwen", default_system="changed", tool_format="default")
    first.stop_words.append("X")
    second = get_template("qwen")
    assert second.default_system == QWEN_SYSTEM
    assert second.stop_words == ["<|im_end|>"]
    assert second.format_function.slots == ["{{content}}<|im_end|>\n"]


def test_default_system_override() -> None:
    first = render(get_template("qwen", default_system="Hi."), TWO_TURNS)[0]
    assert first[0] == "<|im_start|>system\nHi.<|im_end|>\n"
    assert render(get_template("qwen", default_system=""), TWO_TURNS)[0] == [IM_USER.format("1+1=?")]


def test_unknown_template_lists_valid_names() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown template 'qwen4' \(valid: aeva, alpaca, .*qwen3_nothink, .*zephyr; or chat_template: the tokenizer's own\)",
    ):
        get_template("qwen4")


def test_train_on_prompt_rejected_with_efficient_eos(monkeypatch: pytest.MonkeyPatch) -> None:
    efficient = get_template("empty")
    efficient.efficient_eos = True
    monkeypatch.setitem(registry.TEMPLATES, "efficient", efficient)
    with pytest.raises(ConfigError, match="does not support train_on_prompt"):
        get_template("efficient", train_on_prompt=True)
    assert get_template("efficient").efficient_eos
    assert get_template("qwen", train_on_prompt=True).name == "qwen"


def test_thinking_options_only_apply_to_reasoning_templates() -> None:
    assert get_template("qwen3", enable_thinking=False, preserve_thinking=True).enable_thinking is False
    assert get_template("qwen3", preserve_thinking=True).preserve_thinking
    assert get_template("qwen", enable_thinking=False).enable_thinking is True


# --- malformed content -----------------------------------------------------------------------------


def test_non_string_content() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": 42}]
    with pytest.raises(DataError, match=r"field 'messages\[1\]\.content': expected a string, got int 42"):
        render(get_template("qwen"), messages)
    with pytest.raises(DataError, match=r"messages\[1\]\.content"):
        render(get_template("qwen3"), messages)


def test_invalid_tools_json() -> None:
    with pytest.raises(DataError, match="field 'tools': invalid JSON in tool description"):
        render(get_template("qwen"), TWO_TURNS, tools="[{not json")
    with pytest.raises(DataError, match="field 'tools': invalid tool description"):
        render(get_template("qwen"), TWO_TURNS, tools='{"name": "x"}')
    with pytest.raises(DataError, match="field 'tools'"):  # the default format needs "parameters"
        render(get_template("chatml"), TWO_TURNS, tools='[{"name": "x"}]')


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "invalid JSON in function message"),
        ('{"arguments": {}}', "invalid function call"),
        ('["a"]', "invalid function call"),
    ],
)
def test_invalid_function_call(content: str, match: str) -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "function", "content": content}]
    with pytest.raises(DataError, match=rf"field 'messages\[1\]\.content': {match}"):
        render(get_template("qwen"), messages)


def test_glm4_parallel_calls_are_a_data_error() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "function", "content": json.dumps([{"name": "a", "arguments": {}}] * 2)},
    ]
    with pytest.raises(DataError, match="GLM-4 does not support parallel functions"):
        render(get_template("empty", tool_format="glm4"), messages)


def test_render_needs_pairs() -> None:
    with pytest.raises(ValueError, match="pairs"):
        render(get_template("qwen"), TWO_TURNS[:3])


# --- special tokens and tokenizers --------------------------------------------------------------------


def test_token_slots_resolve_through_special_tokens(fixture_tokenizer: Any) -> None:
    template = get_template("empty")
    template.format_prefix = EmptyFormatter(slots=[{"token": "<|im_start|>"}])
    template.format_user = StringFormatter(slots=[{"token": "<|im_end|>"}, "{{content}}"])
    specials = SpecialTokens.from_tokenizer(fixture_tokenizer, tokens=["<|im_start|>", "<|im_end|>"])
    rendered = template.render(TWO_TURNS[:2], None, None, specials)
    assert rendered[0] == [
        fixture_tokenizer.convert_tokens_to_ids("<|im_start|>"),
        fixture_tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "1+1=?",
    ]
    with pytest.raises(ConfigError, match=re.escape("no token '<|im_start|>'")):
        template.render(TWO_TURNS[:2], None, None, SpecialTokens(None, None))


def test_encode_messages_concatenates_segment_ids(fixture_tokenizer: Any) -> None:
    template = get_template("qwen3")
    fix_tokenizer(template, fixture_tokenizer)
    specials = SpecialTokens.from_tokenizer(fixture_tokenizer, template.slot_tokens())
    encoded = template.encode_messages(
        lambda text: fixture_tokenizer.encode(text, add_special_tokens=False),
        COT_TURNS,
        "sys",
        None,
        specials=specials,
    )
    rendered = template.render(COT_TURNS, "sys", None, specials)
    expected = [
        [i for seg in segs for i in fixture_tokenizer.encode(seg, add_special_tokens=False)]
        for segs in rendered
    ]
    assert encoded == expected
    assert fixture_tokenizer.decode(encoded[3]) == THOUGHT + "a2<|im_end|>\n"
    assert pairs(encoded) == [(encoded[0], encoded[1]), (encoded[2], encoded[3]), (encoded[4], encoded[5])]


def test_fix_tokenizer_replaces_eos_and_sets_pad(fixture_tokenizer: Any) -> None:
    template = get_template("qwen")
    fix_tokenizer(template, fixture_tokenizer)
    assert fixture_tokenizer.eos_token == "<|im_end|>"
    assert fixture_tokenizer.pad_token == "<|im_end|>"
    # qwen keeps a tokenizer's own chat template, but the fixture has none, so it gets LLaMA-Factory's.
    assert fixture_tokenizer.chat_template.startswith("{% set system_message = 'You are Qwen")


def test_fix_tokenizer_adds_stop_words(fixture_tokenizer: Any) -> None:
    template = get_template("llama3")
    before = len(fixture_tokenizer)
    fix_tokenizer(template, fixture_tokenizer)
    assert fixture_tokenizer.eos_token == "<|eot_id|>"
    ids = fixture_tokenizer.encode("<|eom_id|>", add_special_tokens=False)
    assert len(ids) == 1
    assert len(fixture_tokenizer) >= before


def test_jinja_template_renders_like_the_template(fixture_tokenizer: Any) -> None:
    template = get_template("chatml", default_system="Sys 'q'")
    fix_tokenizer(template, fixture_tokenizer)
    text = fixture_tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    rendered = render(template, TWO_TURNS)
    assert text == "".join(seg for segs in rendered for seg in segs)

    llama2 = get_template("llama2")  # keeps an existing chat template (replace_jinja_template=False)
    fix_tokenizer(llama2, fixture_tokenizer)
    assert fixture_tokenizer.chat_template.startswith("{% set system_message = 'Sys \\'q\\'' %}")


def test_llama2_jinja_fuses_system(fixture_tokenizer: Any) -> None:
    template = get_template("llama2")
    fix_tokenizer(template, fixture_tokenizer)
    text = fixture_tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, *TWO_TURNS], tokenize=False
    )
    assert text == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n1+1=? [/INST]2</s><s>[INST] 2+2=? [/INST]4</s>"


# --- template unset, listing ------------------------------------------------------------------------


class _ChatTemplateTokenizer:
    """A stand-in with LLaMA-Factory's view of a tokenizer: encode/decode and a jinja chat template."""

    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template

    def encode(self, text: str) -> list[int]:
        return []

    def decode(self, ids: list[int]) -> str:
        return ""

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool, tokenize: bool
    ) -> str:
        import jinja2

        return jinja2.Template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )


CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_template_unset_parses_the_tokenizer_chat_template() -> None:
    template = get_template(None, tokenizer=_ChatTemplateTokenizer(CHATML_JINJA))
    assert not isinstance(template, templates.ReasoningTemplate)
    assert render(template, TWO_TURNS) == EXPECTED_TWO_TURNS["chatml"]


def test_template_unset_detects_reasoning() -> None:
    jinja = CHATML_JINJA.replace(
        "{{ m['content'] }}",
        "{% if m['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}",
    )
    template = get_template(None, tokenizer=_ChatTemplateTokenizer(jinja), enable_thinking=False)
    assert isinstance(template, templates.ReasoningTemplate) and template.enable_thinking is False


def test_template_unset_without_chat_template_is_empty(caplog: pytest.LogCaptureFixture) -> None:
    template = get_template(None, tokenizer=_ChatTemplateTokenizer(None))
    assert template.name == "empty"
    assert "use `empty` template" in caplog.text


def test_listing_names_templates_and_tool_formats() -> None:
    listing = registry.list_templates()
    assert listing["templates"] == TEMPLATE_NAMES and "gemma4" in listing["templates"]
    assert listing["tool_formats"] == tuple(sorted(tools.TOOL_FORMAT_NAMES))


_slot_texts = st.lists(
    st.sampled_from(["", "a", "{{content}}", "{{idx}}", "{{other}}", "{{", "}}", " x ", "\n"]), max_size=5
).map("".join)
_slots = st.lists(
    st.one_of(
        _slot_texts,
        st.just({"bos_token"}),
        st.just({"eos_token"}),
        st.just({"token": "<|im_end|>"}),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    slots=_slots,
    content=_slot_texts,
    idx=st.one_of(st.none(), st.sampled_from(["0", "3", "{{content}}"])),
    bos=st.one_of(st.none(), st.just(1)),
    eos=st.one_of(st.none(), st.just(2)),
)
def test_compiled_slots_equal_apply_then_segments(slots, content, idx, bos, eos):
    specials = templates.SpecialTokens(bos, eos, {"<|im_end|>": 7})
    if not formatters._has_placeholder(slots):
        formatter: formatters.Formatter = formatters.EmptyFormatter(slots=slots)
        kwargs: dict[str, str] = {}
    else:
        formatter = formatters.StringFormatter(slots=slots)
        kwargs = {"content": content} if idx is None else {"content": content, "idx": idx}
    expected = templates._slots_to_segments(formatter.apply(**kwargs), specials)
    compiled = templates._CompiledSlots(formatter, specials)
    assert compiled.segments(kwargs.get("content", ""), kwargs.get("idx")) == expected
