"""Encoding: conversations → flat ``input_ids``/``labels`` of a preprocessing batch.

One path for both encode paths: the template renders every conversation into segments, the
tokenizer implementation encodes all text segments of the batch in one call, the segments are
laid out per message, and the kernels' ``assemble_supervised`` applies LLaMA-Factory's
truncation and loss mask to the whole batch. Only the kernel module and the tokenizer
implementation differ between ``compiled`` and ``python``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastsft.data.accounting import SamplePolicy, SampleRef, Summary
from fastsft.data.chat.template import SpecialTokens, Template
from fastsft.data.sources.converter import Conversation
from fastsft.errors import DataError
from fastsft.kernels import offsets_from_lengths, select_kernels
from fastsft.kernels.supervised import TurnTrace, encode_pairs, pairs

__all__ = ["LABELS_LONGER_THAN_INPUTS", "EncodedBatch", "Encoder", "in_dataset_terms"]

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


class Encoder:
    """Turns conversations into ``input_ids``/``labels`` with one template, tokenizer and option set.

    ``tokenizer`` is the HF tokenizer (already fixed by ``fix_tokenizer``) that provides the
    special tokens; ``tokenizer_backend`` encodes the text (``fastsft.tokenizer.backends``);
    ``encode_path`` picks the kernels (``fastsft.kernels.select_kernels``).
    """

    def __init__(
        self,
        template: Template,
        tokenizer: Any,
        tokenizer_backend: Any,
        *,
        encode_path: str,
        cutoff_len: int,
        train_on_prompt: bool,
        mask_history: bool,
        policy: SamplePolicy,
    ) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.tokenizer_backend = tokenizer_backend
        self.encode_path = encode_path
        self.kernels = select_kernels(encode_path)
        self.cutoff_len = cutoff_len
        self.train_on_prompt = train_on_prompt
        self.mask_history = mask_history
        self.policy = policy
        self.specials = SpecialTokens.from_tokenizer(tokenizer, template.slot_tokens())
        self.discarding_history_cot = mask_history and not template.preserve_thinking
        self.eos_token_id = -1 if tokenizer.eos_token_id is None else tokenizer.eos_token_id

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
        clone.__setstate__(
            {**self.__getstate__(), "tokenizer_backend": self.tokenizer_backend.single_threaded()}
        )
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
        messages = self.template.encode_messages(
            self.tokenizer,
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
            eos_token_id=self.tokenizer.eos_token_id,
            trace=trace,
        )
        full = sum(len(m) for m in messages) + (1 if self.template.efficient_eos else 0)
        return input_ids, labels, full

    def encode(self, convs: list[Conversation], refs: list[SampleRef], summary: Summary) -> EncodedBatch:
        """Encode a batch; a sample the template rejects goes to the policy (raised, or counted and skipped)."""
        rendered, kept = [], []
        for conv, ref in zip(convs, refs):
            try:
                rendered.append(self.render(conv))
                kept.append(ref)
            except DataError as err:
                self.policy.malformed(in_dataset_terms(err, conv), ref, summary)
        encoded, label_offsets = self._encode_rendered(rendered)
        if np.array_equal(label_offsets, encoded.offsets):
            return encoded
        bad = set(np.flatnonzero(np.diff(label_offsets) != encoded.lengths).tolist())
        for index in sorted(bad):
            self.policy.malformed(DataError(LABELS_LONGER_THAN_INPUTS), kept[index], summary)
        return self._encode_rendered([r for i, r in enumerate(rendered) if i not in bad])[0]

    def _encode_rendered(
        self, rendered_batch: list[list[list[int | str]]]
    ) -> tuple[EncodedBatch, np.ndarray]:
        """One tokenizer call for every text segment of the batch, then one kernel call."""
        texts: list[str] = []
        seg_text_index: list[int] = []  # index into texts, or -1 for a special id
        special_ids: list[int] = []
        message_seg_counts: list[int] = []
        sample_message_counts: list[int] = []
        for rendered in rendered_batch:
            sample_message_counts.append(len(rendered))
            for segments in rendered:
                message_seg_counts.append(len(segments))
                for seg in segments:
                    if isinstance(seg, str):
                        seg_text_index.append(len(texts))
                        texts.append(seg)
                    else:
                        seg_text_index.append(-1)
                        special_ids.append(seg)

        text_ids, text_offsets = self.tokenizer_backend.encode_batch_flat(texts)
        token_ids, seg_lengths = self.kernels.gather_segments(
            text_ids,
            text_offsets,
            np.asarray(seg_text_index, dtype=np.int64),
            np.asarray(special_ids, np.int32),
        )
        message_bounds = offsets_from_lengths(seg_lengths)[
            offsets_from_lengths(np.asarray(message_seg_counts, dtype=np.int64))
        ]
        sample_bounds = offsets_from_lengths(np.asarray(sample_message_counts, dtype=np.int64))
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
