"""Chat templates: messages → segments, exactly as LLaMA-Factory 0.9.5 lays them out.

A port of LLaMA-Factory's ``data/formatter.py`` and the text-only part of ``data/template.py``.
``Template.render`` returns, per message, the *segments* LLaMA-Factory tokenizes one at a
time: a non-empty ``str`` (encoded on its own with ``add_special_tokens=False``) or an ``int``
(a special-token id). Concatenating the encoded segments of a message gives LLaMA-Factory's
``encode_multiturn`` ids for that message, so the tokenizer backend is free to batch the strings.

Malformed content (non-string text, bad tools JSON, bad function-call JSON) raises
``DataError`` with the field it came from; LLaMA-Factory raises ``RuntimeError`` on the same input.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastsft.data.tools import TOOL_FORMAT_NAMES, FunctionCall, get_tool_utils
from fastsft.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Slot = str | set[str] | dict[str, str]
"""One element of LLaMA-Factory's ``SLOTS``: text, ``{"bos_token"}``/``{"eos_token"}``, or ``{"token": ...}``."""

Segment = str | int
"""A piece of a rendered message: text to tokenize on its own, or a special-token id."""

_PLACEHOLDER = re.compile(r"\{\{[a-zA-Z_][a-zA-Z0-9_]*\}\}")


def _has_placeholder(slots: Sequence[Slot]) -> bool:
    return any(isinstance(slot, str) and _PLACEHOLDER.search(slot) for slot in slots)


@dataclass
class Formatter(ABC):
    """Turns keyword values into slots (LLaMA-Factory's ``Formatter``)."""

    slots: list[Slot] = field(default_factory=list)
    tool_format: str | None = None

    @abstractmethod
    def apply(self, **kwargs: Any) -> list[Slot]:
        """The slots with the ``{{name}}`` placeholders filled in."""


@dataclass
class EmptyFormatter(Formatter):
    """Fixed slots without placeholders (prefixes such as ``{"bos_token"}``)."""

    def __post_init__(self) -> None:
        if _has_placeholder(self.slots):
            raise ValueError("Empty formatter should not contain any placeholder.")

    def apply(self, **kwargs: Any) -> list[Slot]:
        return self.slots


@dataclass
class StringFormatter(Formatter):
    """Slots with ``{{content}}`` (and for user turns ``{{idx}}``) placeholders."""

    def __post_init__(self) -> None:
        if not _has_placeholder(self.slots):
            raise ValueError("A placeholder is required in the string formatter.")

    def apply(self, **kwargs: Any) -> list[Slot]:
        # Like LLaMA-Factory: each value replaces its placeholder once per slot, in keyword order,
        # so a later keyword's placeholder inside an earlier value is replaced too.
        # A slot without "{{" can gain no placeholder, so it is left as it is.
        elements: list[Slot] = []
        checked = False
        for slot in self.slots:
            if isinstance(slot, str):
                if not checked:
                    for value in kwargs.values():
                        if not isinstance(value, str):
                            raise DataError(f"expected a string, got {type(value).__name__} {value!r}")
                    checked = True
                if "{{" in slot:
                    for name, value in kwargs.items():
                        slot = slot.replace("{{" + name + "}}", value, 1)
                elements.append(slot)
            elif isinstance(slot, (dict, set)):
                elements.append(slot)
            else:
                raise TypeError(f"Input must be string, set[str] or dict[str, str], got {type(slot)}.")

        return elements


@dataclass
class FunctionFormatter(StringFormatter):
    """An assistant function-call message: JSON calls rewritten in the tool format's text."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tool_utils = get_tool_utils(self.tool_format or "default")

    def apply(self, **kwargs: Any) -> list[Slot]:
        content: str = kwargs.pop("content")
        thought_words: tuple[str, str] | None = kwargs.pop("thought_words", None)
        tool_call_words: tuple[str, str] | None = kwargs.pop("tool_call_words", None)

        tool_call_match = None
        if tool_call_words and len(tool_call_words) == 2:
            tool_call_regex = re.compile(
                rf"{re.escape(tool_call_words[0])}(.*?){re.escape(tool_call_words[1])}", re.DOTALL
            )
            tool_call_match = re.search(tool_call_regex, content)

        if tool_call_match is None:
            thought_match = None
            if thought_words and len(thought_words) == 2:
                regex = re.compile(
                    rf"{re.escape(thought_words[0])}(.*?){re.escape(thought_words[1])}", re.DOTALL
                )
                thought_match = re.search(regex, content)

            json_part = content.replace(thought_match.group(0), "") if thought_match else content
            function_str = self._format_functions(json_part, content)
            if thought_match:
                function_str = thought_match.group(0) + function_str
        else:
            thought_content = content.replace(tool_call_match.group(0), "")
            function_str = thought_content + self._format_functions(tool_call_match.group(1), content)

        return super().apply(content=function_str)

    def _format_functions(self, json_content: str, content: str) -> str:
        """Parse ``{"name", "arguments"}`` call(s) and write them in the tool format."""
        try:
            tool_calls = json.loads(json_content)
            if not isinstance(tool_calls, list):  # parallel function call
                tool_calls = [tool_calls]

            functions = [
                FunctionCall(tc["name"], json.dumps(tc["arguments"], ensure_ascii=False)) for tc in tool_calls
            ]
            return self.tool_utils.function_formatter(functions)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON in function message: {err} in {content!r}") from None
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            raise DataError(
                f"invalid function call ({type(err).__name__}: {err}); expected JSON "
                f'{{"name": ..., "arguments": ...}} or a list of them, got {content!r}'
            ) from None


@dataclass
class ToolFormatter(Formatter):
    """The tool definitions appended to the system message."""

    def __post_init__(self) -> None:
        self.tool_utils = get_tool_utils(self.tool_format or "default")

    def apply(self, **kwargs: Any) -> list[Slot]:
        content = kwargs.pop("content")
        try:
            tools = json.loads(content)
            return [self.tool_utils.tool_formatter(tools) if len(tools) != 0 else ""]
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON in tool description: {err} in {content!r}") from None
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            raise DataError(
                f"invalid tool description ({type(err).__name__}: {err}); expected a JSON list of "
                f"function schemas, got {content!r}"
            ) from None


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a fixed tokenizer gives the special slots, so rendering needs no tokenizer."""

    bos_token_id: int | None
    eos_token_id: int | None
    token_ids: Mapping[str, int | None] = field(default_factory=dict)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, tokens: Iterable[str] | None = None) -> SpecialTokens:
        """Read bos/eos ids and the ids of ``tokens`` (default: every ``{"token": ...}`` slot of every template)."""
        names = _slot_tokens(_registered().values()) if tokens is None else tuple(tokens)
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


def pairs(encoded_messages: Sequence[list[int]]) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, response_ids) per turn from per-message ids, like ``encode_multiturn``."""
    return [(encoded_messages[i], encoded_messages[i + 1]) for i in range(0, len(encoded_messages), 2)]


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

    def encode_messages(
        self,
        tokenizer: Any,
        messages: Sequence[Mapping[str, Any]],
        system: str | None = None,
        tools: str | None = None,
        *,
        discarding_history_cot: bool = False,
        specials: SpecialTokens | None = None,
    ) -> list[list[int]]:
        """Token ids per message, encoding one segment at a time (the readable reference path).

        Pass ``specials`` when encoding many conversations with one tokenizer, to read them once.
        """
        specials = specials or SpecialTokens.from_tokenizer(tokenizer)
        rendered = self.render(
            messages, system, tools, specials, discarding_history_cot=discarding_history_cot
        )
        return [
            [
                token_id
                for segment in segments
                for token_id in (
                    tokenizer.encode(segment, add_special_tokens=False)
                    if isinstance(segment, str)
                    else [segment]
                )
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


TEMPLATES: dict[str, Template] = {}
"""Every registered template by name; ``fastsft.data.template_registry`` fills it (see ``_registered``)."""


def register_template(
    name: str,
    format_user: Formatter | None = None,
    format_assistant: Formatter | None = None,
    format_system: Formatter | None = None,
    format_function: Formatter | None = None,
    format_observation: Formatter | None = None,
    format_tools: Formatter | None = None,
    format_prefix: Formatter | None = None,
    default_system: str = "",
    stop_words: list[str] | None = None,
    thought_words: tuple[str, str] | None = None,
    tool_call_words: tuple[str, str] | None = None,
    efficient_eos: bool = False,
    replace_eos: bool = False,
    replace_jinja_template: bool = False,
    enable_thinking: bool | None = True,
    preserve_thinking: bool = False,
    mm_plugin: str = "base",
    template_class: type[Template] = Template,
) -> None:
    """LLaMA-Factory's ``register_template``, with the same defaults for every omitted formatter.

    ``mm_plugin`` is only the name of LLaMA-Factory's multimodal plugin: fastsft is text-only, and
    on samples without media every plugin leaves the tokens as they are.
    """
    if name in TEMPLATES:
        raise ValueError(f"Template {name} already exists.")

    default_slots: list[Slot] = ["{{content}}"] if efficient_eos else ["{{content}}", {"eos_token"}]
    default_user_formatter = StringFormatter(slots=["{{content}}"])
    default_assistant_formatter = StringFormatter(slots=default_slots)
    function_slots = format_assistant.slots if format_assistant is not None else default_slots
    TEMPLATES[name] = template_class(
        name=name,
        format_user=format_user or default_user_formatter,
        format_assistant=format_assistant or default_assistant_formatter,
        format_system=format_system or default_user_formatter,
        format_function=format_function or FunctionFormatter(slots=function_slots, tool_format="default"),
        format_observation=format_observation or format_user or default_user_formatter,
        format_tools=format_tools or ToolFormatter(tool_format="default"),
        format_prefix=format_prefix or EmptyFormatter(),
        default_system=default_system,
        stop_words=stop_words or [],
        thought_words=thought_words or ("<think>\n", "\n</think>\n\n"),
        tool_call_words=tool_call_words or ("<tool_call>", "</tool_call>"),
        efficient_eos=efficient_eos,
        replace_eos=replace_eos,
        replace_jinja_template=replace_jinja_template,
        enable_thinking=enable_thinking,
        preserve_thinking=preserve_thinking,
        mm_plugin=mm_plugin,
    )


def _registered() -> dict[str, Template]:
    """``TEMPLATES`` once the table module, which imports this one, has filled it."""
    import fastsft.data.template_registry  # noqa: F401  (a cycle at module level)

    return TEMPLATES


def _slot_tokens(templates: Iterable[Template]) -> tuple[str, ...]:
    """Every ``{"token": ...}`` the templates use; ``SpecialTokens`` resolves them."""
    return tuple(
        sorted(
            {
                slot["token"]
                for template in templates
                for formatter in (
                    template.format_user,
                    template.format_assistant,
                    template.format_system,
                    template.format_function,
                    template.format_observation,
                    template.format_prefix,
                )
                for slot in formatter.slots
                if isinstance(slot, dict)
            }
        )
    )


def __getattr__(name: str) -> Any:
    """``TEMPLATE_NAMES`` (sorted) and ``SLOT_TOKENS``, computed from the filled table on first use."""
    if name == "TEMPLATE_NAMES":
        value: Any = tuple(sorted(_registered()))
    elif name == "SLOT_TOKENS":
        value = _slot_tokens(_registered().values())
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    globals()[name] = value
    return value


def list_templates() -> dict[str, tuple[str, ...]]:
    """The sorted template names and tool format names, for ``fastsft templates``."""
    return {"templates": tuple(sorted(_registered())), "tool_formats": tuple(sorted(TOOL_FORMAT_NAMES))}


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


def get_template(
    name: str | None,
    *,
    tool_format: str | None = None,
    default_system: str | None = None,
    enable_thinking: bool | None = True,
    preserve_thinking: bool = False,
    train_on_prompt: bool = False,
    tokenizer: Any = None,
) -> Template:
    """A fresh copy of template ``name`` with LLaMA-Factory's ``get_template_and_fix_tokenizer`` options applied.

    ``name=None`` follows LLaMA-Factory's unset ``template``: the template parsed from
    ``tokenizer``'s jinja chat template when it has one, else ``empty`` (both with its warning).
    """
    if name is None:
        if tokenizer is not None and isinstance(getattr(tokenizer, "chat_template", None), str):
            logger.warning("`template` was not specified, try parsing the chat template from the tokenizer.")
            template = parse_template(tokenizer)
        else:
            logger.warning("`template` was not specified, use `empty` template.")
            template = copy.deepcopy(_registered()["empty"])
    else:
        templates = _registered()
        if name not in templates:
            raise ConfigError(f"unknown template '{name}' (valid: {', '.join(sorted(templates))})")

        template = copy.deepcopy(templates[name])

    if train_on_prompt and template.efficient_eos:
        raise ConfigError(
            f"template '{template.name}' does not support train_on_prompt (it uses efficient_eos)"
        )

    if tool_format is not None:
        get_tool_utils(tool_format)  # unknown names fail here, before any sample
        default_slots: list[Slot] = (
            ["{{content}}"] if template.efficient_eos else ["{{content}}", {"eos_token"}]
        )
        template.format_function = FunctionFormatter(slots=default_slots, tool_format=tool_format)
        template.format_tools = ToolFormatter(tool_format=tool_format)

    if default_system is not None:
        template.default_system = default_system

    if isinstance(template, ReasoningTemplate):
        template.enable_thinking = enable_thinking
        template.preserve_thinking = preserve_thinking

    return template


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
