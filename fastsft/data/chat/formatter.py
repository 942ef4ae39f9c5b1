"""Formatters: keyword values into slots, exactly as LLaMA-Factory 0.9.5's ``data/formatter.py``.

A slot is text with ``{{name}}`` placeholders, ``{"bos_token"}``/``{"eos_token"}``, or
``{"token": ...}``; ``Template`` turns slots into segments.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastsft.data.chat.tool_utils import FunctionCall, get_tool_utils
from fastsft.errors import DataError

__all__ = [
    "EmptyFormatter",
    "Formatter",
    "FunctionFormatter",
    "Slot",
    "StringFormatter",
    "ToolFormatter",
]

Slot = str | set[str] | dict[str, str]
"""One element of LLaMA-Factory's ``SLOTS``: text, ``{"bos_token"}``/``{"eos_token"}``, or ``{"token": ...}``."""

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
