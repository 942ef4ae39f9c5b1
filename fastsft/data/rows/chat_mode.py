"""The chat-template mode (``template: chat_template``): train on what the model is served with.

Each conversation (any source format, through the converter) is rendered with the tokenizer's
own jinja chat template, as ``apply_chat_template`` renders it, in the guarded sandbox of
``fastsft.data.chat.jinja``; the whole text is tokenized with ``add_special_tokens=False`` by
the run's encoder and the assistant tokens are found from character spans
(``tokenize_with_spans``), so ``input_ids`` and the assistant mask equal TRL's
``SFTTrainer(assistant_only_loss=True)``.
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
import io
import itertools
import json
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from fastsft import IGNORE_INDEX
from fastsft.data.chat.jinja import JinjaChatTemplate, TemplateError
from fastsft.data.chat.registry import CHAT_TEMPLATE_MODE
from fastsft.data.sources.converter import Conversation
from fastsft.errors import ConfigError, DataError
from fastsft.kernels import offsets_from_lengths
from fastsft.kernels.supervised import TurnTrace, encode_pairs
from fastsft.tokenizer.bpe import byte_characters
from fastsft.tokenizer.cache import read_checked_bytes, write_checked_bytes
from fastsft.tokenizer.encoders import RustEncoder, TextEncoder
from fastsft.tokenizer.spec import json_derived

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
        self._byte_lengths, self._nfc = saved_token_byte_lengths(spec)
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
        self, texts: list[str], spans: list[list[tuple[int, int]]], text_encoder: TextEncoder | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The texts' ids (``int32[T]``), whether each token is the assistant's (``bool[T]``) and the
        texts' offsets into both (``int64[len(texts) + 1]``), as transformers'
        ``apply_chat_template(..., return_assistant_tokens_mask=True)`` computes them: each text
        tokenized whole with ``add_special_tokens=False``, a token the assistant's when its character
        offsets overlap a span (``assistant_mask``).

        With ``text_encoder`` (the run's exact encoder) and a tokenizer whose offsets are its tokens'
        byte lengths summed (``token_byte_lengths``), the ids come from that encoder and the offsets
        from those sums, in bytes, against the spans in bytes: the same overlaps, without HF's offset
        tracking. A text the sums do not fit (normalization changed it) and a text whose spans
        are not disjoint and in order take HF's offsets."""
        fallback = list(range(len(texts)))
        ids = np.zeros(0, dtype=np.int32)
        mask = np.zeros(0, dtype=bool)
        bounds = np.zeros(len(texts) + 1, dtype=np.int64)
        if text_encoder is not None and self._byte_lengths is not None and texts:
            ids, bounds = text_encoder.encode_batch_flat(texts)
            mask, fallback = byte_offset_masks(texts, spans, ids, bounds, self._byte_lengths, self._nfc)
        if fallback:
            encodings = self._rust.encodings([texts[i] for i in fallback])
            redone = {i: assistant_mask(encoding, spans[i]) for encoding, i in zip(encodings, fallback)}
            pieces = [
                redone.get(i) or (ids[bounds[i] : bounds[i + 1]], mask[bounds[i] : bounds[i + 1]])
                for i in range(len(texts))
            ]
            bounds = offsets_from_lengths(np.array([len(piece[0]) for piece in pieces], dtype=np.int64))
            ids = np.concatenate([piece[0] for piece in pieces] or [ids]).astype(np.int32, copy=False)
            mask = np.concatenate([piece[1] for piece in pieces] or [mask]).astype(bool, copy=False)
        return ids, mask, bounds

    def assemble(
        self,
        ids: np.ndarray,
        trained: np.ndarray,
        bounds: np.ndarray,
        kernels: Kernels,
        *,
        cutoff_len: int,
        train_on_prompt: bool,
        mask_history: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``input_ids``, ``labels``, ``offsets`` and untruncated lengths of the samples
        (``tokenize_with_spans``' result), by the kernels' ``assemble_supervised`` on token
        positions (see the module's docstring)."""
        message_bounds, sample_bounds = turn_bounds_flat(trained, bounds)
        positions = np.arange(len(ids), dtype=np.int32)
        out = kernels.assemble_supervised(
            positions, message_bounds, sample_bounds, cutoff_len, train_on_prompt, mask_history, False, -1
        )
        return (
            ids[out.input_ids],
            labels_for(out.labels, ids, trained, train_on_prompt),
            np.asarray(out.offsets, dtype=np.int64),
            np.diff(bounds),
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
        ids, mask, _ = self.tokenize_with_spans([text], [spans])
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


_BYTE_LENGTHS_FORMAT = 2  # of what token_byte_lengths computes: bump with any change to it
_TEXT_PRESERVING_PRE_TOKENIZERS = {"ByteLevel", "Split", "Digits", "Punctuation"}


def token_byte_lengths(tokenizer_json: str) -> tuple[np.ndarray | None, bool]:
    """(each token's length in bytes of text, whether texts are NFC-normalized first) for a tokenizer
    whose character offsets are its tokens' byte lengths summed, then read in characters: a
    byte-level BPE without byte fallback, a normalizer that is NFC or none, pre-tokenizers that
    keep the text (no prefix space), no post-processor trimming offsets, no added token that strips
    or needs word bounds. ``(None, False)`` for any other tokenizer. A vocabulary entry outside
    the byte alphabet gets a length no text has, so a text it appears in takes HF's offsets."""
    config = orjson.loads(tokenizer_json)
    model = config.get("model") or {}
    normalizer = config.get("normalizer")
    pre = config.get("pre_tokenizer") or {}
    pre_parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    post = config.get("post_processor") or {}
    post_parts = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    added = config.get("added_tokens") or []
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or (normalizer is not None and normalizer.get("type") != "NFC")
        or not any(part.get("type") == "ByteLevel" for part in pre_parts)
        or any(part.get("type") not in _TEXT_PRESERVING_PRE_TOKENIZERS for part in pre_parts)
        or any(part.get("add_prefix_space") for part in pre_parts)
        or any(part.get("trim_offsets") for part in post_parts)
        or any(token.get(key) for token in added for key in ("lstrip", "rstrip", "single_word"))
    ):
        return None, False
    vocab: dict[str, int] = model.get("vocab") or {}
    size = 1 + max([*vocab.values(), *(token["id"] for token in added)], default=-1)
    unreachable = 1 << 32  # summed over at most 2**31 ids, it stays within int64
    lengths = np.full(size, unreachable, dtype=np.int64)
    alphabet = frozenset(byte_characters())  # one character per byte
    for token, index in vocab.items():
        if token and alphabet.issuperset(token):
            lengths[index] = len(token)
    for token in added:
        lengths[token["id"]] = len(token["content"].encode("utf-8"))
    return lengths, normalizer is not None


def saved_token_byte_lengths(spec: TokenizerSpec) -> tuple[np.ndarray | None, bool]:
    """``token_byte_lengths`` of the spec's ``tokenizer.json``, kept beside it (reading and
    walking the JSON is most of a small run's set-up)."""
    assert spec.backend_json is not None and spec.backend_digest is not None
    path = json_derived(spec.backend_digest, f"byte-lengths-{_BYTE_LENGTHS_FORMAT}.npz")
    data = read_checked_bytes(path)
    if data is not None:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            lengths, nfc = saved["lengths"], bool(saved["nfc"])
        return (lengths if len(lengths) else None), nfc
    lengths, nfc = token_byte_lengths(spec.backend_json)
    buffer = io.BytesIO()
    np.savez(buffer, lengths=np.zeros(0, np.int64) if lengths is None else lengths, nfc=nfc)
    write_checked_bytes(path, buffer.getvalue())
    return lengths, nfc


def byte_offset_masks(
    texts: list[str],
    spans: list[list[tuple[int, int]]],
    ids: np.ndarray,
    bounds: np.ndarray,
    byte_lengths: np.ndarray,
    nfc: bool,
) -> tuple[np.ndarray, list[int]]:
    """The assistant mask of encoded ``texts`` (``ids`` cut by ``bounds``) from the tokens' byte
    lengths summed, against the spans in bytes, for the whole batch at once; and the texts it
    cannot answer for: those the sums do not fit (or, with ``nfc``, not in NFC) and those whose
    spans are not disjoint and in order (where transformers' pass differs from plain overlap).

    A token overlaps a span in bytes exactly when its character offsets (the characters holding
    its first and last byte) overlap the span's characters. Each text's tokens are laid from the
    text's first byte in the batch, so the token ends rise through the batch (a text that falls
    back has its tokens laid, empty, at its start) and each span's tokens are found by bisection."""
    token_lengths = byte_lengths[ids]
    summed = np.concatenate(([0], np.cumsum(token_lengths)))
    ascii_text = np.fromiter(map(str.isascii, texts), dtype=bool, count=len(texts))
    text_bytes = np.fromiter(
        (len(text) if plain else len(text.encode("utf-8")) for text, plain in zip(texts, ascii_text)),
        dtype=np.int64,
        count=len(texts),
    )
    unfit = summed[bounds[1:]] - summed[bounds[:-1]] != text_bytes
    if nfc:
        unfit |= np.fromiter(
            (not unicodedata.is_normalized("NFC", t) for t in texts), dtype=bool, count=len(texts)
        )
    span_counts = np.fromiter(map(len, spans), dtype=np.int64, count=len(texts))
    flat = np.array(list(itertools.chain.from_iterable(spans)), dtype=np.int64).reshape(-1, 2)
    owner = np.repeat(np.arange(len(texts)), span_counts)
    for row in np.flatnonzero(~ascii_text[owner]).tolist():  # character offsets to byte offsets
        text = texts[owner[row]]
        flat[row] = [len(text[: flat[row, 0]].encode("utf-8")), len(text[: flat[row, 1]].encode("utf-8"))]
    same_text = owner[1:] == owner[:-1]
    fallback = unfit.copy()
    fallback[owner[1:][same_text & (flat[1:, 0] < flat[:-1, 1])]] = True  # overlapping or out of order
    fallback[owner[flat[:, 1] < flat[:, 0]]] = True
    text_starts = np.cumsum(text_bytes) - text_bytes
    fallen = np.repeat(fallback, np.diff(bounds))
    token_ends = summed[1:] + np.repeat(text_starts - summed[bounds[:-1]], np.diff(bounds))
    token_ends[fallen] = np.repeat(text_starts, np.diff(bounds))[fallen]
    token_starts = token_ends - np.where(fallen, 0, token_lengths)
    kept = ~fallback[owner]
    span_starts = flat[kept, 0] + text_starts[owner[kept]]
    span_ends = flat[kept, 1] + text_starts[owner[kept]]
    first = np.searchsorted(token_ends, span_starts, side="right")  # first token ending after the start
    last = np.searchsorted(token_starts, span_ends, side="left")  # first token starting at or after the end
    marks = np.zeros(len(ids) + 1, dtype=np.int32)
    np.add.at(marks, first, 1)
    np.add.at(marks, last, -1)
    mask = np.cumsum(marks[:-1]) > 0
    return mask, np.flatnonzero(fallback).tolist()


def turn_bounds_flat(mask: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``turn_bounds`` of every sample of a flat batch (sample ``i`` is ``mask[bounds[i]:bounds[i+1]]``)
    as ``assemble_supervised`` takes them: every sample's bounds but its last, then the batch's
    end; and each sample's offsets into them."""
    count = len(bounds) - 1
    lengths = np.diff(bounds)
    sample_of = np.repeat(np.arange(count), lengths)
    before = np.concatenate(([False], mask[:-1]))
    after = np.concatenate((mask[1:], [False]))
    before[bounds[:-1][lengths > 0]] = False  # runs end at their sample's bounds
    after[bounds[1:][lengths > 0] - 1] = False
    run_starts = np.flatnonzero(mask & ~before)
    run_ends = np.flatnonzero(mask & ~after) + 1
    run_owners = sample_of[run_starts]
    runs = np.bincount(run_owners, minlength=count)
    no_run = np.flatnonzero(runs == 0)
    inner_ends = np.ones(len(run_ends), dtype=bool)  # the last run's end is its sample's end
    inner_ends[np.cumsum(runs)[runs > 0] - 1] = False
    # each sample's start, its runs' starts and inner ends, and for a sample without runs its end
    positions = np.concatenate((bounds[:-1], run_starts, run_ends[inner_ends], bounds[1:][no_run]))
    owners = np.concatenate((np.arange(count), run_owners, run_owners[inner_ends], no_run))
    order = np.lexsort((positions, owners))
    message_bounds = np.concatenate((positions[order], bounds[-1:])).astype(np.int64)
    sample_bounds = offsets_from_lengths(np.where(runs > 0, 2 * runs, 2).astype(np.int64))
    return message_bounds, sample_bounds


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
