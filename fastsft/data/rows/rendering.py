"""Raw rows → segments in one step: the plan the kernels' ``render_row`` follows for a dataset and template.

Converting a ShareGPT row (``fastsft.data.sources.converter``) and rendering it
(``Template.render``) cost more than tokenizing it, almost all of it interpreter overhead per
message. For the rows that make up nearly every dataset, the two steps reduce to a few lookups
and string fills, which ``render_row`` does in one compiled call per row::

    row {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], "system": s}
      │ render_row(row, plan, out)          plan: columns and tags of the dataset,
      ▼                                           the template's slots for the tokenizer
    out.texts += ["<|im_start|>system\\n" + s + "<|im_end|>\\n", "<|im_start|>user\\n" + q ...]
    out.segment_texts, out.special_ids, out.message_segments, out.sample_messages  (the layout)

A row is taken only when the readable path would give a conversation the plan can render: a
ShareGPT dataset, a template of the plain ``Template`` class, no tools, no media, no KTO tag,
string contents, an even number of messages whose roles alternate as LLaMA-Factory requires, and
for each role met (and a system text, if any) slots that are fixed text, special tokens and
``{{content}}``/``{{idx}}`` placeholders. Every other row, and every row on a dataset or template
without a plan, goes through ``convert`` and ``Template.render``, which also name what is wrong
with it. Both give the same segments (``tests/test_render_row.py``).
"""

from __future__ import annotations

from fastsft.data.chat.template import SpecialTokens, Template
from fastsft.data.sources.converter import tag_mapping
from fastsft.data.sources.parser import DatasetAttr
from fastsft.kernels.types import SLOT_ROLES, RenderPlan

__all__ = ["render_plan"]


def render_plan(attr: DatasetAttr, template: Template, specials: SpecialTokens) -> RenderPlan | None:
    """The plan for ``attr``'s rows under ``template`` with ``specials``, or ``None`` when no row of
    it can take the compiled step (not ShareGPT, a template class with its own rendering, unusual
    column names)."""
    if attr.formatting != "sharegpt" or attr.ranking:
        return None
    slots = template.plain_slots(specials)
    if slots is None:
        return None
    if not all(isinstance(name, str) and name for name in (attr.messages, attr.role_tag, attr.content_tag)):
        return None
    prefix, system_parts, role_parts = slots
    mapping = tag_mapping(attr)

    def roles(*tags: str | None) -> dict[str, int]:
        """The tags allowed at a position, with the slots of the role each stands for."""
        return {
            tag: SLOT_ROLES.index(mapping[tag])
            for tag in tags
            if isinstance(tag, str) and mapping[tag] in SLOT_ROLES
        }

    assert attr.messages and attr.role_tag and attr.content_tag  # checked above, for the type checker
    return RenderPlan(
        messages=attr.messages,
        role_tag=attr.role_tag,
        content_tag=attr.content_tag,
        system_tag=attr.system_tag or None,
        system_column=attr.system or None,
        tools_column=attr.tools or None,
        kto_tag=attr.kto_tag or None,
        media_columns=tuple(column for column in (attr.images, attr.videos, attr.audios) if column),
        prompt_roles=roles(attr.user_tag, attr.observation_tag),
        response_roles=roles(attr.assistant_tag, attr.function_tag),
        role_parts=role_parts,
        prefix=prefix,
        system_parts=system_parts,
        default_system=template.default_system,
    )
