"""Training throughput of three SFT batching schemes on one GPU, in one run.

A random-init Qwen2.5-0.5B-shaped model (``--model 1.5b`` for 1.5B) in bf16 trains on random
token ids whose lengths follow a lognormal distribution (mean ``--mean-length`` ≈ 700, capped at
``--cutoff-len``); the first ~30% of each sample is prompt (label -100). Every mode trains on
exactly the same samples per optimizer step, split into micro-batches:

* ``padded_sdpa`` — transformers' default: ``--batch-size`` samples per micro-batch in random
  order, right-padded (to a multiple of 8, as LLaMA-Factory), sdpa attention;
* ``lf_neat_packing_dense_mask`` — LLaMA-Factory ``neat_packing``: knapsack rows of
  ``cutoff_len``, one row per micro-batch, a dense ``[B, 1, L, L]`` 4-D mask, sdpa attention;
* ``fastsft_varlen`` — fastsft: best-fit-decreasing rows of ``cutoff_len``, one row per
  micro-batch, ``VarlenCollator`` + fastsft's varlen attention (flash-attn when installed, else
  torch's ``varlen_attn``; per-sequence sdpa on CPU).

Reported per mode: non-padding tokens per second, padding share, peak memory and MFU (useful
model FLOPs — 6·N per token plus causal attention — over the GPU's dense bf16 peak).

    python benchmarks/gpu_throughput.py --steps 10 --warmup 3 --json gpu.json
    python benchmarks/gpu_throughput.py --device cpu --tiny --steps 2   # CI smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's helpers
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's fastsft

from llamafactory_mask import prepare_4d_attention_mask

from fastsft import IGNORE_INDEX
from fastsft.collators import PaddingCollator, VarlenCollator
from fastsft.kernels.packing import best_fit_decreasing, pack_llamafactory, rows_from_order
from fastsft.train.attention import register_varlen_attention, select_varlen_path

MODEL_SHAPES = {  # Qwen2.5 configurations (config.json of the released models)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
}  # fmt: skip
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}
MODES = ("padded_sdpa", "lf_neat_packing_dense_mask", "fastsft_varlen")
PAD_TOKEN_ID = 0


@dataclass
class ModeResult:
    mode: str
    attention: str
    steps: int
    non_pad_tokens: int  # real tokens in the timed steps
    positions: int  # tokens the model processed, padding included
    micro_batches_per_step: float
    seconds: float
    tokens_per_second: float
    padding_fraction: float
    peak_memory_gb: float | None
    mfu: float | None
    error: str | None = None


def sample_lengths(rng: np.random.Generator, count: int, mean: float, cutoff: int) -> np.ndarray:
    """Lognormal lengths with the given mean (sigma 0.8: a long tail, as chat SFT data has)."""
    sigma = 0.8
    mu = math.log(mean) - sigma**2 / 2
    return np.clip(rng.lognormal(mu, sigma, count).astype(np.int64), 16, cutoff)


def make_steps(args: argparse.Namespace, vocab_size: int) -> list[list[dict[str, list[int]]]]:
    """``warmup + steps`` optimizer steps, each a list of samples holding ~``tokens_per_step`` tokens."""
    rng = np.random.default_rng(args.seed)
    steps = []
    for _ in range(args.warmup + args.steps):
        samples, total = [], 0
        while total < args.tokens_per_step:
            length = int(sample_lengths(rng, 1, args.mean_length, args.cutoff_len - 1)[0])
            ids = rng.integers(1, vocab_size, length).tolist()
            prompt = max(1, int(0.3 * length))
            samples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
            total += length
        steps.append(samples)
    return steps


def padded_batches(samples: list[dict[str, list[int]]], batch_size: int, dtype: torch.dtype) -> list[dict]:
    collate = PaddingCollator(PAD_TOKEN_ID, pad_to_multiple_of=8)
    return [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]


def lf_neat_packed_batches(
    samples: list[dict[str, list[int]]], cutoff_len: int, dtype: torch.dtype
) -> list[dict]:
    rows = pack_llamafactory(
        [s["input_ids"] for s in samples],
        [s["labels"] for s in samples],
        cutoff_len=cutoff_len - 1,  # LLaMA-Factory's packing lowers cutoff_len by one
        pad_token_id=PAD_TOKEN_ID,
        neat_packing=True,
    )
    batches = []
    for ids, mask, positions, labels in zip(
        rows["input_ids"], rows["attention_mask"], rows["position_ids"], rows["labels"]
    ):
        batches.append(
            {
                "input_ids": torch.tensor([ids]),
                "position_ids": torch.tensor([positions]),
                "labels": torch.tensor([labels]),
                "attention_mask": prepare_4d_attention_mask(torch.tensor([mask]), dtype),
            }
        )
    return batches


def varlen_batches(samples: list[dict[str, list[int]]], cutoff_len: int, dtype: torch.dtype) -> list[dict]:
    ids = [s["input_ids"] for s in samples]
    labels = [s["labels"] for s in samples]
    order, bounds = best_fit_decreasing([len(x) for x in ids], cutoff_len)
    rows = rows_from_order(ids, labels, order, bounds, neat_packing=False)
    collate = VarlenCollator()
    return [
        collate([{"input_ids": i, "labels": la, "position_ids": p}])
        for i, la, p in zip(rows["input_ids"], rows["labels"], rows["position_ids"])
    ]


def build_model(
    args: argparse.Namespace, attn_implementation: str, device: torch.device, dtype: torch.dtype
) -> Any:
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(args.seed)
    config = Qwen2Config(**MODEL_SHAPES["tiny" if args.tiny else args.model], max_position_embeddings=32768)
    config.use_cache = False
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device).train()


def useful_flops(model: Any, lengths: list[int]) -> float:
    """Model FLOPs of fwd+bwd: 6·N per token (matmul weights, lm_head incl.) + causal attention 6·layers·d·L²."""
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    if not config.tie_word_embeddings:
        params -= model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    attention_width = config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    tokens = sum(lengths)
    squares = sum(length * length for length in lengths)
    return 6.0 * params * tokens + 6.0 * config.num_hidden_layers * attention_width * squares


def run_mode(
    mode: str,
    make_batches: Callable[[list[dict[str, list[int]]]], list[dict]],
    attn_implementation: str,
    attention_label: str,
    steps: list[list[dict[str, list[int]]]],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    peak_flops: float | None,
) -> ModeResult:
    """Warm up, then time ``args.steps`` optimizer steps (forward, backward, AdamW) of one mode."""
    model = build_model(args, attn_implementation, device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    prepared = [make_batches(samples) for samples in steps]  # collation is not what is timed
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    non_pad = positions = micro_batches = 0
    flops = 0.0
    start = 0.0
    for index, batches in enumerate(prepared):
        if index == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        num_items = sum(int(b["labels"][..., 1:].ne(IGNORE_INDEX).sum()) for b in batches)
        for batch in batches:
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            loss = model(**inputs, num_items_in_batch=num_items).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= args.warmup:
            lengths = [len(s["input_ids"]) for s in steps[index]]
            non_pad += sum(lengths)
            positions += sum(b["input_ids"].numel() for b in batches)
            micro_batches += len(batches)
            flops += useful_flops(model, lengths)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return ModeResult(
        mode=mode,
        attention=attention_label,
        steps=args.steps,
        non_pad_tokens=non_pad,
        positions=positions,
        micro_batches_per_step=micro_batches / args.steps,
        seconds=seconds,
        tokens_per_second=non_pad / seconds,
        padding_fraction=1 - non_pad / positions,
        peak_memory_gb=peak_memory,
        mfu=flops / seconds / peak_flops if peak_flops else None,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bf16_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Dense bf16 peak of the GPU (known models, or ``--peak-tflops``); ``None`` on CPU or unknown GPUs."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=["0.5b", "1.5b"], default="0.5b", help="Qwen2.5 shape (random init)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model and lengths (CPU smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on GPU, fp32 on CPU"
    )
    parser.add_argument(
        "--cutoff-len", type=int, default=None, help="row length / longest sample (default 4096)"
    )
    parser.add_argument("--mean-length", type=float, default=None, help="mean sample length (default 700)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="real tokens per optimizer step")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per padded micro-batch")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps per mode")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak for MFU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    defaults = (128, 40.0, 256) if args.tiny else (4096, 700.0, 65536)
    args.cutoff_len = args.cutoff_len or defaults[0]
    args.mean_length = args.mean_length or defaults[1]
    args.tokens_per_step = args.tokens_per_step or defaults[2]
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> list[ModeResult]:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    vocab_size = MODEL_SHAPES["tiny" if args.tiny else args.model]["vocab_size"]
    steps = make_steps(args, vocab_size)
    peak_flops = peak_bf16_flops(device, args.peak_tflops)
    varlen_name = register_varlen_attention()
    modes: dict[str, tuple[Callable[[list[dict[str, list[int]]]], list[dict]], str, str]] = {
        "padded_sdpa": (lambda s: padded_batches(s, args.batch_size, dtype), "sdpa", "sdpa"),
        "lf_neat_packing_dense_mask": (
            lambda s: lf_neat_packed_batches(s, args.cutoff_len, dtype),
            "sdpa",
            "sdpa",
        ),
        "fastsft_varlen": (
            lambda s: varlen_batches(s, args.cutoff_len, dtype),
            varlen_name,
            select_varlen_path(device.type, dtype),
        ),
    }
    results = []
    for mode in (m for m in MODES if m in args.modes.split(",")):
        make_batches, attn_implementation, attention_label = modes[mode]
        try:
            result = run_mode(
                mode,
                make_batches,
                attn_implementation,
                attention_label,
                steps,
                args,
                device,
                dtype,
                peak_flops,
            )
        except torch.cuda.OutOfMemoryError as err:
            result = ModeResult(
                mode, attention_label, args.steps, 0, 0, 0.0, 0.0, 0.0, 0.0, None, None, str(err)[:200]
            )
            torch.cuda.empty_cache()
        results.append(result)
        print_result(result)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": "tiny" if args.tiny else args.model,
        "dtype": args.dtype,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results],
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return results


def print_result(result: ModeResult) -> None:
    if result.error:
        print(f"{result.mode:28s} failed: {result.error}")
        return
    memory = f"{result.peak_memory_gb:6.1f} GiB" if result.peak_memory_gb is not None else "     n/a"
    mfu = f"{100 * result.mfu:5.1f}%" if result.mfu is not None else "  n/a"
    print(
        f"{result.mode:28s} {result.tokens_per_second:12,.0f} tok/s  padding {100 * result.padding_fraction:5.1f}%  "
        f"peak {memory}  MFU {mfu}  ({result.attention}, {result.micro_batches_per_step:.1f} micro-batches/step)",
        flush=True,
    )


if __name__ == "__main__":
    main()
