"""What the kernels return, and the one offsets-from-lengths helper every stage uses.

Both implementations (``reference`` and ``compiled``) return these named tuples with the same
dtypes, so a caller never needs to know which one ran.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "SCAN_CLOSED",
    "SCAN_INVALID",
    "SCAN_MORE",
    "SCAN_OPEN",
    "SLOT_ROLES",
    "ArrayScan",
    "Packing",
    "Part",
    "RenderPlan",
    "Rows",
    "SegmentBatch",
    "Segments",
    "Supervised",
    "Varlen",
    "offsets_from_lengths",
]


class Segments(NamedTuple):
    """``gather_segments``: segment ``s`` is ``token_ids[o[s]:o[s+1]]``, ``o = offsets_from_lengths(segment_lengths)``."""

    token_ids: np.ndarray  # int32[N]
    segment_lengths: np.ndarray  # int64[S]


class Supervised(NamedTuple):
    """``assemble_supervised``: sample ``s`` is ``input_ids[offsets[s]:offsets[s+1]]``.

    ``labels`` has its own ``label_offsets``, equal to ``offsets`` unless LLaMA-Factory's
    ``efficient_eos`` quirk gave a sample one label more than it has tokens.
    """

    input_ids: np.ndarray  # int32[T]
    labels: np.ndarray  # int32[L]
    offsets: np.ndarray  # int64[n+1]
    label_offsets: np.ndarray  # int64[n+1]


class Packing(NamedTuple):
    """A packer's answer: row ``r`` holds samples ``order[row_bounds[r]:row_bounds[r+1]]`` in that order."""

    order: np.ndarray  # int64[n]
    row_bounds: np.ndarray  # int64[R+1]


class Rows(NamedTuple):
    """``materialize_rows``: row ``r`` spans ``row_offsets[r]:row_offsets[r+1]`` of each token buffer.

    ``seq_lens`` is aligned with the packing ``order``: row ``r``'s sequence lengths are
    ``seq_lens[row_bounds[r]:row_bounds[r+1]]`` (padding excluded).
    """

    input_ids: np.ndarray  # int32[T]
    labels: np.ndarray  # int32[T]
    attention_mask: np.ndarray  # int32[T]
    position_ids: np.ndarray  # int32[T]
    row_offsets: np.ndarray  # int64[R+1]
    seq_lens: np.ndarray  # int64[n]


class Varlen(NamedTuple):
    """``varlen_flatten``: one padding-free stream; sequence ``i`` is ``cu_seqlens[i]:cu_seqlens[i+1]``."""

    input_ids: np.ndarray  # int64[T]
    labels: np.ndarray  # int64[T]
    position_ids: np.ndarray  # int64[T]
    cu_seqlens: np.ndarray  # int32[S+1]
    max_seqlen: int


# scan_json_array: the state a scan starts in (before the array's '['), and its results.
SCAN_OPEN = 0
SCAN_MORE = 0  # the buffer ended: resume at pos, in state, once more bytes are appended after it
SCAN_CLOSED = 1  # the array's ']' ends just before pos
SCAN_INVALID = 2  # the byte at pos breaks the array's grammar, or starts an element that is not an object


class ArrayScan(NamedTuple):
    """``scan_json_array``: the objects found, each ``buf[start:end]``, and where to go on from."""

    spans: list[tuple[int, int]]
    pos: int
    state: int
    status: int


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """``[0, l0, l0 + l1, ...]`` as int64: the offsets of items laid end to end."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


SLOT_ROLES = ("user", "assistant", "observation", "function")
"""The message roles, in the order of ``RenderPlan.role_parts``."""

Part = int | str | tuple[str]
"""A slot of a compiled formatter: a special-token id, fixed text, or ``(text,)`` with placeholders."""


class RenderPlan(NamedTuple):
    """What ``render_row`` needs to turn a raw ShareGPT row straight into segments: the dataset's
    columns and tags (``DatasetAttr``) and a plain template's slots resolved for one tokenizer.

    Built by ``fastsft.data.rows.rendering.render_plan``, which documents the rows it covers; any
    other row is left to the readable path (``convert`` then ``Template.render``).
    """

    messages: str  # the messages column
    role_tag: str
    content_tag: str
    system_tag: str | None  # a first message with this role is the system prompt
    system_column: str | None
    tools_column: str | None
    kto_tag: str | None
    media_columns: tuple[str, ...]
    prompt_roles: dict[str, int]  # role tag allowed at a prompt position -> index into role_parts
    response_roles: dict[str, int]  # the same at a response position
    role_parts: tuple[tuple[Part, ...] | None, ...]  # per SLOT_ROLES; None: such rows are left out
    prefix: tuple[int | str, ...]  # the first message's leading segments
    system_parts: tuple[Part, ...] | None  # None: rows with a system text are left out
    default_system: str


class SegmentBatch:
    """A batch's rendered samples, flat: the texts to tokenize in one call and how the segments,
    messages and samples are laid out over them (``gather_segments``' inputs).

    Segment ``s`` is ``texts[segment_texts[s]]`` or, where that index is -1, the next entry of
    ``special_ids``; messages own ``message_segments`` segments each, samples
    ``sample_messages`` messages each, in order.
    """

    __slots__ = ("message_segments", "sample_messages", "segment_texts", "special_ids", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.segment_texts: list[int] = []
        self.special_ids: list[int] = []
        self.message_segments: list[int] = []
        self.sample_messages: list[int] = []

    def __len__(self) -> int:
        return len(self.sample_messages)

    def add(self, rendered: list[list[int | str]]) -> None:
        """Append one sample rendered as segments per message (``Template.render``'s output)."""
        self.sample_messages.append(len(rendered))
        for segments in rendered:
            self.message_segments.append(len(segments))
            for segment in segments:
                if isinstance(segment, str):
                    self.segment_texts.append(len(self.texts))
                    self.texts.append(segment)
                else:
                    self.segment_texts.append(-1)
                    self.special_ids.append(segment)
