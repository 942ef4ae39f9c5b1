"""LLaMA-Factory's dense neat-packing mask, the baseline the collator and GPU benchmarks compare with."""

import torch


def prepare_4d_attention_mask(attention_mask_with_indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """LLaMA-Factory 0.9.5's ``data/collator.py:prepare_4d_attention_mask``, copied unchanged
    (Apache-2.0, Copyright 2025 OpenAccess AI Collective and the LlamaFactory team): the dense
    ``[B, 1, T, T]`` block-diagonal causal mask its collator builds for neat_packing without FA2."""
    _, seq_len = attention_mask_with_indices.size()
    min_dtype = torch.finfo(dtype).min
    zero_tensor = torch.tensor(0, dtype=dtype)
    non_padding_mask = (attention_mask_with_indices != 0).unsqueeze(1).unsqueeze(2)
    indices = attention_mask_with_indices.unsqueeze(1).unsqueeze(2)
    indices_t = attention_mask_with_indices.unsqueeze(1).unsqueeze(3)
    tril_mask = torch.tril(torch.ones((seq_len, seq_len), dtype=torch.bool))
    attention_mask_4d = (indices == indices_t) & non_padding_mask & tril_mask
    return torch.where(attention_mask_4d, zero_tensor, min_dtype)
