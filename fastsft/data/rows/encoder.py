"""Encoding: raw rows → flat ``input_ids``/``labels`` of a preprocessing batch.

One path for both encode paths, in two halves. ``render_batch``: each row becomes segments, by
the kernels' ``render_row`` where the dataset and template have a plan
(``fastsft.data.rows.rendering``), else by ``convert`` and ``Template.render`` (which also name
what is wrong with a row). ``encode_rendered``: the tokenizer implementation encodes all text
segments of the batch in one call, the segments are laid out per message, and the kernels'
``assemble_supervised`` applies LLaMA-Factory's truncation and loss mask to the whole batch.
Only the kernel module and the tokenizer implementation differ between ``compiled`` and ``python``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fastsft import IGNORE_INDEX
from fastsft.data.accounting import SamplePolicy, SampleRef, Summary
from fastsft.data.chat.template import SpecialTokens, Template
from fastsft.data.rows.chat_mode import ChatTemplateMode, TemplateError
from fastsft.data.rows.rendering import render_plan
from fastsft.data.sources.converter import Conversation, Dropped, convert
from fastsft.data.sources.parser import DatasetAttr
from fastsft.data.sources.reading import Batch
from fastsft.errors import DataError
from fastsft.kernels import offsets_from_lengths, select_kernels
from fastsft.kernels.supervised import TurnTrace, encode_pairs, pairs
from fastsft.kernels.types import RenderPlan, SegmentBatch
from fastsft.tokenizer.encoders import invalid_unicode

if TYPE_CHECKING:
    from fastsft.tokenizer.encoders import TextEncoder
    from fastsft.tokenizer.spec import TokenizerSpec

__all__ = [
    "LABELS_LONGER_THAN_INPUTS",
    "EncodedBatch",
    "Encoder",
    "RenderedBatch",
    "in_dataset_terms",
    "invalid_text",
]


# LLaMA-Factory labels an empty later-turn prompt with one eos under efficient_eos, which makes
# `labels` longer than `input_ids`; no collator can use such a sample, so it is reported instead.
LABELS_LONGER_THAN_INPUTS = (
    "labels would be longer than input_ids (LLaMA-Factory's efficient_eos quirk on an empty prompt)"
)


@dataclass
class EncodedBatch:
    """Flat encoded samples of one preprocessing batch.

    Sample ``i`` is ``input_ids[offsets[i]:offsets[i+1]]`` (int32; ``labels`` alike, -100 on
    untrained tokens); ``full_lengths`` (int64[n]) are the untruncated lengths, to count truncation.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    full_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def for_rows(self, samples: np.ndarray) -> tuple[EncodedBatch, np.ndarray]:
        """The batch packed rows read ``samples`` from, and their indices in it: this one, as given."""
        return self, samples

    def select(self, keep: np.ndarray) -> EncodedBatch:
        """The samples at indices ``keep``, in that order, as a compact batch."""
        starts, ends = self.offsets[keep], self.offsets[keep + 1]
        lengths = ends - starts
        offsets = offsets_from_lengths(lengths)
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
        return EncodedBatch(
            self.input_ids[positions], self.labels[positions], offsets, self.full_lengths[keep]
        )


_PLANS_KEPT = 64  # render plans an encoder keeps (by dataset object)


@dataclass
class RenderedBatch:
    """A batch after ``Encoder.render_batch``: its kept samples' segments, and the kept samples
    themselves, for the errors found only once they are tokenized (text that is not valid Unicode,
    and under ``efficient_eos`` labels longer than the inputs)."""

    segments: SegmentBatch
    kept: Batch
    spans: list[list[tuple[int, int]]] | None = None  # the chat-template mode: each text's assistant spans


class Encoder:
    """Turns raw rows (or conversations) into ``input_ids``/``labels`` with one template, tokenizer and option set.

    ``spec`` is the tokenizer (fixed for ``template``) that provides the special tokens;
    ``text_encoder`` encodes the text (``fastsft.tokenizer.encoders``); ``encode_path`` picks the
    kernels (``fastsft.kernels.select_kernels``).
    """

    def __init__(
        self,
        template: Template,
        spec: TokenizerSpec,
        text_encoder: TextEncoder,
        *,
        encode_path: str,
        cutoff_len: int,
        train_on_prompt: bool,
        mask_history: bool,
        policy: SamplePolicy,
        chat_mode: ChatTemplateMode | None = None,
    ) -> None:
        self.template = template
        self.chat_mode = chat_mode
        self.spec = spec
        self.text_encoder = text_encoder
        self.encode_path = encode_path
        self.kernels = select_kernels(encode_path)
        self.cutoff_len = cutoff_len
        self.train_on_prompt = train_on_prompt
        self.mask_history = mask_history
        self.policy = policy
        token_ids = {token: spec.token_ids.get(token) for token in template.slot_tokens()}
        self.specials = SpecialTokens(spec.bos_token_id, spec.eos_token_id, token_ids)
        self.discarding_history_cot = mask_history and not template.preserve_thinking
        self.eos_token_id = -1 if spec.eos_token_id is None else spec.eos_token_id
        self._plans: dict[int, tuple[DatasetAttr, RenderPlan | None]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for worker processes: the kernel module is selected again there."""
        state = dict(self.__dict__)
        del state["kernels"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.kernels = select_kernels(self.encode_path)

    def single_threaded(self) -> Encoder:
        """This encoder with a single-threaded tokenizer, for a worker process."""
        clone = Encoder.__new__(Encoder)
        clone.__setstate__({**self.__getstate__(), "text_encoder": self.text_encoder.single_threaded()})
        return clone

    def render(self, conv: Conversation) -> list[list[int | str]]:
        return self.template.render(
            conv.messages,
            conv.system,
            conv.tools,
            self.specials,
            discarding_history_cot=self.discarding_history_cot,
        )

    def encode_one(
        self, conv: Conversation, trace: list[TurnTrace] | None = None
    ) -> tuple[list[int], list[int], int]:
        """One conversation on the readable reference, with its per-turn ``trace`` (for ``inspect``):
        (input_ids, labels, untruncated length)."""
        if self.chat_mode is not None:
            try:
                return self.chat_mode.encode_one(
                    conv,
                    cutoff_len=self.cutoff_len,
                    train_on_prompt=self.train_on_prompt,
                    mask_history=self.mask_history,
                    trace=trace,
                )
            except TemplateError as err:
                raise DataError(str(err)) from None
        messages = self.template.encode_messages(
            lambda text: self.text_encoder.encode_batch([text])[0],
            conv.messages,
            conv.system,
            conv.tools,
            discarding_history_cot=self.discarding_history_cot,
            specials=self.specials,
        )
        input_ids, labels = encode_pairs(
            pairs(messages),
            cutoff_len=self.cutoff_len,
            train_on_prompt=self.train_on_prompt,
            mask_history=self.mask_history,
            efficient_eos=self.template.efficient_eos,
            eos_token_id=self.spec.eos_token_id,
            trace=trace,
        )
        full = sum(len(m) for m in messages) + (1 if self.template.efficient_eos else 0)
        return input_ids, labels, full

    def encode(self, batch: Batch, summary: Summary) -> EncodedBatch:
        """Encode a batch of raw rows; a row dropped or malformed goes to the policy (raised, or counted and skipped)."""
        return self.encode_rendered(self.render_batch(batch, summary), summary)

    def render_batch(self, batch: Batch, summary: Summary) -> RenderedBatch:
        """The first half of ``encode``: every row's segments (dropped and malformed rows to the policy)."""
        if self.chat_mode is not None:
            return self._render_chat_batch(batch, summary)
        segments = SegmentBatch()
        kept: list[int] = []
        render_row = self.kernels.render_row
        for position, (row, attr, ref) in enumerate(zip(*batch)):
            plan = self._plan(attr)
            if (plan is not None and render_row(row, plan, segments)) or self._render_readably(
                row, attr, ref, segments, summary
            ):
                kept.append(position)
        return RenderedBatch(segments, Batch(*([column[p] for p in kept] for column in batch)))

    def _render_chat_batch(self, batch: Batch, summary: Summary) -> RenderedBatch:
        """``render_batch`` in the chat-template mode: each row converted and rendered whole by the
        chat template, one text a sample (the kernels' ``render_row`` is for LLaMA-Factory's templates)."""
        mode = self.chat_mode
        assert mode is not None
        segments = SegmentBatch()
        spans: list[list[tuple[int, int]]] = []
        kept: list[int] = []
        for position, (row, attr, ref) in enumerate(zip(*batch)):
            try:
                conv = convert(row, attr, system_as_written=True)
            except DataError as err:
                self.policy.malformed(err, ref, summary)
                continue
            if isinstance(conv, Dropped):
                self.policy.dropped(conv.reason, ref, summary)
                continue
            try:
                text, sample_spans = mode.render(conv)
            except TemplateError as err:
                self.policy.malformed(DataError(str(err)), ref, summary)
                continue
            except DataError as err:
                self.policy.malformed(in_dataset_terms(err, conv), ref, summary)
                continue
            segments.add([[text]])
            spans.append(sample_spans)
            kept.append(position)
        return RenderedBatch(segments, Batch(*([column[p] for p in kept] for column in batch)), spans)

    def tokenize(self, segments: SegmentBatch) -> tuple[np.ndarray, np.ndarray] | None:
        """Every text segment's ids in one tokenizer call: ``int32[T]`` and ``int64[texts + 1]``
        offsets (thread-safe: ``workers`` runs it on a thread while this one assembles); ``None``
        when a text is not valid Unicode (a lone surrogate, which JSON's ``\\ud800`` escape gives
        and no tokenizer encodes): ``encode_rendered`` then finds its sample. The chat-template
        mode tokenizes in ``encode_rendered``, with the offsets its assistant mask needs."""
        if self.chat_mode is not None:
            return None
        try:
            return self.text_encoder.encode_batch_flat(segments.texts)
        except Exception:
            if not any(invalid_unicode(text) for text in segments.texts):
                raise
            return None

    def encode_rendered(
        self, rendered: RenderedBatch, summary: Summary, tokens: tuple[np.ndarray, np.ndarray] | None = None
    ) -> EncodedBatch:
        """The second half of ``encode``: tokenize (unless ``tokens`` is ``tokenize``'s result for
        these segments), then assemble ids and labels."""
        if rendered.spans is not None:
            return self._encode_chat(rendered, summary)
        if tokens is None:
            tokens = self.tokenize(rendered.segments)
            if tokens is None:
                return self._encode_valid_unicode(rendered, summary)
        encoded, label_offsets = self._encode_segments(rendered.segments, tokens)
        if np.array_equal(label_offsets, encoded.offsets):
            return encoded
        bad = set(np.flatnonzero(np.diff(label_offsets) != encoded.lengths).tolist())
        for index in sorted(bad):
            self.policy.malformed(DataError(LABELS_LONGER_THAN_INPUTS), rendered.kept.refs[index], summary)
        good = Batch(*([value for i, value in enumerate(column) if i not in bad] for column in rendered.kept))
        return self._encode_segments(self.render_batch(good, summary).segments)[0]

    def _encode_chat(self, rendered: RenderedBatch, summary: Summary) -> EncodedBatch:
        """The chat-template mode's second half: each text tokenized whole, its assistant tokens
        found, and the samples assembled; a sample left with no trained token is counted and skipped."""
        mode, texts = self.chat_mode, rendered.segments.texts
        assert mode is not None and rendered.spans is not None
        bad = {i: reason for i, text in enumerate(texts) if (reason := invalid_unicode(text)) is not None}
        for index, reason in bad.items():
            conv = convert(rendered.kept.rows[index], rendered.kept.attrs[index], system_as_written=True)
            found = invalid_text(conv) if isinstance(conv, Conversation) else None
            error = found or DataError(f"a text is not valid Unicode: {reason}")
            self.policy.malformed(error, rendered.kept.refs[index], summary)
        good = [i for i in range(len(texts)) if i not in bad]
        ids, trained, bounds = mode.tokenize_with_spans(
            [texts[i] for i in good], [rendered.spans[i] for i in good], self.text_encoder
        )
        input_ids, labels, offsets, full_lengths = mode.assemble(
            ids,
            trained,
            bounds,
            self.kernels,
            cutoff_len=self.cutoff_len,
            train_on_prompt=self.train_on_prompt,
            mask_history=self.mask_history,
        )
        encoded = EncodedBatch(input_ids, labels, offsets, full_lengths)
        counted = np.concatenate(([0], np.cumsum(labels != IGNORE_INDEX)))
        labelled = counted[offsets[1:]] - counted[offsets[:-1]]  # trained tokens per sample
        empty = np.flatnonzero(labelled == 0)
        for index in empty.tolist():
            summary.skip_no_trainable(rendered.kept.refs[good[index]])
        if len(empty):
            encoded = encoded.select(np.flatnonzero(labelled > 0))
        return encoded

    def _encode_valid_unicode(self, rendered: RenderedBatch, summary: Summary) -> EncodedBatch:
        """The batch without its samples holding a text that is not valid Unicode, each of them
        given to the policy (raised, naming the dataset, sample and message, or counted and skipped)."""
        segments, kept = rendered.segments, rendered.kept
        segment_message = np.repeat(np.arange(len(segments.message_segments)), segments.message_segments)
        message_sample = np.repeat(np.arange(len(segments)), segments.sample_messages)
        text_message = segment_message[np.asarray(segments.segment_texts) >= 0]
        bad: dict[int, DataError] = {}
        for index, text in enumerate(segments.texts):
            sample = int(message_sample[int(text_message[index])])
            if sample not in bad and invalid_unicode(text) is not None:
                conv = convert(kept.rows[sample], kept.attrs[sample])
                found = invalid_text(conv) if isinstance(conv, Conversation) else None
                bad[sample] = found or DataError(f"a text is not valid Unicode: {invalid_unicode(text)}")
        for sample, error in bad.items():
            self.policy.malformed(error, kept.refs[sample], summary)
        good = Batch(*([value for i, value in enumerate(column) if i not in bad] for column in kept))
        return self.encode_rendered(self.render_batch(good, summary), summary)

    def _plan(self, attr: DatasetAttr) -> RenderPlan | None:
        """The ``render_row`` plan of ``attr``'s rows, made once per dataset object. A worker process
        gets new objects with every batch, so the cache is emptied once it holds ``_PLANS_KEPT``."""
        known = self._plans.get(id(attr))
        if known is None or known[0] is not attr:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            known = self._plans[id(attr)] = (attr, render_plan(attr, self.template, self.specials))
        return known[1]

    def _render_readably(
        self, row: dict[str, Any], attr: DatasetAttr, ref: SampleRef, segments: SegmentBatch, summary: Summary
    ) -> bool:
        """``convert`` then ``Template.render`` into ``segments``; False when the policy got the row instead."""
        try:
            conv = convert(row, attr)
        except DataError as err:
            self.policy.malformed(err, ref, summary)
            return False
        if isinstance(conv, Dropped):
            self.policy.dropped(conv.reason, ref, summary)
            return False
        try:
            segments.add(self.render(conv))
        except DataError as err:
            self.policy.malformed(in_dataset_terms(err, conv), ref, summary)
            return False
        return True

    def _encode_segments(
        self, segments: SegmentBatch, tokens: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[EncodedBatch, np.ndarray]:
        """One tokenizer call for every text segment of the batch (unless given), then one kernel call."""
        text_ids, text_offsets = tokens if tokens is not None else self.tokenize(segments)
        token_ids, seg_lengths = self.kernels.gather_segments(
            text_ids,
            text_offsets,
            np.asarray(segments.segment_texts, dtype=np.int64),
            np.asarray(segments.special_ids, np.int32),
        )
        message_bounds = offsets_from_lengths(seg_lengths)[
            offsets_from_lengths(np.asarray(segments.message_segments, dtype=np.int64))
        ]
        sample_bounds = offsets_from_lengths(np.asarray(segments.sample_messages, dtype=np.int64))
        out = self.kernels.assemble_supervised(
            token_ids,
            message_bounds,
            sample_bounds,
            self.cutoff_len,
            self.train_on_prompt,
            self.mask_history,
            self.template.efficient_eos,
            self.eos_token_id,
        )
        full_lengths = np.diff(message_bounds[sample_bounds]) + (1 if self.template.efficient_eos else 0)
        return EncodedBatch(out.input_ids, out.labels, out.offsets, full_lengths), out.label_offsets


_TEMPLATE_FIELD = re.compile(r"^messages\[(\d+)\]\.content")


def invalid_text(conv: Conversation) -> DataError | None:
    """The first text of ``conv`` that is not valid Unicode, as an error naming its field."""
    texts = [(content["content"], field) for content, field in zip(conv.messages, conv.fields, strict=False)]
    texts += [(conv.system or "", "system"), (conv.tools or "", "tools")]
    for text, field in texts:
        reason = invalid_unicode(text)
        if reason is not None:
            return DataError(f"not valid Unicode: {reason}", field=field)
    return None


def in_dataset_terms(err: DataError, conv: Conversation) -> DataError:
    """A template error with its field named as in the dataset row.

    Templates see unified messages (``messages[i].content``); the converter recorded where each
    message's content came from (e.g. ``conversations[3].value``).
    """
    match = _TEMPLATE_FIELD.match(err.field or "")
    if not match or int(match.group(1)) >= len(conv.fields):
        return err
    field = conv.fields[int(match.group(1))] + err.field[match.end() :]
    return DataError(err.reason, dataset=err.dataset, index=err.index, field=field, line=err.line)
