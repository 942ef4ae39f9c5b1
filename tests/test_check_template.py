"""``fastsft check-template``: LF renderings against a sandboxed jinja chat template, differences
counted by kind, exit status, one-line template failures, the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastsft.cli import main
from fastsft.data.sources.converter import Conversation
from fastsft.template_check import (
    OTHER,
    STOP_TOKEN,
    SYSTEM_DEFAULT,
    THINKING,
    TOOL_CALL,
    WHITESPACE,
    JinjaChatTemplate,
    TemplateError,
    chat_messages,
    classify,
    first_difference,
)

BASE = Path(__file__).parent / "data" / "chat_templates" / "qwen_like.jinja"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture
def check(
    test_data_dir: Path, fixture_tokenizer_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Run ``fastsft check-template`` with LF's ``qwen`` on a test dataset against ``template``
    text; returns (exit status, stdout, stderr)."""

    def run(template: str, dataset: str = "sharegpt_chat", *flags: str) -> tuple[int, str, str]:
        path = tmp_path / "template.jinja"
        path.write_text(template, encoding="utf-8")
        status = main(
            [
                "check-template",
                "--dataset",
                dataset,
                "--dataset-dir",
                str(test_data_dir),
                "--tokenizer",
                str(fixture_tokenizer_path),
                "--template",
                "qwen",
                "--chat-template",
                str(path),
                *flags,
            ]
        )
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def base() -> str:
    return BASE.read_text(encoding="utf-8")


def counts(out: str) -> dict[str, int]:
    """The ``  kind: N`` lines of a report."""
    found = {}
    for line in out.splitlines():
        if line.startswith("  ") and not line.startswith("  skipped") and ": " in line and line[2] != " ":
            kind, _, number = line.strip().rpartition(": ")
            if number.isdigit():
                found[kind] = int(number)
    return found


def test_identical_renderings_exit_zero(check) -> None:
    status, out, err = check(base(), "sharegpt_chat,alpaca_mix")
    assert status == 0, out + err
    assert " 0 differ" in out
    assert counts(out) == {}


def test_lf_qwen_equals_trls_qwen2_5_template_with_tool_calls(
    test_data_dir: Path, fixture_tokenizer_path: Path, capsys
) -> None:
    """LF's ``qwen`` and the original Qwen2.5 template (TRL's copy) render tools, calls and
    observations identically: the tool-call conversion to transformers' messages is right."""
    import trl

    jinja = Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja"
    args = ["--dataset", "sharegpt_tools", "--dataset-dir", str(test_data_dir)]
    args += ["--tokenizer", str(fixture_tokenizer_path), "--template", "qwen", "--chat-template", str(jinja)]
    status = main(["check-template", *args])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "6 samples, 6 identical" in out


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ((QWEN_SYSTEM, "You are a helpful assistant."), SYSTEM_DEFAULT),
        (("{{ message.content }}<|im_end|>\n", "{{ message.content }}<|im_end|>\n\n"), WHITESPACE),
        (
            ("{{ message.content }}<|im_end|>\n{% endfor %}", "{{ message.content }}</s>\n{% endfor %}"),
            STOP_TOKEN,
        ),
        (
            (
                "<|im_start|>{{ message.role }}\n",
                "<|im_start|>{{ message.role }}\n{% if message.role == 'assistant' %}<think>\n\n</think>\n\n{% endif %}",
            ),
            THINKING,
        ),
        (("<|im_start|>{{ message.role }}\n", "<|im_start|>{{ message.role | upper }}\n"), OTHER),
    ],
    ids=["system", "whitespace", "stop", "thinking", "other"],
)
def test_each_kind_of_difference_is_detected_and_classified(
    check, change: tuple[str, str], kind: str
) -> None:
    old, new = change
    assert old in base()
    status, out, err = check(base().replace(old, new))
    assert status == 1, out + err
    found = counts(out)
    assert list(found) == [kind], out
    assert f"== {kind}: dataset sharegpt_chat, sample #" in out
    assert "  LF   : " in out and "  jinja: " in out


def test_tool_call_format_difference(check) -> None:
    """The first difference is in the tool listing of a sample with tools (the two samples without
    tools or calls render identically)."""
    template = base().replace(
        "<|im_start|>system\nYou are Qwen",
        "<|im_start|>system\n{% if tools %}Tools: {{ tools | tojson }}\n{% endif %}You are Qwen",
    )
    status, out, err = check(template, "sharegpt_tools")
    assert status == 1, out + err
    assert "6 samples, 2 identical, 4 differ" in out
    assert counts(out) == {TOOL_CALL: 4}, out
    assert f"== {TOOL_CALL}: dataset sharegpt_tools, sample #0: first difference at token" in out


def test_examples_are_limited_per_kind(check) -> None:
    status, out, _ = check(base().replace(QWEN_SYSTEM, "Hi."), "sharegpt_chat", "--examples", "1")
    assert status == 1
    assert out.count(f"== {SYSTEM_DEFAULT}:") == 1
    assert counts(out)[SYSTEM_DEFAULT] > 1


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (
            "{% for m in messages %}{% if m.content == 'Hello there!' %}{{ raise_exception('no greetings') }}"
            "{% endif %}{{ m.content }}{% endfor %}",
            "raised: no greetings",
        ),
        (
            "{% for m in messages %}{{ m.contnet }}{% endfor %}",
            "reads an undefined field: 'dict object' has no attribute 'contnet'",
        ),
        (
            "{% for m in mesages %}{{ m.content }}{% endfor %}",
            "reads an undefined field: 'mesages' is undefined",
        ),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused by the sandbox"),
        ("{{ messages.append(messages[0]) }}", "refused by the sandbox"),
        ("{{ 'x' * 100000000 }}", "refused by the sandbox"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed too deeply"),
    ],
    ids=[
        "raises",
        "undefined-attribute",
        "undefined-variable",
        "python-internals",
        "mutation",
        "huge-string",
        "recursion",
    ],
)
def test_a_bad_template_fails_in_one_line_naming_the_sample(check, template: str, reason: str) -> None:
    status, out, err = check(template)
    assert status == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastsft check-template: error: chat template ")
    assert "dataset sharegpt_chat, sample #" in lines[0]
    assert reason in lines[0]


def test_the_failing_sample_is_the_one_named(check) -> None:
    """Sample #1 is the first with the reply 'Hello there!'."""
    template = "{% for m in messages %}{% if m.content == 'Hello there!' %}{{ raise_exception('x') }}{% endif %}{% endfor %}"
    _, _, err = check(template)
    assert "dataset sharegpt_chat, sample #1:" in err


def test_a_template_that_loops_is_stopped(check) -> None:
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    status, _, err = check(template, "sharegpt_chat", "--timeout", "0.3")
    assert status == 2
    assert "sample #0: ran past its 0.3 s time limit" in err


def test_the_deadline_holds_off_the_main_thread() -> None:
    """Without the timer signal (not the main thread) the environment's per-call deadline stops a loop that calls."""
    import threading

    jinja = JinjaChatTemplate(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i.bit_length() }}{% endfor %}{% endfor %}",
        "loop",
        timeout=0.2,
    )
    errors: list[Exception] = []

    def render() -> None:
        try:
            jinja.render("sample #0", messages=[])
        except TemplateError as err:
            errors.append(err)

    thread = threading.Thread(target=render)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert errors and "time limit" in str(errors[0])


def test_a_runtime_failure_names_the_template_line() -> None:
    jinja = JinjaChatTemplate("first\n{{ raise_exception('bad role') }}", "t.jinja")
    with pytest.raises(TemplateError, match=r"^chat template t.jinja, line 2: sample #4: raised: bad role$"):
        jinja.render("sample #4", messages=[])


def test_a_template_with_a_syntax_error_names_its_line() -> None:
    with pytest.raises(TemplateError, match=r"chat template t.jinja, line 2: "):
        JinjaChatTemplate("ok\n{% if %}", "t.jinja")


def test_generation_markers_render_their_body() -> None:
    jinja = JinjaChatTemplate(
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}", "t"
    )
    assert jinja.render("s", messages=[{"role": "assistant", "content": "hi"}]) == "hi"


def test_chat_messages_converts_tool_calls_and_observations() -> None:
    conv = Conversation(
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "function", "content": '{"name": "w", "arguments": {"city": "Paris"}}'},
            {"role": "observation", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
        system="be brief",
        tools='[{"name": "w", "parameters": {}}]',
        fields=["c[0].value", "c[1].value", "c[2].value", "c[3].value"],
    )
    messages, tools = chat_messages(conv)
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    assert tools == [{"type": "function", "function": {"name": "w", "parameters": {}}}]
    as_json, _ = chat_messages(conv, arguments_as_json=True)
    assert as_json[2]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'


# classify on characters as tokens: each rule alone, and the order between them.
def chars(text: str) -> list[int]:
    return [ord(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(map(chr, ids))


STOP = {ord("$")}


def kind_of(lf: str, jinja: str, conv: Conversation, with_default_system: str | None = None) -> str:
    a, b = chars(lf), chars(jinja)
    position = first_difference(a, b)
    assert position is not None
    rerender = None if with_default_system is None else (lambda: chars(with_default_system))
    return classify(a, b, position, conv, decode, STOP, rerender)


def conversation(
    *contents: str, roles: tuple[str, ...] = (), system: str | None = None, tools: str | None = None
) -> Conversation:
    roles = roles or tuple("user" if i % 2 == 0 else "assistant" for i in range(len(contents)))
    return Conversation(
        messages=[{"role": r, "content": c} for r, c in zip(roles, contents)],
        system=system,
        tools=tools,
        fields=[f"m[{i}]" for i in range(len(contents))],
    )


def test_classify_rules() -> None:
    chat = conversation("hi", "yo")
    assert kind_of("[S:default][U:hi][A:yo]$", "[U:hi][A:yo]$", chat) == SYSTEM_DEFAULT
    assert kind_of("[U:hi][A:yo]$", "[U:hi][A:yo]\n", chat) == STOP_TOKEN
    assert kind_of("[U:hi][A:yo]", "[U:hi][A:yo]$$", chat) == STOP_TOKEN  # one ends, the other has only stops
    assert kind_of("[U:hi][A:yo]", "[U:hi][A:yo]\n\n", chat) == WHITESPACE
    assert kind_of("[U:hi]\n[A:yo]", "[U:hi][A:yo]", chat) == WHITESPACE
    assert kind_of("[U:hi][A:yo]", "[U:hi][A:<think></think>yo]", chat) == THINKING
    assert kind_of("[U:hi][A:yo]", "[U:hi][B:yo]", chat) == OTHER
    assert (
        kind_of("[S:mine][U:hi][A:yo]", "[S:Mine][U:hi][A:yo]", conversation("hi", "yo", system="mine"))
        == OTHER
    )
    tools = conversation(
        "hi", '{"name": "f"}', "out", "ok", roles=("user", "function", "observation", "assistant")
    )
    assert kind_of("[U:hi][C:f()][O:out][A:ok]", '[U:hi][C:{"f"}][O:out][A:ok]', tools) == TOOL_CALL
    assert kind_of("[U:hi][C:f()][O:out][A:ok]", "[U:hi][C:f()][T:out][A:ok]", tools) == TOOL_CALL
    with_tools = conversation("hi", "yo", tools='[{"name": "f"}]')
    assert kind_of("[S:tools f][U:hi][A:yo]", "[S:f tools][U:hi][A:yo]", with_tools) == TOOL_CALL


def test_system_default_when_lfs_default_given_to_the_jinja_moves_the_difference() -> None:
    """Where LF's template has a default system prompt, the jinja is rendered again with it as the
    sample's own: the difference was the default only if that removes it or moves it later."""
    chat = conversation("hi", "yo")
    lf = "[S:default][U:hi][A:yo]"
    assert kind_of(lf, "[S:other][U:hi][A:yo]", chat, with_default_system=lf) == SYSTEM_DEFAULT
    assert (
        kind_of(lf, "[S:other][USER:hi][A:yo]", chat, with_default_system="[S:default][USER:hi][A:yo]")
        == SYSTEM_DEFAULT
    )
    assert (
        kind_of(lf, "[S:default][V:hi][A:yo]", chat, with_default_system="[S:default][V:hi][A:yo]") == OTHER
    )


def test_classify_rule_order() -> None:
    """A stop token wins over thinking, thinking over whitespace, whitespace over where it is."""
    chat = conversation("hi", "yo")
    assert kind_of("[U:hi][A:yo]$<think>", "[U:hi][A:yo]\n<think>", chat) == STOP_TOKEN
    assert kind_of("[U:hi][A:yo]", "[U:hi][A:\n<think></think>yo]", chat) == THINKING
    assert kind_of("[S:x][U:hi][A:yo]", "[S:x]\n[U:hi][A:yo]", chat) == WHITESPACE  # not system default


def test_the_tokenizers_own_chat_template_is_the_default(
    test_data_dir: Path, fixture_tokenizer_path: Path, tmp_path: Path, capsys
) -> None:
    """Without --chat-template the tokenizer's template is read as loaded, before LF's fixes."""
    import json
    import shutil

    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(fixture_tokenizer_path, tokenizer)
    config = json.loads((tokenizer / "tokenizer_config.json").read_text(encoding="utf-8"))
    args = ["check-template", "--dataset", "sharegpt_chat", "--dataset-dir", str(test_data_dir)]
    args += ["--tokenizer", str(tokenizer), "--template", "qwen"]

    assert main(args) == 2
    assert "the tokenizer has no chat template; give one with --chat-template FILE" in capsys.readouterr().err

    config["chat_template"] = base()
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert main(args) == 0
    assert "11 samples, 11 identical, 0 differ" in capsys.readouterr().out
