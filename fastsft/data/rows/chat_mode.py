"""The chat-template mode (``template: chat_template``): train on what the model is served with.

Each conversation (any source format, through the converter) is rendered with the tokenizer's
own jinja chat template, as ``apply_chat_template`` renders it, in the guarded sandbox of
``fastsft.data.chat.jinja``; the whole text is tokenized in one call with
``add_special_tokens=False`` and the assistant tokens are found from character spans, so
``input_ids`` and the assistant mask equal TRL's ``SFTTrainer(assistant_only_loss=True)``.
The assistant spans come from, in this order:

1. the template's own ``{% generation %}`` markers;
2. TRL's training version of the template, where the template is exactly one TRL knows (the
   copies in ``fastsft/assets/trl_chat_templates``, ``scripts/vendor_trl_chat_templates.py``),
   as TRL swaps it in;
3. prefix diffs of incremental renders (as LLaMA-Factory's v1 trainer does): the conversation up
   to an assistant message against the one before it with the generation prompt; a template whose
   renders are not prefix-preserving is refused.

The tokens become LLaMA-Factory's (prompt, response) pairs: response ``k`` is the ``k``-th run
of assistant tokens, prompt ``k`` what precedes it; the tokens after the last run join the last
response, untrained. The kernels' ``assemble_supervised`` then applies ``cutoff_len``,
``train_on_prompt`` and ``mask_history`` with LLaMA-Factory's meaning, run on token *positions*
so that the assistant mask can be applied to what it keeps. A sample left with no trained token
is counted (``Summary.no_trainable``) and skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastsft import IGNORE_INDEX
from fastsft.data.chat.jinja import JinjaChatTemplate, TemplateError
from fastsft.data.chat.registry import CHAT_TEMPLATE_MODE
from fastsft.data.sources.converter import Conversation
from fastsft.errors import ConfigError, DataError
from fastsft.kernels import offsets_from_lengths
from fastsft.kernels.supervised import TurnTrace, encode_pairs
from fastsft.tokenizer.encoders import RustEncoder

if TYPE_CHECKING:
    from fastsft.kernels.interface import Kernels
    from fastsft.tokenizer.spec import TokenizerSpec

__all__ = [
    "CHAT_TEMPLATE_MODE",
    "SPECIAL_TOKEN_KEYS",
    "ChatTemplateMode",
    "JinjaChatTemplate",
    "TemplateError",
    "chat_messages",
]

SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
TRL_TEMPLATES = Path(__file__).resolve().parents[2] / "assets" / "trl_chat_templates"
MARKERS = "generation markers"
PREFIX_DIFFS = "prefix diffs"
_PROBE = [  # a conversation every chat template renders: prefix-preservation is checked on it
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "6."},
]


def chat_messages(
    conv: Conversation, *, arguments_as_json: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """A converted LLaMA-Factory conversation as ``apply_chat_template`` takes it: (messages, tools).

    An explicit system prompt becomes a system message (none: the jinja template's own default
    applies, as LLaMA-Factory's does on its side); ``function`` responses become assistant
    ``tool_calls``, ``observation`` prompts ``tool`` messages; tools given as bare function schemas
    are wrapped as ``{"type": "function", "function": ...}``, transformers' form. A call's
    arguments are a dict, as transformers documents them, or with ``arguments_as_json`` JSON text
    (what templates that concatenate them, such as DeepSeek-V3's, need).
    """
    messages: list[dict[str, Any]] = []
    if conv.system:
        messages.append({"role": "system", "content": conv.system})
    for index, message in enumerate(conv.messages):
        role, content = message["role"], message["content"]
        if role == "function":
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": _tool_calls(conv, index, arguments_as_json),
                }
            )
        elif role == "observation":
            messages.append({"role": "tool", "content": content})
        else:
            messages.append({"role": role, "content": content})
    tools = None
    if conv.tools:
        try:
            parsed = json.loads(conv.tools)
        except json.JSONDecodeError as err:
            raise DataError(f"tools are not JSON: {err}", field="tools") from None
        tools = [
            tool if isinstance(tool, dict) and "function" in tool else {"type": "function", "function": tool}
            for tool in (parsed if isinstance(parsed, list) else [parsed])
        ]
    return messages, tools


def _tool_calls(conv: Conversation, index: int, arguments_as_json: bool) -> list[dict[str, Any]]:
    try:
        calls = json.loads(conv.messages[index]["content"])
    except json.JSONDecodeError as err:
        raise DataError(f"function call is not JSON: {err}", field=conv.fields[index]) from None
    calls = calls if isinstance(calls, list) else [calls]
    if not all(isinstance(call, dict) and "name" in call for call in calls):
        raise DataError('a function call needs a "name"', field=conv.fields[index])
    result = []
    for call in calls:
        arguments = call.get("arguments", {})
        if arguments_as_json and not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        result.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return result


def trl_training_template(source: str) -> tuple[str, str] | None:
    """(name, text) of TRL's training version of ``source``, where ``source`` is exactly a template
    TRL ships a training version of; else ``None``."""
    index = json.loads((TRL_TEMPLATES / "index.json").read_text(encoding="utf-8"))
    name = index["originals"].get(hashlib.sha256(source.encode("utf-8")).hexdigest())
    if name is None:
        return None
    return name, (TRL_TEMPLATES / f"{name}_training.jinja").read_text(encoding="utf-8")


class ChatTemplateMode:
    """A tokenizer's chat template set up for training: how its assistant spans are found
    (``how``), the render of a conversation, and the assembly of a batch's rows.

    Refuses, in one line naming the template, a tokenizer without a chat template, one that does
    not compile, and one whose assistant spans cannot be found.
    """

    def __init__(
        self,
        spec: TokenizerSpec,
        *,
        enable_thinking: bool | None = None,
        default_system: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        name = f"of tokenizer {spec.name_or_path}".rstrip()
        source = spec.chat_template
        if not source:
            raise ConfigError(
                f"template {CHAT_TEMPLATE_MODE}: the tokenizer {spec.name_or_path} has no chat template"
            )
        if spec.backend_json is None:
            raise ConfigError(
                f"template {CHAT_TEMPLATE_MODE}: the tokenizer {spec.name_or_path} does not encode through "
                "its Rust tokenizer, which gives the character offsets the assistant mask is found with"
            )
        self.default_system = default_system
        self.variables: dict[str, Any] = {
            "add_generation_prompt": False,
            "documents": None,
            # A special token the tokenizer lacks prints as "", as transformers' rendering prints it.
            **{key: spec.special_tokens.get(key, "") for key in SPECIAL_TOKEN_KEYS},
        }
        if enable_thinking is not None:
            self.variables["enable_thinking"] = enable_thinking
        jinja = JinjaChatTemplate(source, name, timeout=timeout)
        training = None if jinja.has_generation_markers else trl_training_template(source)
        if jinja.has_generation_markers:
            self.how = MARKERS
        elif training is not None:
            self.how = f"TRL's training version of {training[0]}"
            jinja = JinjaChatTemplate(training[1], f"{name} (TRL's {training[0]}_training)", timeout=timeout)
        else:
            self.how = PREFIX_DIFFS
        self.jinja = jinja
        self._jinja_args = (jinja.source, jinja.name, timeout)
        # Set up as ``tokenizer(text, add_special_tokens=False)`` sets its Rust tokenizer: no
        # truncation or padding from tokenizer.json, ``split_special_tokens`` as the tokenizer's.
        self._rust = RustEncoder(spec.backend_json, spec.split_special_tokens)
        if self.how == PREFIX_DIFFS:
            try:
                self._prefix_spans(_PROBE, None, "a probe conversation")
            except (DataError, TemplateError) as err:
                raise ConfigError(
                    f"template {CHAT_TEMPLATE_MODE}: cannot find the assistant tokens of chat template {name}: "
                    f"it has no {{% generation %}} markers, TRL has no training version of it, and {err}"
                ) from None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for worker processes: the template is compiled and the Rust tokenizer made again there."""
        return {**self.__dict__, "jinja": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        source, name, timeout = self._jinja_args
        self.jinja = JinjaChatTemplate(source, name, timeout=timeout)

    def render(self, conv: Conversation, where: str = "") -> tuple[str, list[tuple[int, int]]]:
        """The conversation's text and the character spans of its assistant output."""
        if self.default_system and not conv.system:
            conv = dataclasses.replace(conv, system=self.default_system)
        messages, tools = chat_messages(conv)
        if self.how == PREFIX_DIFFS:
            return self._prefix_spans(messages, tools, where)
        return self.jinja.render_with_spans(where, messages=messages, tools=tools, **self.variables)

    def _prefix_spans(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, where: str
    ) -> tuple[str, list[tuple[int, int]]]:
        """Each assistant message's span as the text it adds to the conversation before it with the
        generation prompt; DataError where a render is not a prefix of the next."""
        full = self.jinja.render(where, messages=messages, tools=tools, **self.variables)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            variables = {**self.variables, "add_generation_prompt": True}
            before = self.jinja.render(where, messages=messages[:index], tools=tools, **variables)
            upto = self.jinja.render(where, messages=messages[: index + 1], tools=tools, **self.variables)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise DataError(
                    f"its render up to message {index} is not a prefix of the whole conversation's "
                    "(the template rewrites earlier turns), so the assistant tokens cannot be found"
                )
            if len(upto) > len(before):
                spans.append((len(before), len(upto)))
        return full, spans

    def tokenize_with_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each text's ids (int32) and whether each token is the assistant's (bool), as transformers'
        ``apply_chat_template(..., return_assistant_tokens_mask=True)`` computes them: the text
        tokenized whole with ``add_special_tokens=False``, a token the assistant's when its
        character offsets overlap a span."""
        encodings = self._rust.encodings(texts)
        return [assistant_mask(encoding, sample_spans) for encoding, sample_spans in zip(encodings, spans)]

    def assemble(
        self,
        samples: list[tuple[np.ndarray, np.ndarray]],
        kernels: Kernels,
        *,
        cutoff_len: int,
        train_on_prompt: bool,
        mask_history: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``input_ids``, ``labels``, ``offsets`` and untruncated lengths of the samples, by the
        kernels' ``assemble_supervised`` on token positions (see the module's docstring)."""
        ids = np.concatenate([s[0] for s in samples]) if samples else np.zeros(0, np.int32)
        trained = np.concatenate([s[1] for s in samples]) if samples else np.zeros(0, bool)
        lengths = np.array([len(s[0]) for s in samples], dtype=np.int64)
        bounds = [turn_bounds(mask) for _, mask in samples]
        starts = offsets_from_lengths(lengths)[:-1]
        message_bounds = np.concatenate(
            [b[:-1] + start for b, start in zip(bounds, starts)] + [np.array([len(ids)], np.int64)]
        )
        sample_bounds = offsets_from_lengths(np.array([len(b) - 1 for b in bounds], dtype=np.int64))
        positions = np.arange(len(ids), dtype=np.int32)
        out = kernels.assemble_supervised(
            positions, message_bounds, sample_bounds, cutoff_len, train_on_prompt, mask_history, False, -1
        )
        return (
            ids[out.input_ids],
            labels_for(out.labels, ids, trained, train_on_prompt),
            np.asarray(out.offsets, dtype=np.int64),
            lengths,
        )

    def encode_one(
        self,
        conv: Conversation,
        *,
        cutoff_len: int,
        train_on_prompt: bool,
        mask_history: bool,
        trace: list[TurnTrace] | None = None,
    ) -> tuple[list[int], list[int], int]:
        """One conversation on the readable reference, with its per-turn ``trace`` (for ``inspect``):
        (input_ids, labels, untruncated length)."""
        text, spans = self.render(conv)
        ids, mask = self.tokenize_with_spans([text], [spans])[0]
        bounds = turn_bounds(mask)
        positions = list(range(len(ids)))
        turns = [
            (positions[bounds[i] : bounds[i + 1]], positions[bounds[i + 1] : bounds[i + 2]])
            for i in range(0, len(bounds) - 1, 2)
        ]
        kept, labels = encode_pairs(
            turns,
            cutoff_len=cutoff_len,
            train_on_prompt=train_on_prompt,
            mask_history=mask_history,
            trace=trace,
        )
        label_array = labels_for(np.asarray(labels, dtype=np.int64), ids, mask, train_on_prompt)
        return ids[kept].tolist(), label_array.tolist(), len(ids)


def assistant_mask(encoding: Any, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of one encoded text: transformers' single pass over the token offsets, where a
    span's tokens are those from the first ending after the span's start on, up to the first that
    starts at or after its end (vectorized where the spans' ends are in order, as they are unless
    ``{% generation %}`` blocks nest)."""
    ids = np.asarray(encoding.ids, dtype=np.int32)
    if not spans or not len(ids):
        return ids, np.zeros(len(ids), dtype=bool)
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    span_array = np.asarray(spans, dtype=np.int64)
    ends = span_array[:, 1]
    if np.all(ends[1:] >= ends[:-1]):
        index = np.searchsorted(ends, offsets[:, 0], side="right")
        inside = index < len(spans)
        mask = np.zeros(len(ids), dtype=bool)
        mask[inside] = offsets[inside, 1] > span_array[index[inside], 0]
        return ids, mask
    mask = np.zeros(len(ids), dtype=bool)
    span = 0
    for token, (start, end) in enumerate(offsets.tolist()):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        mask[token] = end > spans[span][0]
    return ids, mask


def turn_bounds(mask: np.ndarray) -> np.ndarray:
    """Message bounds of one sample as (prompt, response) pairs: response ``k`` is the ``k``-th run
    of assistant tokens, prompt ``k`` the tokens before it; the tokens after the last run join the
    last response (no run: one prompt of every token and an empty response)."""
    flags = mask.astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate(([0], flags, [0]))))
    run_starts, run_ends = change[0::2], change[1::2]
    if not len(run_starts):
        return np.array([0, len(mask), len(mask)], dtype=np.int64)
    bounds = np.empty(2 * len(run_starts) + 1, dtype=np.int64)
    bounds[0] = 0
    bounds[1::2] = run_starts
    bounds[2::2] = run_ends
    bounds[-1] = len(mask)
    return bounds


def labels_for(
    position_labels: np.ndarray, ids: np.ndarray, trained: np.ndarray, train_on_prompt: bool
) -> np.ndarray:
    """Labels from the positions ``assemble_supervised`` labelled: the token's id where it is an
    assistant token (any token under ``train_on_prompt``), else ``IGNORE_INDEX``."""
    labels = np.full(len(position_labels), IGNORE_INDEX, dtype=np.int32)
    labelled = position_labels != IGNORE_INDEX
    where = np.asarray(position_labels[labelled], dtype=np.int64)
    keep = np.ones(len(where), dtype=bool) if train_on_prompt else trained[where]
    chosen = np.flatnonzero(labelled)[keep]
    labels[chosen] = ids[where[keep]]
    return labels
