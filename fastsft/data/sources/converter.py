"""Raw rows → ``Conversation``: LLaMA-Factory 0.9.5's Alpaca / ShareGPT / OpenAI converters.

``convert`` applies the converter of ``attr.formatting`` and then the supervised processor's
check (``len(prompt) % 2 == 1 and len(response) == 1``), so every ``Conversation`` it returns
can be encoded. Rows LLaMA-Factory logs and skips come back as ``Dropped(reason)``; rows it
would crash on raise ``DataError`` naming the field. Rows are plain dicts read straight from
the file: a key missing from a row reads as ``None``, as ``datasets`` fills it when another row
has the column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fastsft.data.sources.parser import DatasetAttr
from fastsft.errors import ConfigError, DataError

__all__ = [
    "Conversation",
    "Dropped",
    "convert",
    "tag_mapping",
]

USER, ASSISTANT, OBSERVATION, FUNCTION, SYSTEM = "user", "assistant", "observation", "function", "system"

THINKING_OFF = "detailed thinking off"
"""What LLaMA-Factory's OpenAI converter writes into (or as) the system prompt without tools."""


@dataclass
class Conversation:
    """One sample in unified form: alternating prompt/response messages, system and tools text."""

    messages: list[dict[str, str]]  # {"role": "user"|"assistant"|"observation"|"function", "content": str}
    system: str | None  # None → the template's default system
    tools: str | None  # JSON text of the tool list, or None
    fields: list[str] = field(default_factory=list, compare=False)  # where each content is in the row


@dataclass
class Dropped:
    """A row LLaMA-Factory skips, and why."""

    reason: str


class _Message(NamedTuple):
    """A converted message with the field its content came from, for error messages."""

    role: str
    content: Any
    field: str


def convert(
    row: Mapping[str, Any], attr: DatasetAttr, *, system_as_written: bool = False
) -> Conversation | Dropped:
    """Convert one raw row under ``attr``'s formatting, columns and tags. ``system_as_written``
    (the chat-template mode) keeps an OpenAI row's system prompt as the row has it, where
    LLaMA-Factory appends its "detailed thinking off" line or a newline before tools."""
    if attr.ranking:
        raise ConfigError(
            f"dataset '{attr.label}' is a ranking dataset, not applicable to supervised fine-tuning"
        )

    if attr.formatting == "alpaca":
        converted = _convert_alpaca(row, attr)
    elif attr.formatting == "sharegpt":
        converted = _convert_sharegpt(row, attr)
    elif attr.formatting == "openai":
        converted = _convert_openai(row, attr, system_as_written)
    else:
        raise ConfigError(f"dataset '{attr.label}': unknown formatting '{attr.formatting}'")

    if isinstance(converted, Dropped):
        return converted

    messages, system, tools = converted
    if len(messages) == 0:
        return Dropped("empty conversation")

    unified, fields = [], []
    for role, content, where in messages:
        if not isinstance(content, str):
            raise DataError(_not_a_string(content), field=where)
        unified.append({"role": role, "content": content})
        fields.append(where)

    _refuse_media(row, attr)
    return Conversation(
        messages=unified,
        system=_optional_text(system, attr.system or "system"),
        tools=_optional_text(tools, attr.tools or "tools"),
        fields=fields,
    )


_Converted = tuple[list[_Message], Any, Any]

MEDIA_KINDS = ("images", "videos", "audios")


def _refuse_media(row: Mapping[str, Any], attr: DatasetAttr) -> None:
    """A sample with media in a column ``dataset_info.json`` maps: LLaMA-Factory would run its
    multimodal plugin on it, which a text-only pipeline cannot reproduce, so it is malformed here."""
    for kind in MEDIA_KINDS:
        column = getattr(attr, kind)
        media = row.get(column) if column else None
        if media:
            count = len(media) if isinstance(media, list) else 1
            raise DataError(
                f"the sample has {count} {kind[:-1] if count == 1 else kind}, and fastsft is text-only "
                "(LLaMA-Factory would encode them with the template's multimodal plugin); "
                "--skip-malformed skips such samples",
                field=column,
            )


def _not_a_string(value: Any) -> str:
    return f"expected a string, got {type(value).__name__} {value!r}"


def _optional_text(value: Any, field: str) -> str | None:
    """System or tools text; falsy values mean none (the template's ``system or default``)."""
    if not value:
        return None

    if not isinstance(value, str):
        raise DataError(_not_a_string(value), field=field)

    return value


def _column(row: Mapping[str, Any], column: str | None) -> Any:
    """``row[column]`` when the dataset has that column, else ``None`` (LLaMA-Factory's ``""`` for system/tools)."""
    return row.get(column) if column else None


def _kto_dropped(row: Mapping[str, Any], attr: DatasetAttr) -> Dropped | None:
    """A KTO example gets two responses in LLaMA-Factory, which the supervised processor drops."""
    if attr.kto_tag and isinstance(row.get(attr.kto_tag), bool):
        return Dropped(f"KTO example ('{attr.kto_tag}' is a bool): it has two responses, SFT needs one")

    return None


def _convert_alpaca(row: Mapping[str, Any], attr: DatasetAttr) -> _Converted | Dropped:
    prompt: list[_Message] = []
    history = _column(row, attr.history)
    if isinstance(history, list):
        for turn, pair in enumerate(history):
            where = f"{attr.history}[{turn}]"
            try:
                old_prompt, old_response = pair
            except (TypeError, ValueError):
                raise DataError(f"expected a [prompt, response] pair, got {pair!r}", field=where) from None

            prompt.append(_Message(USER, old_prompt, f"{where}[0]"))
            prompt.append(_Message(ASSISTANT, old_response, f"{where}[1]"))

    query = []
    for column in (attr.prompt, attr.query):
        value = _column(row, column)
        if value:
            if not isinstance(value, str):
                raise DataError(_not_a_string(value), field=column)
            query.append(value)

    prompt.append(
        _Message(USER, "\n".join(query), attr.prompt or attr.query or "instruction")
    )  # "prompt\nquery"

    dropped = _kto_dropped(row, attr)
    if dropped:
        return dropped

    response = _column(row, attr.response)
    if not attr.response or response is None:
        return Dropped(f"no '{attr.response}' (response) in the row")

    if not isinstance(response, str):
        return Dropped(f"'{attr.response}' is a {type(response).__name__}, not a string")

    messages = [*prompt, _Message(ASSISTANT, response, attr.response)]
    return messages, _column(row, attr.system), _column(row, attr.tools)


def tag_mapping(attr: DatasetAttr) -> dict[Any, str]:
    """ShareGPT/OpenAI role tag → role, built in LLaMA-Factory's order (a later duplicate tag wins)."""
    return {
        attr.user_tag: USER,
        attr.assistant_tag: ASSISTANT,
        attr.observation_tag: OBSERVATION,
        attr.function_tag: FUNCTION,
        attr.system_tag: SYSTEM,
    }


def _message_list(row: Mapping[str, Any], attr: DatasetAttr) -> list[Any]:
    if attr.messages not in row:
        raise DataError(f"missing '{attr.messages}' (the messages column)", field=attr.messages)

    messages = row[attr.messages]
    if not isinstance(messages, list):
        raise DataError(f"expected a list of messages, got {type(messages).__name__}", field=attr.messages)

    return messages


def _get(message: Any, key: str | None, where: str) -> Any:
    """``message[key]`` of a raw message, or a ``DataError`` locating what is missing."""
    if not isinstance(message, dict):
        raise DataError(f"expected a message object, got {type(message).__name__} {message!r}", field=where)

    if key not in message:
        raise DataError(f"message has no '{key}' key (keys: {', '.join(map(str, message))})", field=where)

    return message[key]


def _leading_system(messages: list[Any], attr: DatasetAttr) -> tuple[Any, int] | None:
    """(system content, 1) when the first message carries the system tag, as both converters check."""
    where = f"{attr.messages}[0]"
    if attr.system_tag and len(messages) != 0 and _get(messages[0], attr.role_tag, where) == attr.system_tag:
        return _get(messages[0], attr.content_tag, where), 1

    return None


def _role_error(index: int, role: Any, expected: tuple[Any, ...], known: dict[Any, str]) -> Dropped:
    expected_text = "/".join(str(tag) for tag in expected if tag is not None)
    if role in list(known):  # a list, not the dict: a role may be unhashable (a JSON list)
        return Dropped(f"message {index} has role {role!r} where {expected_text} is expected")

    known_text = ", ".join(str(tag) for tag in known if tag is not None)
    return Dropped(f"unknown role tag {role!r} in message {index} (known: {known_text})")


def _odd_count(count: int) -> Dropped:
    return Dropped(f"odd number of messages ({count}): every prompt needs a response")


def _convert_sharegpt(row: Mapping[str, Any], attr: DatasetAttr) -> _Converted | Dropped:
    roles = tag_mapping(attr)
    odd_tags = (attr.user_tag, attr.observation_tag)
    even_tags = (attr.assistant_tag, attr.function_tag)
    accept_tags = (odd_tags, even_tags)
    messages = _message_list(row, attr)
    leading = _leading_system(messages, attr)
    system, offset = leading if leading else (_column(row, attr.system), 0)

    aligned: list[_Message] = []
    role_tag, content_tag = attr.role_tag, attr.content_tag
    for turn_idx, message in enumerate(messages[offset:]):
        index = turn_idx + offset
        if message.__class__ is dict and role_tag in message and content_tag in message:
            role, content = message[role_tag], message[content_tag]  # the common case, without _get
        else:  # a located error; a wrong role is reported before a missing content
            where = f"{attr.messages}[{index}]"
            role = _get(message, role_tag, where)
            if role in accept_tags[turn_idx % 2]:
                content = _get(message, content_tag, where)
        if role not in accept_tags[turn_idx % 2]:
            return _role_error(index, role, accept_tags[turn_idx % 2], roles)

        aligned.append(_Message(roles[role], content, f"{attr.messages}[{index}].{content_tag}"))

    if len(aligned) % 2 != 0:
        return _odd_count(len(aligned))

    dropped = _kto_dropped(row, attr)
    if dropped:
        return dropped

    return aligned, system, _column(row, attr.tools)


def _convert_openai(
    row: Mapping[str, Any], attr: DatasetAttr, system_as_written: bool
) -> _Converted | Dropped:
    roles = tag_mapping(attr)
    messages = _message_list(row, attr)
    leading = _leading_system(messages, attr)
    if leading:
        system, offset = leading
    else:
        system, offset = (row.get(attr.system, "") if attr.system else ""), 0

    # Tool (observation) messages in a row are merged into one; a trailing run of them is lost,
    # as in LLaMA-Factory. Each aligned message remembers the raw message it came from.
    aligned: list[_Message] = []
    sources: list[tuple[int, Any]] = []
    tool_responses: list[Any] = []
    first_tool_index = 0
    for index, message in enumerate(messages[offset:], start=offset):
        where = f"{attr.messages}[{index}]"
        source_role = role = _get(message, attr.role_tag, where)
        content = _get(message, attr.content_tag, where)
        content_field = f"{where}.{attr.content_tag}"

        if role in [attr.assistant_tag, attr.function_tag] and (tool_calls := message.get("tool_calls")):
            content = _dump_tool_calls(tool_calls, f"{where}.tool_calls")
            content_field = f"{where}.tool_calls"
            role = attr.function_tag

        if role == attr.observation_tag:
            if not tool_responses:
                first_tool_index = index
            tool_responses.append((content, content_field))
            continue
        elif tool_responses:
            aligned.append(_merge_tool_responses(tool_responses))
            sources.append((first_tool_index, attr.observation_tag))
            tool_responses = []

        if role not in list(roles):
            known = ", ".join(str(tag) for tag in roles if tag is not None)
            raise DataError(f"unknown role {role!r} (known: {known})", field=f"{where}.{attr.role_tag}")

        aligned.append(_Message(roles[role], content, content_field))
        sources.append((index, source_role))

    # LLaMA-Factory builds the system prompt before it skips a broken row, so its errors come first.
    tools = row.get(attr.tools, "") if attr.tools else ""
    if isinstance(tools, (dict, list)):
        tools = json.dumps(tools, ensure_ascii=False)

    written = system
    system = _openai_system(system, tools, attr)
    if system_as_written:
        system = written

    accept_tags = ((USER, OBSERVATION), (ASSISTANT, FUNCTION))
    expected_tags = ((attr.user_tag, attr.observation_tag), (attr.assistant_tag, attr.function_tag))
    for turn_idx, message in enumerate(aligned):
        if message.role not in accept_tags[turn_idx % 2]:
            index, source_role = sources[turn_idx]
            return _role_error(index, source_role, expected_tags[turn_idx % 2], roles)

    if len(aligned) % 2 != 0:
        return _odd_count(len(aligned))

    dropped = _kto_dropped(row, attr)
    if dropped:
        return dropped

    return aligned, system, tools


def _dump_tool_calls(tool_calls: Any, where: str) -> str:
    """An assistant's OpenAI ``tool_calls`` as the JSON list of their ``function`` objects."""
    try:
        return json.dumps([tool["function"] for tool in tool_calls], ensure_ascii=False)
    except (KeyError, TypeError) as err:
        raise DataError(
            f"expected a list of {{'function': {{...}}}} tool calls ({type(err).__name__}: {err})",
            field=where,
        ) from None


def _merge_tool_responses(tool_responses: list[tuple[Any, str]]) -> _Message:
    for content, content_field in tool_responses:
        if not isinstance(content, str):
            raise DataError(_not_a_string(content), field=content_field)

    merged = "\n</tool_response>\n<tool_response>\n".join(content for content, _ in tool_responses)
    return _Message(OBSERVATION, merged, tool_responses[0][1])


def _openai_system(system: Any, tools: Any, attr: DatasetAttr) -> Any:
    """LLaMA-Factory's OpenAI system prompt: thinking switched off unless tools are given or it says so."""
    if not system:
        return system if tools else THINKING_OFF

    # LLaMA-Factory's `in` and `+=` work on a list, so the converter passes it; the template rejects it later.
    if isinstance(system, list):
        return system

    if not isinstance(system, str):
        raise DataError(_not_a_string(system), field=attr.system or f"{attr.messages}[0].{attr.content_tag}")

    if tools:
        return system + "\n"

    if "detailed thinking on" in system or THINKING_OFF in system:
        return system

    return system + "\n" + THINKING_OFF
