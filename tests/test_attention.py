"""Varlen attention on a tiny Qwen2: packed batches give each sequence's own logits, loss and gradients."""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer, TrainingArguments

from fastsft import IGNORE_INDEX
from fastsft.collators import PaddingCollator, VarlenCollator
from fastsft.errors import ConfigError
from fastsft.kernels.packing import pack_llamafactory
from fastsft.train import attention
from fastsft.train.attention import (
    ATTN_IMPLEMENTATION,
    TorchVarlenAdapter,
    enable_varlen_attention,
    register_varlen_attention,
    sdpa_per_sequence,
    select_varlen_path,
    varlen_mask,
)

VOCAB = 101
TINY_YAML = Path(__file__).resolve().parent.parent / "examples" / "tiny_sft.yaml"


def tiny_model(
    kv_heads: int = 2, sliding_window: int | None = None, seed: int = 0, layers: int = 2
) -> Qwen2ForCausalLM:
    """A random tiny Qwen2 in fp32 using the varlen attention."""
    register_varlen_attention()
    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        intermediate_size=128,
        vocab_size=VOCAB,
        use_cache=False,
        use_sliding_window=sliding_window is not None,
        sliding_window=sliding_window,
        max_window_layers=0,
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    return Qwen2ForCausalLM(config).eval()


def with_attention(model: Qwen2ForCausalLM, implementation: str) -> Qwen2ForCausalLM:
    other = copy.deepcopy(model)
    other.set_attn_implementation(implementation)
    return other


def samples(seed: int, lengths: list[int]) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    out = []
    for length in lengths:
        ids = [rng.randrange(VOCAB) for _ in range(length)]
        prompt = rng.randrange(length)
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def alone_logits(model: Qwen2ForCausalLM, features: list[dict]) -> torch.Tensor:
    """Each sequence run on its own, logits concatenated."""
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in features])


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("flash_kwargs", [True, False], ids=["cu_seq_lens", "position_ids"])
def test_packed_logits_equal_each_sequence_alone(kv_heads: int, flash_kwargs: bool) -> None:
    model = tiny_model(kv_heads)
    features = samples(1, [7, 1, 13, 4, 21])
    batch = VarlenCollator(return_flash_kwargs=flash_kwargs, backend="python")(features)
    with torch.no_grad():
        packed = model(**batch).logits[0]
    expected = alone_logits(with_attention(model, "eager"), features)
    torch.testing.assert_close(packed, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flash_kwargs", [True, False], ids=["cu_seq_lens", "position_ids"])
def test_packed_batches_stay_separate_with_a_cache(flash_kwargs: bool) -> None:
    """sdpa and eager let packed sequences see each other when ``use_cache`` is on; this attention does not."""
    model = tiny_model()
    features = samples(9, [8, 3, 10])
    batch = VarlenCollator(return_flash_kwargs=flash_kwargs, backend="python")(features)
    with torch.no_grad():
        packed = model(**batch, use_cache=True).logits[0]
    torch.testing.assert_close(
        packed, alone_logits(with_attention(model, "eager"), features), atol=1e-5, rtol=0
    )


def test_llamafactory_neat_packed_rows_attend_within_sequences() -> None:
    model = tiny_model()
    features = samples(2, [9, 3, 14, 6, 11, 5])
    packed = pack_llamafactory(
        [f["input_ids"] for f in features],
        [f["labels"] for f in features],
        cutoff_len=23,
        pad_token_id=0,
        neat_packing=True,
    )
    rows = [{key: packed[key][r] for key in packed} for r in range(len(packed["input_ids"]))]
    batch = VarlenCollator(backend="python")(rows)
    with torch.no_grad():
        logits = model(**batch).logits[0]
    eager = with_attention(model, "eager")
    bounds = batch["cu_seq_lens_q"].tolist()
    for start, end in itertools.pairwise(bounds):
        expected = alone_logits(eager, [{"input_ids": batch["input_ids"][0, start:end].tolist()}])
        torch.testing.assert_close(logits[start:end], expected, atol=1e-5, rtol=0)


def test_packed_batches_build_no_dense_mask_and_run_per_sequence_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_model()
    features = samples(3, [30, 2, 17])
    batch = VarlenCollator(backend="python")(features)
    assert select_varlen_path("cpu", torch.float32) == "sdpa_per_sequence"

    def no_dense_mask(**kwargs: object) -> None:
        raise AssertionError("a dense mask was built for a packed batch")

    sdpa_shapes = []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: object):
        sdpa_shapes.append((query.shape[-2], key.shape[-2], kwargs.get("attn_mask")))
        return real_sdpa(query, key, value, **kwargs)

    monkeypatch.setattr(attention, "sdpa_mask", no_dense_mask)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    for flash_kwargs in (True, False):
        sdpa_shapes.clear()
        with torch.no_grad():
            model(**VarlenCollator(return_flash_kwargs=flash_kwargs, backend="python")(features))
        # one call per sequence and layer, each the size of its sequence, causal flag instead of a mask
        assert sdpa_shapes == [(n, n, None) for n in (30, 2, 17)] * 2
    assert batch["input_ids"].shape == (1, 49)


def test_padded_batches_go_to_sdpa() -> None:
    model = tiny_model()
    features = samples(4, [5, 12, 3])
    for padding_side in ("right", "left"):
        batch = PaddingCollator(0, pad_to_multiple_of=8, padding_side=padding_side)(features)
        with torch.no_grad():
            ours = model(**batch).logits
            sdpa = with_attention(model, "sdpa")(**batch).logits
        valid = batch["attention_mask"].bool()
        torch.testing.assert_close(ours[valid], sdpa[valid], atol=1e-6, rtol=0)
        torch.testing.assert_close(ours[valid], alone_logits(model, features), atol=1e-5, rtol=0)


def test_padded_and_varlen_batches_give_same_loss_and_gradients() -> None:
    features = samples(5, [6, 19, 2, 11])
    padded_model, varlen_model = tiny_model(), tiny_model()
    padded_loss = padded_model(**PaddingCollator(0, pad_to_multiple_of=8)(features)).loss
    varlen_loss = varlen_model(**VarlenCollator(backend="python")(features)).loss
    padded_loss.backward()
    varlen_loss.backward()
    torch.testing.assert_close(varlen_loss, padded_loss, atol=1e-6, rtol=0)
    for (name, padded), varlen in zip(padded_model.named_parameters(), varlen_model.parameters()):
        torch.testing.assert_close(varlen.grad, padded.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_sliding_window_matches_transformers_masks() -> None:
    model = tiny_model(sliding_window=4)
    eager = with_attention(model, "eager")
    features = samples(6, [9, 3, 12])
    with torch.no_grad():
        packed = model(**VarlenCollator(backend="python")(features)).logits[0]
        torch.testing.assert_close(packed, alone_logits(eager, features), atol=1e-5, rtol=0)
        # unpacked, unpadded rows: no kwargs, no mask; the window still applies
        rows = torch.tensor([features[0]["input_ids"], features[0]["input_ids"][::-1]])
        torch.testing.assert_close(
            model(input_ids=rows).logits, eager(input_ids=rows).logits, atol=1e-5, rtol=0
        )


def test_generation_with_a_cache_still_works() -> None:
    model = tiny_model()
    prompt = torch.tensor([samples(7, [6])[0]["input_ids"]])
    eager = with_attention(model, "eager")
    kwargs = {"max_new_tokens": 5, "do_sample": False, "use_cache": True, "pad_token_id": 0}
    assert model.generate(prompt, **kwargs).tolist() == eager.generate(prompt, **kwargs).tolist()


def query_positions(q_length: int, q_offset: int = 0) -> dict[str, Any]:
    """The query positions in the mask-interface call convention of the installed transformers
    (4.57 and later pass ``q_length`` / ``q_offset``, 4.56 ``cache_position``)."""
    from transformers.masking_utils import sdpa_mask

    if "q_length" in inspect.signature(sdpa_mask).parameters:
        return {"q_length": q_length, "q_offset": q_offset}
    return {"cache_position": torch.arange(q_offset, q_offset + q_length)}


def test_mask_function_builds_masks_only_for_padding_and_caches() -> None:
    plain = {"batch_size": 1, **query_positions(6), "kv_length": 6}
    assert varlen_mask(**plain) is None
    padding = torch.tensor([[True, True, True, False, False, False]])
    mask = varlen_mask(**plain, attention_mask=padding, allow_is_causal_skip=True)
    assert mask.shape == (1, 1, 6, 6) and not mask[0, 0, :, 3:].any()
    decode = varlen_mask(batch_size=1, **query_positions(2, 4), kv_length=6, allow_is_causal_skip=False)
    assert decode.shape == (1, 1, 2, 6) and decode[0, 0, 0].tolist() == [True] * 5 + [False]


def test_the_mask_function_takes_transformers_4_56s_call_too() -> None:
    """transformers 4.56 passes ``cache_position`` where later releases pass ``q_length``."""
    assert varlen_mask(batch_size=1, cache_position=torch.arange(6), kv_length=6) is None


def test_enable_varlen_attention_on_config_and_model() -> None:
    config = Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=VOCAB)
    assert enable_varlen_attention(config) == ATTN_IMPLEMENTATION
    assert config._attn_implementation == ATTN_IMPLEMENTATION
    model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    enable_varlen_attention(model)
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION


# ---------------------------------------------------------------- kernel selection and torch's varlen_attn


def test_kernel_selection_order(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_adapter = TorchVarlenAdapter.from_function(lambda q, k, v, a, b, c, d, *, window_size=(-1, -1): q)
    monkeypatch.setattr(attention, "_flash_attn_varlen", lambda: lambda *args, **kwargs: None)
    monkeypatch.setattr(attention, "_torch_varlen", lambda: fake_adapter)
    assert select_varlen_path("cuda", torch.bfloat16) == "flash_attn"
    assert select_varlen_path("cpu", torch.bfloat16) == "sdpa_per_sequence"
    assert select_varlen_path("cuda", torch.float32) == "sdpa_per_sequence"

    monkeypatch.setattr(attention, "_flash_attn_varlen", lambda: None)
    assert select_varlen_path("cuda", torch.float16) == "torch_varlen"
    assert select_varlen_path("cuda", torch.float16, window_left=3) == "torch_varlen"
    assert select_varlen_path("cuda", torch.float16, dropout=0.1) == "sdpa_per_sequence"
    with pytest.raises(ValueError, match="softcapping"):
        select_varlen_path("cuda", torch.float16, softcap=30.0)

    old_adapter = TorchVarlenAdapter.from_function(lambda q, k, v, a, b, c, d, *, is_causal=False: q)
    monkeypatch.setattr(attention, "_torch_varlen", lambda: old_adapter)
    assert select_varlen_path("cuda", torch.float16) == "torch_varlen"
    assert select_varlen_path("cuda", torch.float16, window_left=3) == "sdpa_per_sequence"


def test_every_cuda_fallback_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    windowless = TorchVarlenAdapter.from_function(lambda q, k, v, a, b, c, d, *, is_causal=False: q)
    monkeypatch.setattr(attention, "_flash_attn_varlen", lambda: None)
    monkeypatch.setattr(attention, "_torch_varlen", lambda: windowless)
    cases = {
        "fp32 queries, and the varlen kernels take fp16/bf16": {"dtype": torch.float32},
        "attention dropout 0.1 needs flash-attn": {"dropout": 0.1},
        "this torch's varlen_attn has no sliding window": {"window_left": 3},
    }
    for reason, kwargs in cases.items():
        choice = attention.varlen_kernel("cuda", kwargs.pop("dtype", torch.bfloat16), **kwargs)
        assert choice.kernel == "sdpa_per_sequence" and choice.fallback and reason in choice.reason
    monkeypatch.setattr(attention, "_torch_varlen", lambda: None)
    choice = attention.varlen_kernel("cuda", torch.bfloat16)
    assert choice.fallback and "this torch has no varlen_attn" in choice.reason
    assert not attention.varlen_kernel("cpu", torch.bfloat16).fallback  # CPU has nothing faster


def fake_varlen(signature: str, calls: list[dict]):
    """A stand-in for each torch release's ``varlen_attn`` keyword set, computing real attention."""

    def run(query, key, value, cu_q, cu_k, causal, window_left, scale=None, enable_gqa=False):
        calls[-1]["kv_heads"] = key.shape[1]
        calls[-1]["dtypes"] = (query.dtype, key.dtype, value.dtype)
        return sdpa_per_sequence(
            query, key, value, cu_q, cu_k, scale=scale, causal=causal, window_left=window_left
        )

    if signature == "is_causal":

        def varlen_attn(
            query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None
        ):
            calls.append({"is_causal": is_causal})
            return run(query, key, value, cu_seq_q, cu_seq_k, is_causal, -1)

    elif signature == "window_size":

        def varlen_attn(
            query,
            key,
            value,
            cu_seq_q,
            cu_seq_k,
            max_q,
            max_k,
            *,
            return_aux=None,
            scale=None,
            window_size=(-1, -1),
        ):
            calls.append({"scale": scale, "window_size": window_size})
            return run(query, key, value, cu_seq_q, cu_seq_k, window_size[1] == 0, window_size[0], scale)

    else:

        def varlen_attn(
            query,
            key,
            value,
            cu_seq_q,
            cu_seq_k,
            max_q,
            max_k,
            *,
            return_aux=None,
            scale=None,
            window_size=(-1, -1),
            enable_gqa=False,
        ):
            calls.append({"scale": scale, "window_size": window_size, "enable_gqa": enable_gqa})
            return run(
                query, key, value, cu_seq_q, cu_seq_k, window_size[1] == 0, window_size[0], scale, enable_gqa
            )

    return varlen_attn


@pytest.mark.parametrize(
    ("signature", "expected_call"),
    [
        ("is_causal", {"is_causal": True}),
        ("window_size", {"scale": 0.3, "window_size": (-1, 0)}),
        ("enable_gqa", {"scale": 0.3, "window_size": (-1, 0), "enable_gqa": True}),
    ],
)
def test_torch_varlen_adapter_for_each_signature(signature: str, expected_call: dict) -> None:
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    query, key, value = torch.randn(14, 4, 8), torch.randn(14, 2, 8), torch.randn(14, 2, 8)
    calls: list[dict] = []
    adapter = TorchVarlenAdapter.from_function(fake_varlen(signature, calls))
    output = adapter(query, key, value, cu, cu, 8, 8, scale=0.3, causal=True)
    # grouped key/value heads reach the kernel as they are, in every release (flash's kernel reads them)
    assert calls == [{**expected_call, "kv_heads": 2, "dtypes": (torch.float32,) * 3}]
    expected = sdpa_per_sequence(query, key, value, cu, cu, scale=0.3, causal=True)
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-5)
    assert adapter.supports(causal=True, window_left=2) == (signature != "is_causal")
    if signature != "is_causal":
        calls.clear()
        windowed = adapter(query, key, value, cu, cu, 8, 8, scale=None, causal=True, window_left=2)
        assert calls[0]["window_size"] == (2, 0)
        expected = sdpa_per_sequence(query, key, value, cu, cu, scale=None, causal=True, window_left=2)
        torch.testing.assert_close(windowed, expected, atol=1e-6, rtol=1e-5)


def test_adapter_reads_the_installed_torch_signature() -> None:
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    adapter = TorchVarlenAdapter.from_function(varlen.varlen_attn)
    assert adapter.has_window_size or adapter.has_is_causal
    assert adapter.supports(causal=True, window_left=-1)


def test_per_sequence_fallback_aligns_short_queries_to_the_end() -> None:
    torch.manual_seed(1)
    query, key, value = torch.randn(9, 2, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    cu = torch.tensor([0, 9], dtype=torch.int32)
    full = sdpa_per_sequence(query, key, value, cu, cu, scale=None, causal=True)
    last_two = sdpa_per_sequence(
        query[7:], key, value, torch.tensor([0, 2], dtype=torch.int32), cu, scale=None, causal=True
    )
    torch.testing.assert_close(last_two, full[7:], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- loss: token mean over the global batch


def token_mean_gradient(model: Qwen2ForCausalLM, features: list[dict]) -> dict[str, torch.Tensor]:
    """Gradient of the mean next-token loss over every labelled token of ``features`` together."""
    model.zero_grad()
    total_tokens = sum(sum(label != IGNORE_INDEX for label in f["labels"][1:]) for f in features)
    for feature in features:
        logits = model(input_ids=torch.tensor([feature["input_ids"]])).logits[0, :-1]
        labels = torch.tensor(feature["labels"][1:])
        (
            F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum") / total_tokens
        ).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "collator", [VarlenCollator(backend="python"), PaddingCollator(0, pad_to_multiple_of=8)]
)
def test_trainer_loss_is_token_mean_across_packing_and_accumulation(collator, tmp_path) -> None:
    features = samples(8, [30, 4, 12, 25])
    features[1]["labels"] = [IGNORE_INDEX] * 3 + features[1]["input_ids"][3:]  # one labelled token
    model = tiny_model().train()
    initial = copy.deepcopy(model)
    gradient = token_mean_gradient(copy.deepcopy(model), features)
    learning_rate = 0.5
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=learning_rate,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=features, data_collator=collator).train()
    for (name, after), before in zip(model.named_parameters(), initial.parameters()):
        torch.testing.assert_close(
            after, before - learning_rate * gradient[name], atol=1e-6, rtol=1e-5, msg=name
        )


# ---------------------------------------------------------------- the GPU path, decided on CPU


@pytest.fixture
def as_if_on_cuda(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Kernels chosen as on a CUDA device without flash-attn; torch's ``varlen_attn`` is a CPU
    stand-in computing the same attention, recording each call (keywords, key/value heads, dtypes)."""
    calls: list[dict] = []
    adapter = TorchVarlenAdapter.from_function(fake_varlen("enable_gqa", calls))
    real_kernel = attention.varlen_kernel
    monkeypatch.setattr(attention, "_flash_attn_varlen", lambda: None)
    monkeypatch.setattr(attention, "_torch_varlen", lambda: adapter)
    monkeypatch.setattr(
        attention, "varlen_kernel", lambda device_type, dtype, **kwargs: real_kernel("cuda", dtype, **kwargs)
    )
    return calls


@pytest.fixture
def announced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """The kernel announcements of this test (a fresh ``KERNELS`` log)."""
    messages: list[tuple[str, bool]] = []
    monkeypatch.setattr(attention, "KERNELS", attention.KernelLog())
    attention.KERNELS.reset(announce=lambda message, warning: messages.append((message, warning)))
    return messages


# bf16: true in fastsft train (fp32 weights under autocast), pure half weights, and the fp16 variant
PRECISIONS = {
    "fp32_weights_bf16_autocast": (torch.float32, torch.bfloat16, torch.bfloat16),
    "fp32_weights_fp16_autocast": (torch.float32, torch.float16, torch.float16),
    "bf16_weights": (torch.bfloat16, None, torch.bfloat16),
    "fp16_weights": (torch.float16, None, torch.float16),
}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mixed_and_half_precision_reach_the_varlen_kernel_on_cuda(
    precision: str, as_if_on_cuda: list[dict], announced: list[tuple[str, bool]]
) -> None:
    """Under ``bf16: true`` RoPE's fp32 cos/sin make q and k fp32 while v is bf16; the kernel must
    still be chosen (and run) in the autocast dtype, as transformers' flash path does."""
    weights, autocast, kernel_dtype = PRECISIONS[precision]
    model = tiny_model()
    features = samples(10, [9, 1, 14, 5])
    reference = alone_logits(with_attention(model, "eager"), features)  # fp32
    model = model.to(weights)
    batch = VarlenCollator(backend="python")(features)
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None),
    ):
        logits = model(**batch).logits[0].float()
    assert [call["dtypes"] for call in as_if_on_cuda] == [(kernel_dtype,) * 3] * 2  # one call per layer
    assert [call["kv_heads"] for call in as_if_on_cuda] == [2, 2]  # GQA read in place
    assert [message for message, _ in announced] == [
        f"attention kernel: torch_varlen (torch.nn.attention.varlen.varlen_attn, {attention._dtype_name(kernel_dtype)})"
    ]
    tolerance = 3e-2 if kernel_dtype == torch.bfloat16 else 5e-3  # 8 (bf16) / 11 (fp16) mantissa bits
    torch.testing.assert_close(logits, reference, atol=tolerance, rtol=tolerance)


def test_fp32_training_on_cuda_warns_with_its_reason_and_can_be_refused(
    as_if_on_cuda: list[dict], announced: list[tuple[str, bool]]
) -> None:
    model = tiny_model()
    batch = VarlenCollator(backend="python")(samples(11, [6, 3]))
    with torch.no_grad():
        model(**batch)
        model(**batch)
    assert not as_if_on_cuda
    ((message, warning),) = announced  # once, for two forwards of two layers
    assert warning and message.startswith("attention kernel: sdpa_per_sequence (fp32 queries, ")
    assert "train with bf16 or fp16" in message

    attention.KERNELS.reset(require_varlen_kernel=True)
    with pytest.raises(
        ConfigError, match=r"sdpa_per_sequence .*require_varlen_kernel: true makes this an error"
    ):
        model(**batch)


def test_each_kernel_is_announced_once_per_run_and_listed(announced: list[tuple[str, bool]]) -> None:
    model = tiny_model()
    features = samples(12, [7, 4, 9])
    with torch.no_grad():
        for _ in range(2):
            model(**VarlenCollator(backend="python")(features))
            model(**PaddingCollator(0)(features))
    assert announced == [
        ("attention kernel: sdpa_per_sequence (no varlen kernel on cpu)", False),
        ("attention kernel: sdpa (padding mask)", False),
    ]
    assert attention.KERNELS.used == {"sdpa_per_sequence": "no varlen kernel on cpu", "sdpa": "padding mask"}


def test_fastsft_train_announces_the_kernel_on_the_main_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastsft.train.config import load_config
    from fastsft.train.model import attention_kernels, choose_attention

    monkeypatch.setattr(attention, "KERNELS", attention.KernelLog())
    config = load_config(TINY_YAML, ["output_dir=unused"])
    assert choose_attention(config, packed=True) == ATTN_IMPLEMENTATION
    with torch.no_grad():
        tiny_model()(**VarlenCollator(backend="python")(samples(13, [5, 8])))
    assert (
        "[fastsft] attention kernel: sdpa_per_sequence (no varlen kernel on cpu)\n" in capsys.readouterr().out
    )
    assert attention_kernels(ATTN_IMPLEMENTATION) == {"sdpa_per_sequence": "no varlen kernel on cpu"}
    assert attention_kernels("sdpa") == {"sdpa": "transformers' attn_implementation"}


SYNCING_METHODS = ("tolist", "item", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__index__")


def host_syncs_per_forward(monkeypatch: pytest.MonkeyPatch, layers: int, batch: dict) -> tuple[int, int]:
    """Calls that wait for the device on CUDA (host copies, data-dependent shapes, ``.to("cpu")``)
    in one forward: all of them, and those made by ``fastsft.train.attention``."""
    model = tiny_model(layers=layers)
    counts = {"all": 0, "attention": 0}

    def count() -> None:
        counts["all"] += 1
        counts["attention"] += sys._getframe(2).f_code.co_filename == attention.__file__

    def counting(real):
        def method(self, *args, **kwargs):
            count()
            return real(self, *args, **kwargs)

        return method

    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if str(kwargs.get("device", args[0] if args else None)) == "cpu":
            count()
        return real_to(self, *args, **kwargs)

    with monkeypatch.context() as patch, torch.no_grad():
        for name in SYNCING_METHODS:
            patch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
        patch.setattr(torch.Tensor, "to", to)
        model(**{key: value.clone() if torch.is_tensor(value) else value for key, value in batch.items()})
    return counts["all"], counts["attention"]


@pytest.mark.parametrize("flash_kwargs", [True, False], ids=["cu_seq_lens", "position_ids"])
def test_sequence_boundaries_are_read_once_per_forward_not_per_layer(
    monkeypatch: pytest.MonkeyPatch, flash_kwargs: bool
) -> None:
    """The per-sequence path needs the boundaries on the host; the first layer copies them once."""
    batch = VarlenCollator(return_flash_kwargs=flash_kwargs, backend="python")(samples(14, [6, 2, 11]))
    two, five = (host_syncs_per_forward(monkeypatch, layers, batch) for layers in (2, 5))
    assert two == five  # nothing per layer
    assert two[1] >= 1  # the count sees the boundaries' host copy


def fake_flash_attn(calls: list[dict]):
    """A stand-in for flash-attn 2.8's ``flash_attn_varlen_func`` computing real attention (its V
    must have Q/K's head size, as the real kernel requires)."""

    def flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False,
        window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
        return_attn_probs=False, block_table=None,
    ):  # fmt: skip
        assert v.shape[-1] == q.shape[-1] == k.shape[-1], "flash-attn takes one head size"
        calls.append({"deterministic": deterministic, "kv_heads": k.shape[1], "causal": causal})
        return sdpa_per_sequence(q, k, v, cu_q, cu_k, scale=softmax_scale, causal=causal)

    return flash_attn_varlen_func


@pytest.mark.parametrize(("deterministic", "value_dim"), [("1", 6), ("0", 10), (None, 6)])
def test_flash_attn_call_reads_the_environment_and_pads_to_one_head_size(
    monkeypatch: pytest.MonkeyPatch,
    announced: list[tuple[str, bool]],
    deterministic: str | None,
    value_dim: int,
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(attention, "_flash_attn_varlen", lambda: fake_flash_attn(calls))
    real_kernel = attention.varlen_kernel
    monkeypatch.setattr(
        attention, "varlen_kernel", lambda device_type, dtype, **kwargs: real_kernel("cuda", dtype, **kwargs)
    )
    if deterministic is None:
        monkeypatch.delenv("FLASH_ATTENTION_DETERMINISTIC", raising=False)
    else:
        monkeypatch.setenv("FLASH_ATTENTION_DETERMINISTIC", deterministic)
    torch.manual_seed(2)
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    query, key = torch.randn(14, 4, 8, dtype=torch.bfloat16), torch.randn(14, 2, 8, dtype=torch.bfloat16)
    value = torch.randn(14, 2, value_dim, dtype=torch.bfloat16)  # MLA-style: V's head size differs
    output = attention.varlen_attention(query, key, value, cu, cu, 8, 8)
    assert calls == [{"deterministic": deterministic == "1", "kv_heads": 2, "causal": True}]
    assert announced == [("attention kernel: flash_attn (flash-attn, bf16)", False)]
    expected = sdpa_per_sequence(query, key, value, cu, cu, scale=None, causal=True)  # any V size
    assert output.shape == (14, 4, value_dim)
    torch.testing.assert_close(output, expected, atol=1e-2, rtol=1e-2)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_bf16_reaches_the_varlen_kernel_on_cuda() -> None:
    """ZeRO-3 with bf16 holds bf16 shards and runs without autocast: q, k and v arrive in bf16."""
    pytest.importorskip("deepspeed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    driver = Path(__file__).resolve().parent / "zero3_attention_driver.py"
    run = subprocess.run(
        [sys.executable, str(driver), str(port)], capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["zero3"] and result["weights"] == "torch.bfloat16"
    assert result["dtypes"] == [["torch.bfloat16"] * 3] * 2  # both layers on the varlen kernel
    assert result["announced"] == [
        "attention kernel: torch_varlen (torch.nn.attention.varlen.varlen_attn, bf16)"
    ]
    torch.testing.assert_close(
        torch.tensor(result["packed"]), torch.tensor(result["alone"]), atol=3e-2, rtol=3e-2
    )
