"""Variable-length (packed, padding-free) attention for any transformers decoder.

``register_varlen_attention()`` registers ``"fastsft_varlen"`` with transformers'
``AttentionInterface`` (and a mask function with ``AttentionMaskInterface`` that builds no dense
mask for packed batches). Models using it attend within each sequence of a
``VarlenCollator`` batch, reading ``cu_seq_lens_q/k`` and ``max_length_q/k`` that the model's
forward passes through ``**kwargs``. Per call the first that applies runs:

1. ``flash_attn.flash_attn_varlen_func`` (flash-attn installed, CUDA, fp16/bf16);
2. ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16; its keyword arguments changed
   between torch releases and are adapted from its signature);
3. ``scaled_dot_product_attention`` once per sequence, which also runs on CPU.

Query, key and value go to the kernel dtype first, as transformers' flash path does: under
autocast (``bf16: true`` keeps fp32 weights, and RoPE's fp32 ``cos``/``sin`` turn q and k back
into fp32) that is the autocast dtype, otherwise the projections' fp16/bf16 weight dtype.

Without those kwargs and without an ``attention_mask``, sequence starts are read from
``position_ids`` (a position that does not follow its predecessor starts a sequence). Batches with
a padding mask go to transformers' sdpa attention unchanged. Sequence boundaries, and their host
copy where a kernel needs one, are computed once per forward by the first layer and reused by the
others (every layer receives the same tensors), so no layer waits on the device.

Every kernel run is recorded in ``KERNELS`` and announced once; on CUDA the per-sequence fallback
is a warning with its reason, or an error with ``require_varlen_kernel``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import math
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from fastsft.errors import ConfigError

__all__ = [
    "ATTN_IMPLEMENTATION",
    "KERNELS",
    "KernelChoice",
    "KernelLog",
    "SequenceBounds",
    "TorchVarlenAdapter",
    "enable_varlen_attention",
    "kernel_dtype",
    "register_varlen_attention",
    "sdpa_per_sequence",
    "select_varlen_path",
    "varlen_attention",
    "varlen_attention_forward",
    "varlen_kernel",
    "varlen_mask",
]

ATTN_IMPLEMENTATION = "fastsft_varlen"
HALF_DTYPES = (torch.float16, torch.bfloat16)
FLASH_ATTN = "flash_attn"
TORCH_VARLEN = "torch_varlen"
SDPA_PER_SEQUENCE = "sdpa_per_sequence"
SDPA = "sdpa"  # transformers' sdpa attention: padded batches (dense mask) and unpacked rows

logger = logging.getLogger(__name__)


@dataclass
class KernelLog:
    """The kernels this process's varlen attention ran, each with why it was chosen, announced once.

    ``announce(message, warning)`` receives each first use (default: this module's logger). Per-
    sequence SDPA on CUDA is a warning, or a ``ConfigError`` when ``require_varlen_kernel``.
    """

    used: dict[str, str] = field(default_factory=dict)
    require_varlen_kernel: bool = False
    announce: Callable[[str, bool], None] | None = None

    def reset(
        self,
        *,
        require_varlen_kernel: bool = False,
        announce: Callable[[str, bool], None] | None = None,
    ) -> None:
        """Start a run: forget the kernels seen so far and set its policy and its announcer."""
        self.used = {}
        self.require_varlen_kernel = require_varlen_kernel
        self.announce = announce

    def record(self, choice: KernelChoice) -> None:
        kernel, reason, warning = choice
        if kernel in self.used:
            return
        message = f"attention kernel: {kernel} ({reason})"
        if warning:
            message += "; one SDPA call per sequence and layer, far slower than a varlen kernel"
            if self.require_varlen_kernel:
                raise ConfigError(f"{message} (require_varlen_kernel: true makes this an error)")
        self.used[kernel] = reason
        if self.announce is not None:
            self.announce(message, warning)
        elif warning:
            logger.warning(message)
        else:
            logger.info(message)


KERNELS = KernelLog()


class KernelChoice(NamedTuple):
    """A kernel, why it was chosen, and whether it is the slow fallback where a fast one was due."""

    kernel: str
    reason: str
    fallback: bool = False


@functools.cache
def _flash_attn_varlen() -> Callable[..., torch.Tensor] | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.cache
def _takes_deterministic(function: Callable[..., torch.Tensor]) -> bool:
    """flash-attn >= 2.4.1 has ``deterministic`` (a deterministic, slower backward)."""
    return "deterministic" in inspect.signature(function).parameters


@dataclass(frozen=True)
class TorchVarlenAdapter:
    """Calls a ``varlen_attn`` whatever keyword arguments its torch release takes.

    Older releases take ``is_causal``; later ones ``window_size=(left, right)`` with ``(-1, 0)``
    meaning causal; ``scale`` and ``enable_gqa`` are recent. A missing ``scale`` is applied by
    rescaling the query. Grouped key/value heads are passed as they are: every release runs
    flash-attention's varlen kernel, which reads query head ``h`` against key/value head
    ``h // group`` itself (``enable_gqa``, where it exists, only allows it).
    """

    function: Callable[..., torch.Tensor]
    has_window_size: bool
    has_is_causal: bool
    has_scale: bool
    has_enable_gqa: bool

    @classmethod
    def from_function(cls, function: Callable[..., torch.Tensor]) -> TorchVarlenAdapter:
        parameters = inspect.signature(function).parameters
        return cls(
            function=function,
            has_window_size="window_size" in parameters,
            has_is_causal="is_causal" in parameters,
            has_scale="scale" in parameters,
            has_enable_gqa="enable_gqa" in parameters,
        )

    def supports(self, *, causal: bool, window_left: int) -> bool:
        """Whether this signature can express the requested masking."""
        if window_left >= 0:
            return self.has_window_size
        return not causal or self.has_window_size or self.has_is_causal

    def __call__(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        cu_seqlens_k: torch.Tensor,
        max_seqlen_q: int,
        max_seqlen_k: int,
        *,
        scale: float | None,
        causal: bool,
        window_left: int = -1,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.has_window_size:
            kwargs["window_size"] = (window_left, 0 if causal else window_left)
        elif self.has_is_causal:
            kwargs["is_causal"] = causal
        if self.has_scale:
            kwargs["scale"] = scale
        elif scale is not None:
            query = query * (scale * math.sqrt(query.shape[-1]))
        if self.has_enable_gqa and query.shape[1] != key.shape[1]:
            kwargs["enable_gqa"] = True
        return self.function(
            query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kwargs
        )


@functools.cache
def _torch_varlen() -> TorchVarlenAdapter | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return TorchVarlenAdapter.from_function(varlen_attn)


def varlen_kernel(
    device_type: str,
    dtype: torch.dtype,
    *,
    dropout: float = 0.0,
    causal: bool = True,
    window_left: int = -1,
    softcap: float | None = None,
) -> KernelChoice:
    """The kernel varlen attention uses for queries of ``dtype`` on ``device_type``, and why."""
    fast = device_type == "cuda" and dtype in HALF_DTYPES
    if fast and _flash_attn_varlen() is not None:
        return KernelChoice(FLASH_ATTN, f"flash-attn, {_dtype_name(dtype)}")
    if softcap is not None:
        raise ValueError(f"{ATTN_IMPLEMENTATION} supports logit softcapping only through flash-attn on CUDA")
    if device_type != "cuda":
        return KernelChoice(SDPA_PER_SEQUENCE, f"no varlen kernel on {device_type}")
    adapter = _torch_varlen()
    if not fast:
        reason = (
            f"{_dtype_name(dtype)} queries, and the varlen kernels take fp16/bf16: train with bf16 or fp16"
        )
    elif adapter is None:
        reason = "flash-attn is not installed and this torch has no varlen_attn"
    elif dropout != 0.0:
        reason = f"attention dropout {dropout} needs flash-attn, which is not installed"
    elif not adapter.supports(causal=causal, window_left=window_left):
        reason = "this torch's varlen_attn has no sliding window and flash-attn is not installed"
    else:
        return KernelChoice(TORCH_VARLEN, f"torch.nn.attention.varlen.varlen_attn, {_dtype_name(dtype)}")
    return KernelChoice(SDPA_PER_SEQUENCE, reason, fallback=True)


def select_varlen_path(
    device_type: str,
    dtype: torch.dtype,
    *,
    dropout: float = 0.0,
    causal: bool = True,
    window_left: int = -1,
    softcap: float | None = None,
) -> str:
    """Which kernel varlen attention uses: ``"flash_attn"``, ``"torch_varlen"`` or ``"sdpa_per_sequence"``."""
    return varlen_kernel(
        device_type, dtype, dropout=dropout, causal=causal, window_left=window_left, softcap=softcap
    ).kernel


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def kernel_dtype(query: torch.Tensor, module: torch.nn.Module | None = None) -> torch.dtype:
    """The dtype attention runs in, as transformers' flash path picks it: fp32 queries go to the
    autocast dtype under autocast, else to the fp16/bf16 weights of ``module``'s projections
    (fp32 layer norms in front of half-precision weights); any other query dtype stays."""
    if query.dtype != torch.float32:
        return query.dtype
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if module is not None:
        weight = next((m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
        if weight is not None and weight.dtype in HALF_DTYPES:
            return weight.dtype
    return torch.float32


def _sequence_mask(
    q_len: int, k_len: int, *, causal: bool, window_left: int, device: torch.device
) -> torch.Tensor:
    """One sequence's boolean mask, queries aligned to the end of the keys (as flash-attn does)."""
    rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    cols = torch.arange(k_len, device=device)[None, :]
    mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        mask &= cols <= rows
    if window_left >= 0:
        mask &= cols >= rows - window_left
        if not causal:
            mask &= cols <= rows + window_left
    return mask


def sdpa_per_sequence(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor | Sequence[int],
    cu_seqlens_k: torch.Tensor | Sequence[int],
    *,
    scale: float | None,
    causal: bool,
    window_left: int = -1,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Varlen attention as one ``scaled_dot_product_attention`` per sequence (any device).

    ``query`` is ``[T_q, H, D]``, ``key``/``value`` ``[T_k, H_kv, D]`` (grouped heads read in
    place, ``enable_gqa``); memory is per sequence, never ``T × T``. The boundaries may be given
    as host lists, which saves a device round trip per call.
    """
    bounds_q = cu_seqlens_q.tolist() if isinstance(cu_seqlens_q, torch.Tensor) else cu_seqlens_q
    bounds_k = cu_seqlens_k.tolist() if isinstance(cu_seqlens_k, torch.Tensor) else cu_seqlens_k
    grouped = key.shape[1] != query.shape[1]
    outputs = []
    for (q_start, q_end), (k_start, k_end) in zip(itertools.pairwise(bounds_q), itertools.pairwise(bounds_k)):
        if q_end == q_start:
            continue
        q_len, k_len = q_end - q_start, k_end - k_start
        mask = None
        if (window_left >= 0 and k_len > window_left + 1) or (causal and q_len != k_len):
            mask = _sequence_mask(q_len, k_len, causal=causal, window_left=window_left, device=query.device)
        output = F.scaled_dot_product_attention(
            query[q_start:q_end].transpose(0, 1),
            key[k_start:k_end].transpose(0, 1),
            value[k_start:k_end].transpose(0, 1),
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=causal and mask is None,
            scale=scale,
            enable_gqa=grouped,
        )
        outputs.append(output.transpose(0, 1))
    return torch.cat(outputs)


@dataclass
class SequenceBounds:
    """Where the sequences of a flattened batch start: ``cu_seqlens`` on the device, the longest
    lengths, and (made on first use, once) the same boundaries as host lists."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    host: tuple[list[int], list[int]] | None = None

    def host_lists(self) -> tuple[list[int], list[int]]:
        if self.host is None:
            if self.cu_k is self.cu_q:
                bounds = self.cu_q.tolist()
                self.host = (bounds, bounds)
            else:  # one device round trip for both
                both = torch.cat([self.cu_q, self.cu_k]).tolist()
                self.host = (both[: len(self.cu_q)], both[len(self.cu_q) :])
        return self.host


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    scale: float | None = None,
    causal: bool = True,
    window_left: int = -1,
    dropout: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention within each sequence of packed ``[T, H, D]`` tensors, by the first kernel that applies."""
    bounds = SequenceBounds(cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k))
    return _run_varlen(
        query,
        key,
        value,
        bounds,
        scale=scale,
        causal=causal,
        window_left=window_left,
        dropout=dropout,
        softcap=softcap,
    )


def _run_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: SequenceBounds,
    *,
    scale: float | None,
    causal: bool,
    window_left: int,
    dropout: float,
    softcap: float | None,
) -> torch.Tensor:
    choice = varlen_kernel(
        query.device.type,
        query.dtype,
        dropout=dropout,
        causal=causal,
        window_left=window_left,
        softcap=softcap,
    )
    KERNELS.record(choice)
    kernel = choice.kernel
    if kernel == SDPA_PER_SEQUENCE:
        host_q, host_k = bounds.host_lists()
        return sdpa_per_sequence(
            query,
            key,
            value,
            host_q,
            host_k,
            scale=scale,
            causal=causal,
            window_left=window_left,
            dropout=dropout,
        )
    # The flash kernels need one head size for q, k and v: pad the smaller (v in MLA-style
    # attention; zero columns change no dot product) and crop the output back.
    value_dim, head_dim = value.shape[-1], query.shape[-1]
    if value_dim < head_dim:
        value = F.pad(value, [0, head_dim - value_dim])
    elif value_dim > head_dim:
        scale = scale if scale is not None else head_dim**-0.5
        query, key = F.pad(query, [0, value_dim - head_dim]), F.pad(key, [0, value_dim - head_dim])
    if kernel == FLASH_ATTN:
        flash_attn_varlen_func = _flash_attn_varlen()
        extra = {}
        if _takes_deterministic(flash_attn_varlen_func):  # as transformers' flash path reads it
            extra["deterministic"] = os.environ.get("FLASH_ATTENTION_DETERMINISTIC", "0") == "1"
        output = flash_attn_varlen_func(
            query,
            key,
            value,
            bounds.cu_q,
            bounds.cu_k,
            bounds.max_q,
            bounds.max_k,
            dropout_p=dropout,
            softmax_scale=scale,
            causal=causal,
            window_size=(window_left, 0 if causal else window_left),
            softcap=0.0 if softcap is None else softcap,
            **extra,
        )
    else:
        output = _torch_varlen()(
            query,
            key,
            value,
            bounds.cu_q,
            bounds.cu_k,
            bounds.max_q,
            bounds.max_k,
            scale=scale,
            causal=causal,
            window_left=window_left,
        )
    return output[..., :value_dim] if output.shape[-1] != value_dim else output


class _BoundsCache:
    """The boundaries of the latest forward, keyed on the tensors they were read from: every layer
    of one forward receives the same ``cu_seq_lens_*`` / ``position_ids`` objects, so only the
    first layer computes them (and only it waits on the device for their host copy)."""

    def __init__(self) -> None:
        self._sources: tuple[weakref.ref[torch.Tensor], ...] = ()
        self._key: tuple[Any, ...] = ()
        self._value: SequenceBounds | None = None

    def get(
        self,
        sources: tuple[torch.Tensor, ...],
        key: tuple[Any, ...],
        compute: Callable[[], SequenceBounds | None],
    ) -> SequenceBounds | None:
        full_key = (*key, *(source._version for source in sources))
        cached = len(self._sources) == len(sources) and all(
            ref() is source for ref, source in zip(self._sources, sources)
        )
        if not cached or self._key != full_key:
            self._value = compute()
            self._sources = tuple(weakref.ref(source) for source in sources)
            self._key = full_key
        return self._value


_BOUNDS = _BoundsCache()


def _sequence_bounds(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    sliding_window: int | None,
    kwargs: dict[str, Any],
) -> SequenceBounds | None:
    """The sequences of the flattened batch, or ``None`` for plain sdpa."""
    device = query.device
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None:
        given_q, given_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")

        def from_kwargs() -> SequenceBounds:
            device_q = cu_q.to(device=device, dtype=torch.int32)
            device_k = device_q if cu_k is cu_q else cu_k.to(device=device, dtype=torch.int32)
            bounds = SequenceBounds(device_q, device_k, 0, 0)
            if given_q is None or given_k is None:
                host_q, host_k = bounds.host_lists()
            bounds.max_q = int(given_q) if given_q is not None else max(map(int.__sub__, host_q[1:], host_q))
            bounds.max_k = int(given_k) if given_k is not None else max(map(int.__sub__, host_k[1:], host_k))
            return bounds

        limits = tuple(id(g) if isinstance(g, torch.Tensor) else g for g in (given_q, given_k))
        return _BOUNDS.get((cu_q, cu_k), (device, *limits), from_kwargs)

    batch, _, length, _ = query.shape
    if attention_mask is not None or length == 1 or key.shape[2] != length:
        return None
    position_ids = kwargs.get("position_ids")
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] != length:
        if sliding_window is None or length <= sliding_window:
            return None
        starts = list(range(0, batch * length + 1, length))  # one sequence per row
        cu = torch.tensor(starts, dtype=torch.int32, device=device)
        return SequenceBounds(cu, cu, length, length, (starts, starts))

    def from_positions() -> SequenceBounds | None:
        positions = position_ids.detach().to("cpu").expand(batch, length)  # the one host copy
        starts = torch.zeros(batch, length, dtype=torch.bool)
        starts[:, 0] = True
        starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
        if not starts[:, 1:].any() and (sliding_window is None or length <= sliding_window):
            return None
        flat_starts = starts.flatten().nonzero().flatten().tolist()
        host = [*flat_starts, batch * length]
        cu = torch.tensor(host, dtype=torch.int32).to(device)
        longest = max(map(int.__sub__, host[1:], host))
        return SequenceBounds(cu, cu, longest, longest, (host, host))

    return _BOUNDS.get((position_ids,), (device, batch, length, sliding_window), from_positions)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The ``AttentionInterface`` function: ``query`` ``[B, H, T, D]`` → output ``[B, T, H, D]``."""
    if kwargs.get("s_aux") is not None:
        raise ValueError(f"{ATTN_IMPLEMENTATION} does not support attention sinks (s_aux)")
    bounds = _sequence_bounds(query, key, attention_mask, sliding_window, kwargs)
    if bounds is None:
        reason = "padding mask" if attention_mask is not None else "one sequence per row"
        KERNELS.record(KernelChoice(SDPA, reason))
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            softcap=softcap,
            **kwargs,
        )
    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", True)
    dtype = kernel_dtype(query, module)
    batch, heads, length, head_dim = query.shape
    output = _run_varlen(
        query.transpose(1, 2).reshape(batch * length, heads, head_dim).to(dtype),
        key.transpose(1, 2).reshape(-1, key.shape[1], head_dim).to(dtype),
        value.transpose(1, 2).reshape(-1, value.shape[1], value.shape[-1]).to(dtype),
        bounds,
        scale=scaling,
        causal=causal,
        window_left=sliding_window - 1 if sliding_window else -1,
        dropout=dropout,
        softcap=softcap,
    )
    return output.reshape(batch, length, heads, -1), None


def varlen_mask(batch_size: int, kv_length: int, **kwargs: Any) -> torch.Tensor | None:
    """The ``AttentionMaskInterface`` function: no mask where ``varlen_attention_forward`` finds the
    sequences itself (no padding mask, no cache offset, no custom mask pattern), sdpa's mask otherwise.

    transformers >= 4.57 passes ``q_length`` / ``q_offset``, older releases ``cache_position``; the
    keyword arguments go to ``sdpa_mask`` as they came."""
    cache_position = kwargs.get("cache_position")
    q_length = kwargs["q_length"] if "q_length" in kwargs else cache_position.shape[0]
    q_offset = kwargs.get("q_offset", 0)
    kv_offset = kwargs.get("kv_offset", 0)
    finds_sequences_itself = (
        kwargs.get("attention_mask") is None
        and not kwargs.get("use_vmap", False)
        and q_length == kv_length
        and isinstance(q_offset, int)
        and isinstance(kv_offset, int)
        and q_offset == kv_offset == 0
    )
    if finds_sequences_itself:
        return None
    return sdpa_mask(batch_size=batch_size, kv_length=kv_length, **kwargs)


def register_varlen_attention() -> str:
    """Register ``"fastsft_varlen"`` with transformers and return the name (for ``attn_implementation=``)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, varlen_mask)
    return ATTN_IMPLEMENTATION


def enable_varlen_attention(model_or_config: PreTrainedModel | PretrainedConfig) -> str:
    """Register the attention and switch a model (or a config, before building the model) to it."""
    name = register_varlen_attention()
    if isinstance(model_or_config, PreTrainedModel):
        model_or_config.set_attn_implementation(name)
    else:
        model_or_config._attn_implementation = name
    return name
