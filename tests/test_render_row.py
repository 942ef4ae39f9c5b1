"""``render_row`` (compiled and reference) against the readable path it shortcuts.

Property: for any raw row, dataset attributes and template, ``render_row`` either appends exactly
what ``convert`` then ``Template.render`` give (laid out by ``SegmentBatch.add``) and returns
True, or appends nothing and returns False; the compiled kernel and the reference agree on both.
Rows are drawn to hit every reason the shortcut must leave a row alone (dropped, malformed, tools,
media, KTO, leading system messages, odd role orders, non-string values, placeholder text in the
content). The last tests check it takes the rows real datasets are made of, so the property
cannot hold by declining everything.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import FIXTURE_TOKENIZER_DIR, load_tokenizer
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fastsft.data.chat.registry import TEMPLATE_NAMES, TEMPLATES
from fastsft.data.chat.template import SpecialTokens, Template
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import prepare_run
from fastsft.data.rows.rendering import render_plan
from fastsft.data.sources.converter import Dropped, convert
from fastsft.data.sources.parser import DatasetAttr
from fastsft.errors import DataError
from fastsft.kernels import compiled, reference
from fastsft.kernels.types import SegmentBatch

_TEMPLATES: dict[str, tuple[Template, SpecialTokens]] = {}


def template_for(name: str) -> tuple[Template, SpecialTokens]:
    """``name``'s template and the specials its encoder renders with, over the fixture tokenizer
    fixed for it (made once per name)."""
    if name not in _TEMPLATES:
        run = prepare_run(DataArgs(template=name), load_tokenizer(FIXTURE_TOKENIZER_DIR), fingerprint=False)
        _TEMPLATES[name] = (run.template, run.encoder(encode_path="python").specials)
    return _TEMPLATES[name]


DEFAULT = DatasetAttr(load_from="file", dataset_name="d.json", formatting="sharegpt", name="d")
ATTRS = [
    DEFAULT,
    DatasetAttr(
        load_from="file",
        dataset_name="d.json",
        formatting="sharegpt",
        system="system",
        tools="tools",
        images="images",
        kto_tag="kto",
        name="d",
    ),
    DatasetAttr(  # OpenAI-style tags read as ShareGPT
        load_from="file",
        dataset_name="d.json",
        formatting="sharegpt",
        messages="messages",
        role_tag="role",
        content_tag="content",
        user_tag="user",
        assistant_tag="assistant",
        observation_tag="tool",
        system_tag="system",
        system="system",
        name="d",
    ),
    DatasetAttr(  # a tag shared by two roles (the later one wins), and no system tag
        load_from="file",
        dataset_name="d.json",
        formatting="sharegpt",
        observation_tag="human",
        system_tag=None,
        name="d",
    ),
    DatasetAttr(load_from="file", dataset_name="d.json", formatting="alpaca", name="d"),
]

# The templates of the plain class, which get a plan; test_no_plan_where_rendering_is_the_templates_own
# covers the others.
PLAIN_TEMPLATES = [name for name in TEMPLATE_NAMES if name in TEMPLATES and type(TEMPLATES[name]) is Template]
TAGS = ["human", "gpt", "observation", "function_call", "system", "user", "assistant", "tool", "bot"]
PIECES = ["Hello", " world", "\n", "", "{{content}}", "{{idx}}", "<|im_start|>", "你好", "😀", "  "]
texts = st.lists(st.sampled_from(PIECES), max_size=4).map("".join)
odd_values = st.one_of(st.none(), st.integers(0, 3), st.booleans(), st.lists(st.just("x"), max_size=2), texts)


@st.composite
def messages(draw: st.DrawFn, attr: DatasetAttr) -> list[Any]:
    """Prompt/response messages with ``attr``'s tags; a third of the time one thing is wrong with them."""
    role_key, content_key = attr.role_tag or "from", attr.content_tag or "value"
    # Function calls have no plain slots, so a row with one is always left to the readable path.
    prompt_tags = [tag for tag in (*[attr.user_tag] * 3, attr.observation_tag) if tag]
    response_tags = [tag for tag in (*[attr.assistant_tag] * 5, attr.function_tag) if tag]
    out: list[Any] = []
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 2, 3]))):
        out.append({role_key: draw(st.sampled_from(prompt_tags)), content_key: draw(texts)})
        out.append({role_key: draw(st.sampled_from(response_tags)), content_key: draw(texts)})
    if out and draw(st.integers(0, 2)) == 0:
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.integers(0, 5))
        if kind == 0:
            out[at] = draw(odd_values)
        elif kind == 1:
            out[at][role_key] = draw(st.one_of(st.sampled_from(TAGS), odd_values))
        elif kind == 2:
            out[at][content_key] = draw(odd_values)
        elif kind == 3:
            del out[at][draw(st.sampled_from([role_key, content_key]))]
        elif kind == 4:
            del out[at]
        else:
            out.insert(at, {role_key: draw(st.sampled_from(TAGS)), content_key: draw(texts)})
    return out


@st.composite
def rows(draw: st.DrawFn, attr: DatasetAttr) -> Any:
    """A raw row for ``attr``: its messages, maybe a leading system message, the other columns
    mostly as datasets have them and sometimes not."""
    if draw(st.integers(0, 49)) == 0:
        return draw(odd_values)
    role_key, content_key = attr.role_tag or "from", attr.content_tag or "value"
    conversation = draw(messages(attr))
    if draw(st.integers(0, 3)) == 0:
        conversation.insert(0, {role_key: "system", content_key: draw(st.one_of(texts, texts, odd_values))})
    row: dict[str, Any] = {attr.messages or "conversations": conversation}
    if draw(st.integers(0, 29)) == 0:
        row[attr.messages or "conversations"] = draw(odd_values)
    if draw(st.booleans()):
        row["system"] = draw(st.one_of(texts, texts, texts, odd_values))
    for column in ("tools", "images", "kto", "instruction", "output"):
        if draw(st.integers(0, 9)) == 0:
            row[column] = draw(st.one_of(texts, odd_values))
    return row


EARLIER = [[1, "a"], ["b"]]  # a sample already in the batch: kernels append after it, as mid-batch


def readable(row: Any, attr: DatasetAttr, template: Template, specials: SpecialTokens) -> SegmentBatch | None:
    """``EARLIER`` then what ``convert`` and ``Template.render`` make of ``row``; None where either refuses it."""
    try:
        conv = convert(row, attr)
        if isinstance(conv, Dropped):
            return None
        rendered = template.render(conv.messages, conv.system, conv.tools, specials)
    except (DataError, ValueError, AttributeError, TypeError):  # every way the readable path refuses a row
        return None
    out = SegmentBatch()
    out.add(EARLIER)
    out.add(rendered)
    return out


def layout(batch: SegmentBatch) -> tuple[list[Any], ...]:
    return (
        batch.texts,
        batch.segment_texts,
        batch.special_ids,
        batch.message_segments,
        batch.sample_messages,
    )


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), template_name=st.sampled_from(PLAIN_TEMPLATES), attr=st.sampled_from(ATTRS))
def test_render_row_is_convert_then_render(
    data: st.DataObject, template_name: str, attr: DatasetAttr
) -> None:
    template, specials = template_for(template_name)
    plan = render_plan(attr, template, specials)
    if plan is None:  # alpaca formatting
        return
    row = data.draw(rows(attr))
    before = SegmentBatch()
    before.add(EARLIER)
    results = {}
    for name, kernels in (("compiled", compiled), ("reference", reference)):
        out = SegmentBatch()
        out.add(EARLIER)
        results[name] = (kernels.render_row(row, plan, out), layout(out))
    assert results["compiled"] == results["reference"]
    taken, got = results["compiled"]
    event("taken" if taken else "left to the readable path")
    if not taken:
        assert got == layout(before)
        return
    expected = readable(row, attr, template, specials)
    assert expected is not None, "render_row took a row the readable path refuses"
    assert got == layout(expected)


def plain_row(turns: int, system: str | None = None) -> dict[str, Any]:
    conversation = []
    for turn in range(turns):
        conversation += [
            {"from": "human", "value": f"question {turn} {{{{content}}}}"},
            {"from": "gpt", "value": f"answer {turn}"},
        ]
    row: dict[str, Any] = {"conversations": conversation}
    if system is not None:
        row["system"] = system
    return row


@pytest.mark.parametrize(
    "template_name", ["qwen", "llama3", "chatml", "vicuna", "alpaca", "default", "empty"]
)
def test_render_row_takes_plain_rows(template_name: str) -> None:
    """The rows datasets are made of take the compiled step on the templates most runs use."""
    template, specials = template_for(template_name)
    attr = ATTRS[1]
    plan = render_plan(attr, template, specials)
    assert plan is not None
    for row in (plain_row(1), plain_row(3, system="Be brief."), plain_row(2, system="")):
        out = SegmentBatch()
        out.add(EARLIER)
        assert compiled.render_row(row, plan, out)
        expected = readable(row, attr, template, specials)
        assert expected is not None and layout(out) == layout(expected)


def test_plans_cover_most_templates() -> None:
    """Templates of the plain class get a full plan (82 of the 121 do, with LLaMA-Factory 0.9.5's slots)."""
    full = [
        name
        for name in TEMPLATE_NAMES
        if (plan := render_plan(DEFAULT, *template_for(name))) is not None
        and plan.role_parts[0] is not None
        and plan.role_parts[1] is not None
    ]
    assert len(full) >= len(TEMPLATE_NAMES) // 2, full


def test_no_plan_where_rendering_is_the_templates_own() -> None:
    """Reasoning and Llama 2 templates render in their own way; alpaca rows are converted differently."""
    for name in ("qwen3", "llama2", "mistral", "deepseekr1"):
        assert render_plan(DEFAULT, *template_for(name)) is None
    assert render_plan(ATTRS[4], *template_for("qwen")) is None


def test_compiled_refuses_a_plan_of_another_shape() -> None:
    with pytest.raises(TypeError, match="RenderPlan"):
        compiled.render_row({"conversations": []}, (), SegmentBatch())
