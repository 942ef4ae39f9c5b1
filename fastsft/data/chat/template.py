"""Chat templates: messages → segments, exactly as LLaMA-Factory 0.9.5 lays them out.

A port of the text-only part of LLaMA-Factory's ``data/template.py`` (the classes,
``parse_template`` and the tokenizer fixes; the registrations are in ``registry``).
``Template.render`` returns, per message, the *segments* LLaMA-Factory tokenizes one at a
time: a non-empty ``str`` (encoded on its own with ``add_special_tokens=False``) or an ``int``
(a special-token id). Concatenating the encoded segments of a message gives LLaMA-Factory's
``encode_multiturn`` ids for that message, so the tokenizer backend is free to batch the strings.

Malformed content (non-string text, bad tools JSON, bad function-call JSON) raises
``DataError`` with the field it came from; LLaMA-Factory raises ``RuntimeError`` on the same input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastsft.data.chat.formatter import (
    EmptyFormatter,
    Formatter,
    FunctionFormatter,
    Slot,
    StringFormatter,
    ToolFormatter,
)
from fastsft.errors import ConfigError, DataError
from fastsft.kernels.types import SLOT_ROLES, Part

__all__ = [
    "Glm47ReasoningTemplate",
    "Llama2Template",
    "ReasoningTemplate",
    "Segment",
    "SpecialTokens",
    "Template",
    "fix_tokenizer",
    "parse_template",
]

logger = logging.getLogger(__name__)

Segment = str | int
"""A piece of a rendered message: text to tokenize on its own, or a special-token id."""


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a fixed tokenizer gives the special slots, so rendering needs no tokenizer."""

    bos_token_id: int | None
    eos_token_id: int | None
    token_ids: Mapping[str, int | None] = field(default_factory=dict)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, tokens: Iterable[str] = ()) -> SpecialTokens:
        """Read bos/eos ids and the ids of ``tokens`` (a template's ``slot_tokens()``)."""
        names = tuple(tokens)
        return cls(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            token_ids={name: tokenizer.convert_tokens_to_ids(name) for name in names},
        )

    def token_id(self, token: str) -> int:
        """The id of a ``{"token": ...}`` slot."""
        token_id = self.token_ids.get(token)
        if token_id is None:
            raise ConfigError(f"the tokenizer has no token '{token}' that the template needs")

        return token_id


def _slots_to_segments(elements: Sequence[Slot], specials: SpecialTokens) -> list[Segment]:
    """LLaMA-Factory's ``_convert_elements_to_ids`` without the tokenizer: strings stay text."""
    segments: list[Segment] = []
    for elem in elements:
        if isinstance(elem, str):
            if len(elem) != 0:
                segments.append(elem)
        elif isinstance(elem, dict):
            segments.append(specials.token_id(elem["token"]))
        elif isinstance(elem, set):
            if "bos_token" in elem and specials.bos_token_id is not None:
                segments.append(specials.bos_token_id)
            elif "eos_token" in elem and specials.eos_token_id is not None:
                segments.append(specials.eos_token_id)
        else:
            raise TypeError(f"Input must be string, set[str] or dict[str, str], got {type(elem)}")

    return segments


class _CompiledSlots:
    """A ``StringFormatter``'s or ``EmptyFormatter``'s slots turned into segments once per tokenizer.

    Equal to ``_slots_to_segments(formatter.apply(content=..., idx=...), specials)``: special slots
    and fixed text are resolved ahead, and only the slots with a ``{{`` are filled per message
    (``content`` first, then ``idx``, as ``StringFormatter.apply`` replaces them in keyword order).
    """

    __slots__ = ("formatter", "parts", "specials")

    def __init__(self, formatter: Formatter, specials: SpecialTokens) -> None:
        self.formatter, self.specials = formatter, specials
        # Each part is a segment as it is (int, or text without "{{") or a one-element list
        # holding text with placeholders to fill.
        self.parts: list[Segment | list[str]] = []
        for slot in formatter.slots:
            if isinstance(slot, str) and "{{" in slot:
                self.parts.append([slot])
            else:
                self.parts += _slots_to_segments([slot], specials)

    def segments(self, content: str, idx: str | None = None) -> list[Segment]:
        segments: list[Segment] = []
        for part in self.parts:
            if part.__class__ is list:
                text = part[0].replace("{{content}}", content, 1)
                if idx is not None:
                    text = text.replace("{{idx}}", idx, 1)
                if text:
                    segments.append(text)
            else:
                segments.append(part)
        return segments


def _compilable(formatter: Formatter) -> bool:
    """Whether the formatter's output is its slots with placeholders filled (no own ``apply``)."""
    return type(formatter) in (StringFormatter, EmptyFormatter)


def _content_field(index: int) -> str:
    return f"messages[{index}].content"


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Even count of messages with string content: what ``convert`` guarantees and rendering needs."""
    if len(messages) == 0 or len(messages) % 2 != 0:
        raise ValueError(f"render needs (prompt, response) pairs of messages, got {len(messages)} messages")

    for i, message in enumerate(messages):
        if not isinstance(message["content"], str):
            content = message["content"]
            raise DataError(
                f"expected a string, got {type(content).__name__} {content!r}", field=_content_field(i)
            )


@dataclass
class Template:
    """A chat template: LLaMA-Factory's slots and options for one model family."""

    name: str
    format_user: Formatter
    format_assistant: Formatter
    format_system: Formatter
    format_function: Formatter
    format_observation: Formatter
    format_tools: Formatter
    format_prefix: Formatter
    default_system: str
    stop_words: list[str]
    thought_words: tuple[str, str]
    tool_call_words: tuple[str, str]
    efficient_eos: bool
    replace_eos: bool
    replace_jinja_template: bool
    enable_thinking: bool | None
    preserve_thinking: bool
    mm_plugin: str = "base"
    # Formatters compiled for a tokenizer's specials, by id(formatter) (see ``_compiled``).
    _compiled_slots: dict[int, _CompiledSlots] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        system: str | None,
        tools: str | None,
        specials: SpecialTokens,
        *,
        discarding_history_cot: bool = False,
    ) -> list[list[Segment]]:
        """Segments per message; encoding them reproduces LLaMA-Factory's ``encode_multiturn``.

        ``discarding_history_cot`` (LLaMA-Factory: ``mask_history and not preserve_thinking``) only
        matters for reasoning templates.
        """
        _check_messages(messages)
        return self._message_segments(messages, system, tools, specials)

    def slot_tokens(self) -> tuple[str, ...]:
        """Every ``{"token": ...}`` slot this template's formatters hold; ``SpecialTokens`` resolves them."""
        formatters = (
            self.format_user,
            self.format_assistant,
            self.format_system,
            self.format_function,
            self.format_observation,
            self.format_prefix,
        )
        return tuple(
            sorted(
                {
                    slot["token"]
                    for formatter in formatters
                    for slot in formatter.slots
                    if isinstance(slot, dict)
                }
            )
        )

    def plain_slots(
        self, specials: SpecialTokens
    ) -> tuple[tuple[Segment, ...], tuple[Part, ...] | None, tuple[tuple[Part, ...] | None, ...]] | None:
        """The slots ``fastsft.kernels`` ``render_row`` fills, resolved for ``specials``: the prefix's
        segments, the system formatter's parts and each role's (``SLOT_ROLES`` order), as
        ``_CompiledSlots`` holds them with placeholder text as ``(text,)``. A formatter that applies
        itself, or names a token the tokenizer lacks, gets ``None`` (its messages are rendered
        here); a template class that renders its own way gets ``None`` as a whole."""
        if type(self) is not Template:
            return None

        def parts(formatter: Formatter) -> tuple[Part, ...] | None:
            if not _compilable(formatter):
                return None
            try:
                compiled = self._compiled(formatter, specials)
            except ConfigError:
                return None
            return tuple(tuple(part) if isinstance(part, list) else part for part in compiled.parts)

        try:
            prefix = tuple(self._prefix(specials))
        except ConfigError:
            return None
        by_role = {
            "user": self.format_user,
            "assistant": self.format_assistant,
            "observation": self.format_observation,
            "function": self.format_function,
        }
        return prefix, parts(self.format_system), tuple(parts(by_role[role]) for role in SLOT_ROLES)

    def encode_messages(
        self,
        encode: Callable[[str], list[int]],
        messages: Sequence[Mapping[str, Any]],
        system: str | None = None,
        tools: str | None = None,
        *,
        specials: SpecialTokens,
        discarding_history_cot: bool = False,
    ) -> list[list[int]]:
        """Token ids per message, encoding one segment at a time with ``encode`` (the readable
        reference path: ``tokenizer.encode(text, add_special_tokens=False)``)."""
        rendered = self.render(
            messages, system, tools, specials, discarding_history_cot=discarding_history_cot
        )
        return [
            [
                token_id
                for segment in segments
                for token_id in (encode(segment) if isinstance(segment, str) else [segment])
            ]
            for segments in rendered
        ]

    def add_thought(self, content: str = "") -> str:
        """The empty thought (``<think>\\n\\n</think>\\n\\n`` by default) before ``content``."""
        return f"{self.thought_words[0]}{self.thought_words[1]}" + content

    def remove_thought(self, content: str) -> str:
        """``content`` without its thoughts and the newlines that led it."""
        pattern = re.compile(
            f"{re.escape(self.thought_words[0])}(.*?){re.escape(self.thought_words[1])}", re.DOTALL
        )
        return re.sub(pattern, "", content).lstrip("\n")

    def _system_text(self, system: str | None, tools: str | None) -> str | None:
        """The system message's content with the tool definitions appended, or ``None`` for no system message."""
        system = system or self.default_system
        if not (system or tools):
            return None

        tool_text = _apply(self.format_tools, "tools", content=tools)[0] if tools else ""
        if not isinstance(system, str):
            raise DataError(f"expected a string, got {type(system).__name__} {system!r}", field="system")

        return system + tool_text

    def _compiled(self, formatter: Formatter, specials: SpecialTokens) -> _CompiledSlots:
        """``formatter``'s compiled slots for ``specials``, made once and kept on the template."""
        compiled = self._compiled_slots.get(id(formatter))
        if compiled is None or compiled.formatter is not formatter or compiled.specials is not specials:
            compiled = self._compiled_slots[id(formatter)] = _CompiledSlots(formatter, specials)
        return compiled

    def _format(
        self,
        formatter: Formatter,
        specials: SpecialTokens,
        where: str | int,
        content: str,
        idx: str | None = None,
    ) -> list[Segment]:
        """``_slots_to_segments(_apply(formatter, where, content=content[, idx=idx]), specials)``."""
        if _compilable(formatter):
            return self._compiled(formatter, specials).segments(content, idx)
        kwargs = {"content": content} if idx is None else {"content": content, "idx": idx}
        return _slots_to_segments(_apply(formatter, where, **kwargs), specials)

    def _prefix(self, specials: SpecialTokens) -> list[Segment]:
        if type(self.format_prefix) is EmptyFormatter:  # no placeholders: nothing is replaced
            return self._compiled(self.format_prefix, specials).segments("")
        return _slots_to_segments(self.format_prefix.apply(), specials)

    def _message_segments(
        self,
        messages: Sequence[Mapping[str, Any]],
        system: str | None,
        tools: str | None,
        specials: SpecialTokens,
    ) -> list[list[Segment]]:
        """LLaMA-Factory's ``Template._encode`` before tokenization.

        Turn 0: prefix + system + query, resp; turn t: query, resp.
        """
        encoded: list[list[Segment]] = []
        for i, message in enumerate(messages):
            segments: list[Segment] = []
            if i == 0:
                segments += self._prefix(specials)
                system_text = self._system_text(system, tools)
                if system_text is not None:
                    segments += self._format(self.format_system, specials, "system", system_text)

            segments += self._role_segments(
                message["role"], message["content"], i, specials, idx=str(i // 2), function_words=True
            )
            encoded.append(segments)

        return encoded

    def _role_segments(
        self,
        role: str,
        content: str,
        i: int,
        specials: SpecialTokens,
        *,
        idx: str | None,
        function_words: bool,
    ) -> list[Segment]:
        """Message ``i``'s own segments by its role; ``idx`` fills the user slots' ``{{idx}}``, and
        ``function_words`` passes the thought and tool-call words to the function formatter."""
        if role == "user":
            return self._format(self.format_user, specials, i, content, idx)
        if role == "assistant":
            return self._format(self.format_assistant, specials, i, content)
        if role == "observation":
            return self._format(self.format_observation, specials, i, content)
        if role == "function":
            words = (
                {"thought_words": self.thought_words, "tool_call_words": self.tool_call_words}
                if function_words
                else {}
            )
            return _slots_to_segments(_apply(self.format_function, i, content=content, **words), specials)
        raise ValueError(f"Unexpected role: {role}")


def _apply(formatter: Formatter, where: str | int, **kwargs: Any) -> list[Slot]:
    """``formatter.apply`` with a ``DataError`` located at ``where`` (a field, or a message index)."""
    try:
        return formatter.apply(**kwargs)
    except DataError as err:
        raise DataError(
            err.reason, field=_content_field(where) if isinstance(where, int) else where
        ) from None


@dataclass
class Llama2Template(Template):
    """Fuses the system message into the first user message (Llama 2, Mistral)."""

    def _message_segments(
        self,
        messages: Sequence[Mapping[str, Any]],
        system: str | None,
        tools: str | None,
        specials: SpecialTokens,
    ) -> list[list[Segment]]:
        encoded: list[list[Segment]] = []
        for i, message in enumerate(messages):
            segments: list[Segment] = []
            system_text: Any = ""
            if i == 0:
                segments += self._prefix(specials)
                text = self._system_text(system, tools)
                if text is not None:
                    system_slots = _apply(self.format_system, "system", content=text)
                    if system_slots:
                        system_text = system_slots[0]

            role, content = message["role"], message["content"]
            if role == "user":
                content = system_text + content
            segments += self._role_segments(role, content, i, specials, idx=None, function_words=False)
            encoded.append(segments)

        return encoded


@dataclass
class ReasoningTemplate(Template):
    """Adds an empty thought to replies that have none, and drops thoughts the options discard."""

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        system: str | None,
        tools: str | None,
        specials: SpecialTokens,
        *,
        discarding_history_cot: bool = False,
    ) -> list[list[Segment]]:
        _check_messages(messages)
        messages = [dict(message) for message in messages]
        if self.enable_thinking is False:  # remove all cot
            for i in range(1, len(messages), 2):
                messages[i]["content"] = self.remove_thought(messages[i]["content"])

        if discarding_history_cot:
            for i in range(1, len(messages) - 2, 2):  # preserve the last cot
                messages[i]["content"] = self.remove_thought(messages[i]["content"])

        rendered = super().render(messages, system, tools, specials)
        turn_indices = [len(messages) - 2] if discarding_history_cot else range(0, len(messages), 2)
        for i in turn_indices:
            response = messages[i + 1]["content"]
            if (
                self.thought_words[0].strip() not in response
                and self.thought_words[1].strip() not in response
            ):
                if not self.enable_thinking:  # empty cot in the prompt: no loss on it
                    rendered[i].append(self.add_thought())
                else:  # empty cot in the response: loss on it
                    rendered[i + 1].insert(0, self.add_thought())

        return rendered


@dataclass
class Glm47ReasoningTemplate(ReasoningTemplate):
    """GLM-4.7: the empty thought is the closing ``</think>`` alone."""

    def add_thought(self, content: str = "") -> str:
        if not content:
            return self.thought_words[1]

        return self.thought_words[0] + content + self.thought_words[1]


def parse_template(tokenizer: Any) -> Template:
    """A template read off the tokenizer's jinja ``chat_template``, as LLaMA-Factory's ``parse_template``.

    Renders placeholder conversations and cuts the slots out of the text; a ``<think>`` in the
    assistant slot makes it a ``ReasoningTemplate``.
    """

    def find_diff(short_str: str, long_str: str) -> str:
        i, j = 0, 0
        diff = ""
        while i < len(short_str) and j < len(long_str):
            if short_str[i] == long_str[j]:
                i += 1
                j += 1
            else:
                diff += long_str[j]
                j += 1

        return diff

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as err:  # jinja raises its own errors (TemplateError, TypeError, ...)
            raise ConfigError(
                f"template unset and the tokenizer's chat_template cannot be parsed "
                f"({type(err).__name__}: {err}); set `template`"
            ) from None

    prefix = tokenizer.decode(tokenizer.encode(""))
    system_slot = render([{"role": "system", "content": "{{content}}"}], False)[len(prefix) :]
    user_slot_empty_system = render(
        [{"role": "system", "content": ""}, {"role": "user", "content": "{{content}}"}], True
    )[len(prefix) :]
    user_slot = render([{"role": "user", "content": "{{content}}"}], True)[len(prefix) :]
    assistant_slot = render(
        [{"role": "user", "content": "{{content}}"}, {"role": "assistant", "content": "{{content}}"}], False
    )[len(prefix) + len(user_slot) :]
    template_class = ReasoningTemplate if "<think>" in assistant_slot else Template
    assistant_slot = assistant_slot.replace("<think>", "").replace("</think>", "").lstrip("\n")

    if len(user_slot) > len(user_slot_empty_system):
        default_system = find_diff(user_slot_empty_system, user_slot)
        sole_system = system_slot.replace("{{content}}", default_system, 1)
        user_slot = user_slot[len(sole_system) :]
    else:  # if the default system is empty, user_slot_empty_system is the longer one
        default_system = ""

    try:
        return template_class(
            name="(parsed from the tokenizer)",
            format_user=StringFormatter(slots=[user_slot]),
            format_assistant=StringFormatter(slots=[assistant_slot]),
            format_system=StringFormatter(slots=[system_slot]),
            format_function=FunctionFormatter(slots=[assistant_slot], tool_format="default"),
            format_observation=StringFormatter(slots=[user_slot]),
            format_tools=ToolFormatter(tool_format="default"),
            format_prefix=EmptyFormatter(slots=[prefix]) if prefix else EmptyFormatter(),
            default_system=default_system,
            stop_words=[],
            thought_words=("<think>\n", "\n</think>\n\n"),
            tool_call_words=("<tool_call>", "</tool_call>"),
            efficient_eos=False,
            replace_eos=False,
            replace_jinja_template=False,
            enable_thinking=True,
            preserve_thinking=False,
        )
    except ValueError as err:  # a slot without {{content}}: the chat template drops the content
        raise ConfigError(
            f"template unset and the tokenizer's chat_template cannot be parsed: {err}"
        ) from None


def _add_or_replace_eos_token(tokenizer: Any, eos_token: str) -> None:
    """Make ``eos_token`` the tokenizer's eos token, adding it to the vocabulary if needed."""
    if tokenizer.eos_token == eos_token:
        return

    is_added = tokenizer.eos_token_id is None
    num_added_tokens = tokenizer.add_special_tokens({"eos_token": eos_token})
    logger.info("%s eos token: %s.", "Add" if is_added else "Replace", tokenizer.eos_token)
    if num_added_tokens > 0:
        logger.warning("New tokens have been added, make sure `resize_vocab` is True.")


def _fix_special_tokens(template: Template, tokenizer: Any) -> None:
    """LLaMA-Factory's ``fix_special_tokens``: eos from the stop words, pad, stop words as special tokens."""
    stop_words = template.stop_words
    if template.replace_eos:
        if not stop_words:
            raise ConfigError("Stop words are required to replace the EOS token.")

        _add_or_replace_eos_token(tokenizer, eos_token=stop_words[0])
        stop_words = stop_words[1:]

    if tokenizer.eos_token_id is None:
        _add_or_replace_eos_token(tokenizer, eos_token="<|endoftext|>")

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Add pad token: %s", tokenizer.pad_token)

    if stop_words:
        try:
            num_added_tokens = tokenizer.add_special_tokens(
                dict(additional_special_tokens=stop_words), replace_additional_special_tokens=False
            )
        except TypeError:
            num_added_tokens = tokenizer.add_special_tokens(dict(additional_special_tokens=stop_words))
        logger.info("Add %s to stop words.", ",".join(stop_words))
        if num_added_tokens > 0:
            logger.warning("New tokens have been added, make sure `resize_vocab` is True.")


def _jinja_escape(content: str) -> str:
    return content.replace("'", r"\'")


def _convert_slots_to_jinja(slots: Sequence[Slot], tokenizer: Any, placeholder: str = "content") -> str:
    """Slots as a jinja expression; ``ValueError`` for ``{"token": ...}`` slots, which jinja cannot name."""
    slot_items = []
    for slot in slots:
        if isinstance(slot, str):
            slot_pieces = slot.split("{{content}}")
            if slot_pieces[0]:
                slot_items.append("'" + _jinja_escape(slot_pieces[0]) + "'")
            if len(slot_pieces) > 1:
                slot_items.append(placeholder)
                if slot_pieces[1]:
                    slot_items.append("'" + _jinja_escape(slot_pieces[1]) + "'")
        elif isinstance(slot, set):  # do not use {{ eos_token }} since it may be replaced
            if "bos_token" in slot and tokenizer.bos_token_id is not None:
                slot_items.append("'" + tokenizer.bos_token + "'")
            elif "eos_token" in slot and tokenizer.eos_token_id is not None:
                slot_items.append("'" + tokenizer.eos_token + "'")
        elif isinstance(slot, dict):
            raise ValueError("Dict is not supported.")

    return " + ".join(slot_items)


def _get_jinja_template(template: Template, tokenizer: Any) -> str:
    """The chat template LLaMA-Factory writes into the tokenizer for ``template``."""
    prefix = _convert_slots_to_jinja(template.format_prefix.apply(), tokenizer)
    system = _convert_slots_to_jinja(template.format_system.apply(), tokenizer, placeholder="system_message")
    user = _convert_slots_to_jinja(template.format_user.apply(), tokenizer)
    assistant = _convert_slots_to_jinja(template.format_assistant.apply(), tokenizer)
    jinja_template = ""
    if prefix:
        jinja_template += "{{ " + prefix + " }}"

    if template.default_system:
        jinja_template += "{% set system_message = '" + _jinja_escape(template.default_system) + "' %}"

    jinja_template += (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    )
    if isinstance(template, Llama2Template):
        jinja_template += (
            "{% for message in loop_messages %}"
            "{% if loop.index0 == 0 and system_message is defined %}"
            "{% set content = " + system + " + message['content'] %}"
            "{% else %}{% set content = message['content'] %}{% endif %}"
        )
    else:
        jinja_template += (
            "{% if system_message is defined %}{{ " + system + " }}{% endif %}"
            "{% for message in loop_messages %}"
            "{% set content = message['content'] %}"
        )

    jinja_template += (
        "{% if message['role'] == 'user' %}"
        "{{ " + user + " }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ " + assistant + " }}"
        "{% endif %}"
        "{% endfor %}"
    )
    return jinja_template


def fix_tokenizer(template: Template, tokenizer: Any) -> None:
    """Apply LLaMA-Factory's ``fix_special_tokens`` and ``fix_jinja_template`` to an HF tokenizer in place."""
    _fix_special_tokens(template, tokenizer)
    if tokenizer.chat_template is None or template.replace_jinja_template:
        try:
            tokenizer.chat_template = _get_jinja_template(template, tokenizer)
        except ValueError as err:
            logger.info("Cannot add this chat template to tokenizer: %s.", err)
