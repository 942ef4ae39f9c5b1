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

Without those kwargs and without an ``attention_mask``, sequence starts are read from
``position_ids`` (a position that does not follow its predecessor starts a sequence). Batches with
a padding mask go to transformers' sdpa attention unchanged.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = [
    "TorchVarlenAdapter",
    "enable_varlen_attention",
    "register_varlen_attention",
    "sdpa_per_sequence",
    "select_varlen_path",
    "varlen_attention",
    "varlen_attention_forward",
    "varlen_mask",
]

ATTN_IMPLEMENTATION = "fastsft_varlen"
HALF_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def _flash_attn_varlen() -> Callable[..., torch.Tensor] | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@dataclass(frozen=True)
class TorchVarlenAdapter:
    """Calls a ``varlen_attn`` whatever keyword arguments its torch release takes.

    Older releases take ``is_causal``; later ones ``window_size=(left, right)`` with ``(-1, 0)``
    meaning causal; ``scale`` and ``enable_gqa`` are recent. A missing ``scale`` is applied by
    rescaling the query, a missing ``enable_gqa`` by repeating the key/value heads.
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
        if query.shape[1] != key.shape[1]:
            if self.has_enable_gqa:
                kwargs["enable_gqa"] = True
            else:
                key, value = _repeat_kv_heads(key, value, query.shape[1])
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


def _repeat_kv_heads(
    key: torch.Tensor, value: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T, H_kv, D]`` → ``[T, num_heads, D]``; query head ``h`` reads key/value head ``h // group``."""
    group = num_heads // key.shape[1]
    return key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)


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
    if device_type == "cuda" and dtype in HALF_DTYPES:
        if _flash_attn_varlen() is not None:
            return "flash_attn"
        adapter = _torch_varlen()
        if (
            adapter is not None
            and dropout == 0.0
            and softcap is None
            and adapter.supports(causal=causal, window_left=window_left)
        ):
            return "torch_varlen"
    if softcap is not None:
        raise ValueError(f"{ATTN_IMPLEMENTATION} supports logit softcapping only through flash-attn on CUDA")
    return "sdpa_per_sequence"


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
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    scale: float | None,
    causal: bool,
    window_left: int = -1,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Varlen attention as one ``scaled_dot_product_attention`` per sequence (any device).

    ``query`` is ``[T_q, H, D]``, ``key``/``value`` ``[T_k, H_kv, D]``; memory is per sequence,
    never ``T × T``.
    """
    if key.shape[1] != query.shape[1]:
        key, value = _repeat_kv_heads(key, value, query.shape[1])
    outputs = []
    bounds = zip(itertools.pairwise(cu_seqlens_q.tolist()), itertools.pairwise(cu_seqlens_k.tolist()))
    for (q_start, q_end), (k_start, k_end) in bounds:
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
        )
        outputs.append(output.transpose(0, 1))
    return torch.cat(outputs)


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
    path = select_varlen_path(
        query.device.type,
        query.dtype,
        dropout=dropout,
        causal=causal,
        window_left=window_left,
        softcap=softcap,
    )
    if path == "flash_attn":
        return _flash_attn_varlen()(
            query,
            key,
            value,
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
            dropout_p=dropout,
            softmax_scale=scale,
            causal=causal,
            window_size=(window_left, 0 if causal else window_left),
            softcap=0.0 if softcap is None else softcap,
        )
    if path == "torch_varlen":
        return _torch_varlen()(
            query,
            key,
            value,
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
            scale=scale,
            causal=causal,
            window_left=window_left,
        )
    return sdpa_per_sequence(
        query,
        key,
        value,
        cu_seqlens_q,
        cu_seqlens_k,
        scale=scale,
        causal=causal,
        window_left=window_left,
        dropout=dropout,
    )


def _max_length(cu_seqlens: torch.Tensor, given: int | torch.Tensor | None) -> int:
    if given is None:
        return int(cu_seqlens.diff().max())
    return int(given)


def _sequence_boundaries(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    sliding_window: int | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, int, int] | None:
    """``(cu_seqlens_q, cu_seqlens_k, max_q, max_k)`` over the flattened batch, or ``None`` for plain sdpa."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None:
        cu_q = cu_q.to(device=query.device, dtype=torch.int32)
        cu_k = cu_k.to(device=query.device, dtype=torch.int32)
        return (
            cu_q,
            cu_k,
            _max_length(cu_q, kwargs.get("max_length_q")),
            _max_length(cu_k, kwargs.get("max_length_k")),
        )

    batch, _, length, _ = query.shape
    if attention_mask is not None or length == 1 or key.shape[2] != length:
        return None
    starts = torch.zeros(batch, length, dtype=torch.bool, device=query.device)
    starts[:, 0] = True
    position_ids = kwargs.get("position_ids")
    packed = False
    if position_ids is not None and position_ids.dim() == 2 and position_ids.shape[-1] == length:
        positions = position_ids.to(query.device).expand(batch, length)
        starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
        packed = bool(starts[:, 1:].any())
    if not packed and (sliding_window is None or length <= sliding_window):
        return None
    flat_starts = starts.flatten().nonzero().flatten()
    cu = torch.cat([flat_starts, flat_starts.new_tensor([batch * length])]).to(torch.int32)
    max_length = int(cu.diff().max())
    return cu, cu, max_length, max_length


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
    boundaries = _sequence_boundaries(query, key, attention_mask, sliding_window, kwargs)
    if boundaries is None:
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
    cu_q, cu_k, max_q, max_k = boundaries
    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", True)
    batch, heads, length, head_dim = query.shape
    output = varlen_attention(
        query.transpose(1, 2).reshape(batch * length, heads, head_dim),
        key.transpose(1, 2).reshape(-1, key.shape[1], head_dim),
        value.transpose(1, 2).reshape(-1, value.shape[1], value.shape[-1]),
        cu_q,
        cu_k,
        max_q,
        max_k,
        scale=scaling,
        causal=causal,
        window_left=sliding_window - 1 if sliding_window else -1,
        dropout=dropout,
        softcap=softcap,
    )
    return output.view(batch, length, heads, -1), None


def varlen_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int | torch.Tensor = 0,
    attention_mask: torch.Tensor | None = None,
    use_vmap: bool = False,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The ``AttentionMaskInterface`` function: no mask where ``varlen_attention_forward`` finds the
    sequences itself (no padding mask, no cache offset, no custom mask pattern), sdpa's mask otherwise."""
    finds_sequences_itself = (
        attention_mask is None
        and not use_vmap
        and q_length == kv_length
        and isinstance(q_offset, int)
        and isinstance(kv_offset, int)
        and q_offset == kv_offset == 0
    )
    if finds_sequences_itself:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        use_vmap=use_vmap,
        **kwargs,
    )


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
