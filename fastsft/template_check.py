"""``fastsft check-template``: where LLaMA-Factory's template and the model's own jinja chat template disagree.

Every sample is rendered twice: with the LLaMA-Factory template (the token ids fastsft trains on,
LLaMA-Factory-exact, untruncated) and with a jinja chat template (the tokenizer's own, as
transformers, vLLM and TGI serve it, or one from a file), whose text is tokenized by the same
tokenizer with ``add_special_tokens=False`` as ``apply_chat_template`` does. The first differing
token of each sample is classified (``classify``) and counted by kind.

The jinja template is untrusted code: it runs in the guarded sandbox of
``fastsft.data.chat.jinja`` (any failure is one line naming the template and the sample).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastsft.data.accounting import SampleRef
from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import prepare_run
from fastsft.data.rows.chat_mode import (
    CHAT_TEMPLATE_MODE,
    SPECIAL_TOKEN_KEYS,
    JinjaChatTemplate,
    TemplateError,
    chat_messages,
)
from fastsft.data.rows.encoder import in_dataset_terms
from fastsft.data.sources.converter import Conversation
from fastsft.errors import ConfigError, DataError

__all__ = [
    "KINDS",
    "CheckReport",
    "JinjaChatTemplate",
    "TemplateError",
    "chat_messages",
    "check_template",
    "classify",
    "read_chat_template",
]

SYSTEM_DEFAULT = "system default"
TOOL_CALL = "tool-call format"
THINKING = "thinking blocks"
WHITESPACE = "whitespace or newline"
STOP_TOKEN = "eos/stop token"
OTHER = "other"
KINDS = (SYSTEM_DEFAULT, TOOL_CALL, THINKING, WHITESPACE, STOP_TOKEN, OTHER)

THINKING_MARKERS = ("<think>", "</think>")
CONTEXT_TOKENS = 8  # decoded tokens shown on each side of a difference
WINDOW_TOKENS = 16  # tokens after a difference searched for thinking markers
WHITESPACE_CHARS = 32  # non-whitespace characters after a difference that must agree for a whitespace one


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """The first position where ``a`` and ``b`` differ (the shorter length if one is a prefix); None if equal."""
    for position, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return position
    return None if len(a) == len(b) else min(len(a), len(b))


def message_at(prefix_text: str, conv: Conversation) -> int | None:
    """The index in ``conv.messages`` of the message a difference falls in, from the text both
    renderings share before it: the first message whose content is not complete there (None:
    past the last one). Each template renders a function call's JSON its own way, so a call is
    located by the message after it."""
    cursor, pending_call = 0, None
    for index, message in enumerate(conv.messages):
        if message["role"] == "function":
            pending_call = index if pending_call is None else pending_call
            continue
        content = message["content"]
        found = prefix_text.find(content, cursor) if content else -1
        if found < 0:
            return pending_call if pending_call is not None else index
        cursor, pending_call = found + len(content), None
    return pending_call


def classify(
    lf_ids: Sequence[int],
    jinja_ids: Sequence[int],
    position: int,
    conv: Conversation,
    decode: Callable[[Sequence[int]], str],
    stop_ids: set[int],
    with_default_system: Callable[[], Sequence[int]] | None = None,
) -> str:
    """The kind of the difference at ``position``, by the first rule that holds:

    1. eos/stop token: the first differing token of either rendering is a stop token (eos or a
       template stop word) and the two renderings hold different stop tokens (a stop token only
       displaced by other text does not count), or one rendering ends there and the other goes on
       with stop tokens only;
    2. thinking blocks: ``<think>`` or ``</think>`` within the 16 tokens from the difference on either side;
    3. whitespace or newline: the decoded texts from the difference on, without their whitespace,
       agree on their first 32 characters (or entirely, where shorter);
    4. tool-call format: the difference is in a function call or observation (or the message
       right after one), or before the end of the first user message when the sample has tools;
    5. system default: the sample has no system prompt of its own, the difference is before the
       end of the first user message, and (where LF's template has a default system prompt)
       ``with_default_system()``, the jinja rendering given LF's default as the sample's system
       prompt, differs later than ``position`` or not at all;
    6. other.

    The first three look at the tokens themselves, the last two at where the difference is
    (``message_at``).
    """
    lf_rest, jinja_rest = lf_ids[position:], jinja_ids[position:]
    if lf_rest and jinja_rest:
        if (lf_rest[0] in stop_ids or jinja_rest[0] in stop_ids) and _stops(lf_ids, stop_ids) != _stops(
            jinja_ids, stop_ids
        ):
            return STOP_TOKEN
    elif all(token in stop_ids for token in lf_rest or jinja_rest):
        return STOP_TOKEN
    window = decode(lf_rest[:WINDOW_TOKENS]) + "\x00" + decode(jinja_rest[:WINDOW_TOKENS])
    if any(marker in window for marker in THINKING_MARKERS):
        return THINKING
    lf_text, jinja_text = ("".join(decode(rest).split()) for rest in (lf_rest, jinja_rest))
    if lf_text[:WHITESPACE_CHARS] == jinja_text[:WHITESPACE_CHARS]:
        return WHITESPACE
    at = message_at(decode(lf_ids[:position]), conv)
    roles = {conv.messages[i]["role"] for i in (at - 1, at) if at is not None and 0 <= i < len(conv.messages)}
    first_user_open = at == 0
    if roles & {"function", "observation"} or (first_user_open and conv.tools):
        return TOOL_CALL
    if first_user_open and not conv.system:
        if with_default_system is None:
            return SYSTEM_DEFAULT
        moved = first_difference(lf_ids, with_default_system())
        if moved is None or moved > position:
            return SYSTEM_DEFAULT
    return OTHER


def _stops(ids: Sequence[int], stop_ids: set[int]) -> Counter[int]:
    return Counter(token for token in ids if token in stop_ids)


@dataclass
class Example:
    """A sample shown for its kind: where it differs and the decoded context on both sides."""

    ref: SampleRef
    position: int
    message: int | None
    lines: list[str]


@dataclass
class CheckReport:
    """What ``check_template`` found: counts by kind, the first examples of each, what was skipped."""

    lf_template: str
    jinja_name: str
    samples: int = 0
    identical: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[Example]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    skipped: int = 0
    first_skipped: str = ""

    def skip(self, ref: SampleRef, reason: str) -> None:
        """Count a sample that has no rendering to compare."""
        self.skipped += 1
        self.first_skipped = self.first_skipped or f"{ref}: {reason}"

    @property
    def differing(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        out = [
            f"LF template '{self.lf_template}' vs jinja chat template {self.jinja_name}: {self.samples} samples, "
            f"{self.identical} identical, {self.differing} differ"
        ]
        if self.skipped:
            out.append(
                f"  skipped {self.skipped} samples LLaMA-Factory drops or cannot encode (first: {self.first_skipped})"
            )
        out += [f"  {kind}: {count}" for kind, count in self.counts.items() if count]
        for kind in KINDS:
            for example in self.examples[kind]:
                where = (
                    "before the first message's end"
                    if example.message == 0
                    else (
                        f"in message #{example.message}"
                        if example.message is not None
                        else "after the last message"
                    )
                )
                out += [
                    "",
                    f"== {kind}: {example.ref}: first difference at token {example.position}, {where}",
                ]
                out += example.lines
        return out


def _context(decode: Any, ids: Sequence[int], position: int) -> str:
    before = decode(ids[max(0, position - CONTEXT_TOKENS) : position])
    token = decode(ids[position : position + 1]) if position < len(ids) else ""
    after = decode(ids[position + 1 : position + 1 + CONTEXT_TOKENS])
    shown = f">>{token!r}<<" if position < len(ids) else ">>(end)<<"
    return f"{before!r} {shown} {after!r}"


def check_template(
    args: DataArgs,
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    chat_template_name: str | None = None,
    examples: int = 2,
    timeout: float = 10.0,
    arguments_as_json: bool = False,
) -> CheckReport:
    """Compare every sample's LF rendering with its jinja rendering (``chat_template`` text, else
    the tokenizer's own as loaded). ``tokenizer`` is fixed in place for the LF template, after the
    jinja template and its special tokens are read from it."""
    if args.template == CHAT_TEMPLATE_MODE:
        raise ConfigError(
            f"check-template compares a LLaMA-Factory template with the jinja one; --template {CHAT_TEMPLATE_MODE} "
            "is the jinja one itself (name the LLaMA-Factory template you would train with instead)"
        )
    source, name = chat_template, chat_template_name or "(given)"
    if source is None:
        source = tokenizer.chat_template
        if isinstance(source, dict):
            source = source.get("default")
        name = f"of tokenizer {getattr(tokenizer, 'name_or_path', '')}".rstrip()
        if not source:
            raise ConfigError("the tokenizer has no chat template; give one with --chat-template FILE")
    jinja = JinjaChatTemplate(source, name, timeout=timeout)
    # A special token the tokenizer lacks is "", what transformers' lenient rendering prints for it.
    specials = {key: getattr(tokenizer, key, None) or "" for key in SPECIAL_TOKEN_KEYS}
    served_eos = tokenizer.eos_token_id

    # The LF side untruncated: the whole conversation is compared.
    run = prepare_run(replace(args, cutoff_len=2**31 - 1), tokenizer, fingerprint=False)
    encoder = run.encoder(encode_path="python")
    stop_ids = {tokenizer.eos_token_id, served_eos} | {
        tokenizer.convert_tokens_to_ids(word) for word in run.template.stop_words
    }
    stop_ids.discard(None)

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False)

    variables: dict[str, Any] = {"add_generation_prompt": False, "documents": None, **specials}
    if args.enable_thinking is not None:
        variables["enable_thinking"] = args.enable_thinking

    def render_ids(
        where: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        text = jinja.render(where, messages=messages, tools=tools, **variables)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    report = CheckReport(lf_template=str(args.template), jinja_name=name)
    for split in run.splits():
        for ref, sample in run.samples(split):
            if not isinstance(sample, Conversation):  # dropped by LLaMA-Factory's rules, or malformed
                report.skip(ref, getattr(sample, "reason", str(sample)))
                continue
            conv = sample
            try:
                lf_ids = encoder.encode_one(conv)[0]
                messages, tools = chat_messages(conv, arguments_as_json=arguments_as_json)
            except DataError as err:
                report.skip(ref, str(in_dataset_terms(err, conv)))
                continue
            jinja_ids = render_ids(str(ref), messages, tools)
            report.samples += 1
            position = first_difference(lf_ids, jinja_ids)
            if position is None:
                report.identical += 1
                continue
            with_default_system = None
            if run.template.default_system:

                def with_default_system(conv: Conversation = conv, where: str = str(ref)) -> list[int]:
                    messages, tools = chat_messages(
                        replace(conv, system=run.template.default_system), arguments_as_json=arguments_as_json
                    )
                    return render_ids(where, messages, tools)

            kind = classify(lf_ids, jinja_ids, position, conv, decode, stop_ids, with_default_system)
            report.counts[kind] += 1
            if len(report.examples[kind]) < examples:
                lines = [
                    f"  LF   : {_context(decode, lf_ids, position)}",
                    f"  jinja: {_context(decode, jinja_ids, position)}",
                ]
                at = message_at(decode(lf_ids[:position]), conv)
                report.examples[kind].append(Example(ref, position, at, lines))
    return report


def read_chat_template(path: str) -> str:
    """A ``--chat-template`` file's text: a ``.jinja`` file, or a JSON file with a ``chat_template`` key."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--chat-template {path}: no such file")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            value = json.loads(text).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ConfigError(
                f"--chat-template {path}: not a JSON object with a chat_template: {err}"
            ) from None
        if not isinstance(value, str):
            raise ConfigError(f"--chat-template {path}: no chat_template text in it")
        return value
    return text
