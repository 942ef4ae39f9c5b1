"""Chunked causal-LM cross-entropy: the training loss without the full logits tensor.

The plain path (``logits = lm_head(hidden)``, then transformers' ``ForCausalLMLoss``) holds the
``[tokens, vocab]`` logits in fp32 for the backward pass, twice over (the logits and the saved
log-softmax) plus their gradient: with Qwen's 151,936-token vocabulary that is 0.6 MB per token,
about 20 GB per copy at 32k tokens, more than a small model's weights and activations together.

``chunked_causal_lm_loss`` keeps only the labelled positions' hidden states, computes the logits
``chunk_tokens`` rows at a time and sums each chunk's cross-entropy under non-reentrant
``torch.utils.checkpoint``, so forward frees every chunk's logits at once and backward recomputes
them one chunk at a time: the peak is a few ``[chunk_tokens, vocab]`` tensors, whatever the
sequence length (measured in ``benchmarks/loss_memory.py``, numbers in ``docs/training.md``).

It is exact: the same shift (labels padded with -100 on the right, then ``labels[..., 1:]``),
the same sum over labelled tokens, the same divisor (``num_items_in_batch``, the labelled tokens
of the whole global batch that ``Trainer`` passes, or the local count without it) and the same
ops under autocast, so loss and gradients equal the plain path's up to the order of the sums.
Only architectures whose logits are exactly ``lm_head(last hidden state)`` qualify
(``chunked_loss_unsupported``); soft-capped or scaled logits keep the plain loss.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fastsft import IGNORE_INDEX

__all__ = [
    "EXACT_MODEL_TYPES",
    "chunked_causal_lm_loss",
    "chunked_loss_unsupported",
    "enable_chunked_loss",
]

# ``*ForCausalLM.forward`` is ``lm_head(self.model(...).last_hidden_state)`` then ``ForCausalLMLoss``
# with nothing in between (checked against transformers' modeling code; tested in tests/test_loss.py).
EXACT_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Config attributes that transform the logits before the loss in some architectures.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling")


def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: torch.nn.Module,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_tokens: int = 1024,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``ForCausalLMLoss(lm_head(hidden_states), labels, ...)`` computed ``chunk_tokens`` rows at a time.

    ``hidden_states`` ``[B, T, H]``, ``labels`` ``[B, T]`` (unshifted, as the model receives them).
    """
    shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].reshape(-1).to(hidden_states.device)
    keep = shifted.ne(ignore_index).nonzero().squeeze(1)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, keep)
    targets = shifted.index_select(0, keep)
    chunk_sum = functools.partial(_chunk_loss_sum, lm_head, ignore_index)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk_tokens):
        rows, row_targets = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if torch.is_grad_enabled():
            total = total + checkpoint(chunk_sum, rows, row_targets, use_reentrant=False)
        else:
            total = total + chunk_sum(rows, row_targets)
    if num_items_in_batch is None:
        return total / len(targets)  # a mean, as fixed_cross_entropy without num_items_in_batch
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _chunk_loss_sum(
    lm_head: torch.nn.Module, ignore_index: int, rows: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = lm_head(rows).float()  # upcast as ForCausalLMLoss does
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")


def chunked_loss_unsupported(model: Any) -> str | None:
    """Why the chunked loss would not equal ``model``'s own loss, or ``None`` when it is exact."""
    config = model.config
    if config.model_type not in EXACT_MODEL_TYPES:
        exact = ", ".join(sorted(EXACT_MODEL_TYPES))
        return (
            f"model_type {config.model_type} is not one known to compute logits as lm_head(hidden) ({exact})"
        )
    for name in LOGIT_TRANSFORMS:
        if getattr(config, name, None) not in (None, 1, 1.0):
            return f"the model transforms its logits ({name}={getattr(config, name)})"
    if not isinstance(getattr(model, "lm_head", None), torch.nn.Module) or not hasattr(model, "model"):
        return f"{type(model).__name__} has no lm_head / model submodules"
    return None


def enable_chunked_loss(model: Any, chunk_tokens: int) -> None:
    """Make ``model``'s forward with ``labels`` return the chunked loss and no logits.

    Replaces ``forward`` on this instance only (wrappers such as DDP or DeepSpeed call it), in
    training and evaluation alike (the eval loss is the training loss's); without labels or with
    ``logits_to_keep`` (generation) it runs the original forward.
    """
    reason = chunked_loss_unsupported(model)
    if reason is not None:
        raise ValueError(f"chunked loss not exact for this model: {reason}")
    original = model.forward

    def forward(input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        if labels is None or kwargs.get("logits_to_keep", 0) != 0:
            return original(input_ids=input_ids, labels=labels, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        kwargs.pop("logits_to_keep", None)
        outputs = model.model(input_ids=input_ids, **kwargs)  # the same kwargs the original passes
        loss = chunked_causal_lm_loss(
            outputs.last_hidden_state,
            model.lm_head,
            labels,
            kwargs.get("num_items_in_batch"),
            chunk_tokens,
        )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    model.forward = forward
