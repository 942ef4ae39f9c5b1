"""The chunked loss equals transformers' plain causal-LM loss, and its gradients, on tiny random models."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from fastsft.train.loss import EXACT_MODEL_TYPES, chunked_loss_unsupported, enable_chunked_loss

VOCAB = 97


def tiny_model(model_type: str, tie: bool) -> Any:
    config = AutoConfig.for_model(
        model_type,
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=tie,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    return model.train()


def batch() -> dict[str, torch.Tensor]:
    """Two padded rows with prompt, padding and a fully masked stretch (labels -100)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (2, 37), generator=generator)
    labels = input_ids.clone()
    labels[0, :5] = -100  # prompt
    labels[1, :11] = -100
    labels[1, 30:] = -100  # padding
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 30:] = 0
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def loss_and_grads(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("model_type", sorted(EXACT_MODEL_TYPES))
@pytest.mark.parametrize("num_items", [None, 123], ids=["mean", "num_items_in_batch"])
@pytest.mark.parametrize("chunk_tokens", [1, 7, 4096])
def test_chunked_loss_equals_the_plain_loss_and_gradients(
    model_type: str, tie: bool, num_items: int | None, chunk_tokens: int
) -> None:
    inputs = batch()
    if num_items is not None:
        inputs["num_items_in_batch"] = torch.tensor(num_items)
    model = tiny_model(model_type, tie)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) is tie
    plain_loss, plain_grads = loss_and_grads(model, inputs)
    enable_chunked_loss(model, chunk_tokens)
    output = model(**inputs)
    assert output.logits is None  # never materialised
    chunked_loss, chunked_grads = loss_and_grads(model, inputs)

    torch.testing.assert_close(chunked_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert plain_grads.keys() == chunked_grads.keys()
    assert any("embed_tokens" in name for name in plain_grads)
    assert any("lm_head" in name for name in plain_grads) is not tie  # tied: one parameter for both
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_no_labels_keep_the_original_forward_and_eval_uses_the_chunked_loss() -> None:
    model = tiny_model("qwen2", tie=True)
    reference = copy.deepcopy(model).eval()
    enable_chunked_loss(model, 8)
    inputs = batch()
    assert model(input_ids=inputs["input_ids"]).logits.shape == (2, 37, VOCAB)
    model.eval()
    with torch.no_grad():
        chunked = model(**inputs, num_items_in_batch=torch.tensor(1))  # the eval loop's sum
        plain = reference(**inputs, num_items_in_batch=torch.tensor(1))
    assert chunked.logits is None  # the chunked path: no logits
    torch.testing.assert_close(chunked.loss, plain.loss, rtol=1e-6, atol=1e-5)


def test_soft_capped_or_unknown_models_are_refused() -> None:
    model = tiny_model("qwen2", tie=True)
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in chunked_loss_unsupported(model)
    with pytest.raises(ValueError, match="not exact"):
        enable_chunked_loss(model, 8)
    model.config.final_logit_softcapping = None
    model.config.model_type = "gemma2"
    assert "gemma2" in chunked_loss_unsupported(model)
