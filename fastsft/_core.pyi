"""Typed stubs of the compiled kernels (``csrc/_core.pyx``); call them through ``fastsft.kernels``."""

import numpy as np
from numpy.typing import ArrayLike
from typing_extensions import disjoint_base

BOUNDS_CHECKED: bool

def gather_segments(
    text_ids: ArrayLike,  # int32[T]
    text_offsets: ArrayLike,  # int64[X+1]
    segment_texts: ArrayLike,  # int64[S], -1 for a special token
    special_ids: ArrayLike,  # int32[K]
) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids int32[N], segment_lengths int64[S])."""

def assemble_supervised(
    token_ids: ArrayLike,  # int32[N]
    message_bounds: ArrayLike,  # int64[M+1]
    sample_bounds: ArrayLike,  # int64[n+1]
    cutoff_len: int,
    train_on_prompt: bool,
    mask_history: bool,
    efficient_eos: bool,
    eos_token_id: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids int32[T], labels int32[L], offsets int64[n+1], label_offsets int64[n+1])."""

def knapsack_llamafactory(lengths: ArrayLike, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """(order int64[n], row_bounds int64[R+1])."""

def pack_bfd(lengths: ArrayLike, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """(order int64[n], row_bounds int64[R+1])."""

def materialize_rows(
    input_ids: ArrayLike,  # int32[T]
    labels: ArrayLike,  # int32[T]
    offsets: ArrayLike,  # int64[n+1]
    order: ArrayLike,  # int64[k]
    row_bounds: ArrayLike,  # int64[R+1]
    row_length: int,
    pad_token_id: int,
    neat_packing: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, labels, attention_mask, position_ids: int32[T'], row_offsets int64[R+1], seq_lens int64[k])."""

def varlen_flatten(
    rows_input_ids: list[np.ndarray] | list[list[int]],
    rows_labels: list[np.ndarray] | list[list[int]],
    rows_position_ids: list[np.ndarray] | list[list[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(input_ids int64[T], labels int64[T], position_ids int64[T], cu_seqlens int32[S+1], max_seqlen)."""

def scan_json_array(
    buf: bytes | bytearray | memoryview, pos: int, state: int
) -> tuple[list[tuple[int, int]], int, int, int]:
    """(spans [(start, end), ...], pos, state, status)."""

def render_row(row: object, plan_tuple: tuple[object, ...], out: object) -> bool:
    """Whether ``row`` was rendered into ``out`` (a ``SegmentBatch``) under ``plan`` (a ``RenderPlan``)."""

CACHE_MAX_WORDS: int

@disjoint_base
class ByteLevelBPE:
    """Byte-level BPE over one tokenizer's tables (``csrc/bpe.pxi``; ``fastsft.tokenizer.bpe`` builds it)."""

    def __init__(
        self,
        char_classes: ArrayLike,  # uint8[0x110000]
        merges: ArrayLike,  # int32[M, 3]
        byte_ids: ArrayLike,  # int32[256]
        max_digits: int,
        whole_words: tuple[bytes, ArrayLike, ArrayLike] | None = None,  # blob, int64[W+1], int32[W]
        added: dict[str, int] | None = None,
        cache_max_words: int = ...,
        threads: int = 1,  # the most native threads a batch of at least 1 MiB per thread is spread over
    ) -> None: ...
    @property
    def cached_words(self) -> int: ...
    def encode_texts(self, texts: list[str | list[str | int]]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32[T], offsets int64[len(texts)+1])."""
    def split_added(self, text: str) -> list[str | int]:
        """The text between added tokens (``str``) and their ids (``int``), in order."""

def nfc_unchanged(text: str, sensitive: ArrayLike) -> bool: ...
