"""Training throughput of three SFT batching schemes on one GPU, as ``fastsft train`` trains.

A random-init Qwen2.5-0.5B-shaped model (``--model 1.5b`` for 1.5B) trains on random token ids
whose lengths follow a lognormal distribution (mean ``--mean-length`` ≈ 700, capped at
``--cutoff-len``); the first ~30% of each sample is prompt (label -100). Every mode trains on
exactly the same samples per optimizer step, split into micro-batches:

* ``padded_sdpa`` — transformers' default: ``--batch-size`` samples per micro-batch in random
  order, right-padded (to a multiple of 8, as LLaMA-Factory), sdpa attention;
* ``lf_neat_packing_dense_mask`` — LLaMA-Factory ``neat_packing``: knapsack rows of
  ``cutoff_len``, one row per micro-batch, a dense ``[B, 1, L, L]`` 4-D mask, sdpa attention;
* ``fastsft_varlen`` — fastsft: best-fit-decreasing rows of ``cutoff_len``, one row per
  micro-batch, ``VarlenCollator`` + fastsft's varlen attention.

Each mode runs in each precision: ``fp32_autocast`` (fp32 weights under bf16 autocast: what
``fastsft train`` does with ``bf16: true``, every LLaMA-Factory example) and ``bf16`` (pure bf16
weights). The model, attention, chunked loss and gradient checkpointing come from fastsft's own
set-up (``fastsft.train.model`` with ``TrainConfig``'s defaults), not a copy of it. Collation
uses the Python kernels (it is not timed), so neither the compiled core nor flash-attn is needed.

Reported per run: non-padding tokens per second, padding share, peak memory, MFU (useful model
FLOPs — 6·N per token plus causal attention — over the GPU's dense bf16 peak, looked up from the
device name and SM count, or ``--peak-tflops``), the attention kernels observed (as ``fastsft
train`` records them) and the first step's loss beside the padded run's (packing must not change
it beyond bf16 rounding). A failing run is recorded with its error and the others go on; the JSON
is rewritten after every run.

    python benchmarks/gpu_throughput.py --json gpu.json          # on the GPU, ~0.5B, 10 steps
    python benchmarks/gpu_throughput.py --dry-run --json x.json  # CPU, tiny model (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
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
from fastsft.train.config import TrainConfig
from fastsft.train.model import attention_kernels, choose_attention, configure_loss, load_model

MODEL_SHAPES = {  # Qwen2.5 configurations (config.json of the released models)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
}  # fmt: skip
# Dense bf16 tensor peak (TFLOP/s, no sparsity) by name fragment and SM count (None: any), first
# match wins: the H100/H800 PCIe (114 SMs) and NVL parts are slower than the SXM ones (132 SMs).
PEAK_BF16_TFLOPS = [
    ("H100 NVL", None, 835.0),
    ("H100 PCIe", None, 756.0),
    ("H100", 114, 756.0),
    ("H100", 132, 989.0),
    ("H800 PCIe", None, 756.0),
    ("H800", 114, 756.0),
    ("H800", 132, 989.0),
    ("H200 NVL", None, 835.0),
    ("H200", 132, 989.0),
    ("GH200", 132, 989.0),
    ("B200", None, 2250.0),
    ("A100", 108, 312.0),
    ("A800", 108, 312.0),
    ("L40S", 142, 362.0),
    ("L4", 58, 121.0),
]
MODES = ("padded_sdpa", "lf_neat_packing_dense_mask", "fastsft_varlen")
PRECISIONS = ("fp32_autocast", "bf16")
PAD_TOKEN_ID = 0
LOSS_RTOL = 2e-2  # first-step losses of two batchings agree to bf16 rounding


@dataclass
class RunResult:
    mode: str
    precision: str
    steps: int = 0
    non_pad_tokens: int = 0  # real tokens in the timed steps
    positions: int = 0  # tokens the model processed, padding included
    micro_batches_per_step: float = 0.0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    padding_fraction: float = 0.0
    peak_memory_gb: float | None = None
    mfu: float | None = None
    kernels: dict[str, str] | None = None  # attention kernels observed, as metrics.json records them
    loss_setup: str = ""
    first_step_loss: float | None = None
    first_step_loss_matches_padded: bool | None = None
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


def padded_batches(samples: list[dict[str, list[int]]], batch_size: int) -> list[dict]:
    collate = PaddingCollator(PAD_TOKEN_ID, pad_to_multiple_of=8)
    return [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]


def lf_neat_packed_batches(samples: list[dict[str, list[int]]], cutoff_len: int) -> list[dict]:
    rows = pack_llamafactory(
        [s["input_ids"] for s in samples],
        [s["labels"] for s in samples],
        cutoff_len=cutoff_len - 1,  # LLaMA-Factory's packing lowers cutoff_len by one
        pad_token_id=PAD_TOKEN_ID,
        neat_packing=True,
    )
    return [
        {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([positions]),
            "labels": torch.tensor([labels]),
            # LLaMA-Factory builds the mask in the compute dtype: bf16 in both precisions
            "attention_mask": prepare_4d_attention_mask(torch.tensor([mask]), torch.bfloat16),
        }
        for ids, mask, positions, labels in zip(
            rows["input_ids"], rows["attention_mask"], rows["position_ids"], rows["labels"]
        )
    ]


def varlen_batches(samples: list[dict[str, list[int]]], cutoff_len: int) -> list[dict]:
    ids = [s["input_ids"] for s in samples]
    labels = [s["labels"] for s in samples]
    order, bounds = best_fit_decreasing([len(x) for x in ids], cutoff_len)
    rows = rows_from_order(ids, labels, order, bounds, neat_packing=False)
    collate = VarlenCollator(backend="python")  # collation is not timed: no compiled core needed
    return [
        collate([{"input_ids": i, "labels": la, "position_ids": p}])
        for i, la, p in zip(rows["input_ids"], rows["labels"], rows["position_ids"])
    ]


def build_model(
    args: argparse.Namespace, precision: str, packed: bool, device: torch.device
) -> tuple[Any, str]:
    """The model as ``fastsft train`` builds it (fp32, attention chosen by fastsft, chunked loss,
    gradient checkpointing), in pure bf16 for ``precision == "bf16"``; and the loss line."""
    config_dir = Path(args.workdir)
    config = TrainConfig(
        model_config=str(config_dir / "config.json"),
        output_dir=str(config_dir / "unused"),
        bf16=True,
        gradient_checkpointing=args.gradient_checkpointing,
        chunked_loss=args.chunked_loss,
    )
    torch.manual_seed(args.seed)  # the same initial weights in every run
    model = load_model(config, choose_attention(config, packed))
    loss_setup = configure_loss(config, model)
    if config.gradient_checkpointing:  # what Trainer does with TrainingArguments' default kwargs
        model.activation_checkpointing_enable()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    return model.to(device).train(), loss_setup


def write_model_config(args: argparse.Namespace) -> None:
    shape = MODEL_SHAPES["tiny" if args.dry_run else args.model]
    config = {"model_type": "qwen2", "max_position_embeddings": 32768, **shape}
    (Path(args.workdir) / "config.json").write_text(json.dumps(config), encoding="utf-8")


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
    result: RunResult,
    make_batches: Callable[[list[dict[str, list[int]]]], list[dict]],
    steps: list[list[dict[str, list[int]]]],
    args: argparse.Namespace,
    device: torch.device,
    peak_flops: float | None,
) -> None:
    """Warm up, then time ``args.steps`` optimizer steps (forward, backward, AdamW) of one run."""
    model, result.loss_setup = build_model(args, result.precision, result.mode == "fastsft_varlen", device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    prepared = [make_batches(samples) for samples in steps]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=result.precision == "fp32_autocast")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    flops = 0.0
    start = 0.0
    for index, batches in enumerate(prepared):
        if index == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        num_items = sum(int(b["labels"][..., 1:].ne(IGNORE_INDEX).sum()) for b in batches)
        step_loss = 0.0
        for batch in batches:
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with autocast:
                loss = model(**inputs, num_items_in_batch=num_items).loss
            loss.backward()
            if index == 0:
                step_loss += float(loss.detach())
        if index == 0:
            result.first_step_loss = step_loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= args.warmup:
            lengths = [len(s["input_ids"]) for s in steps[index]]
            result.non_pad_tokens += sum(lengths)
            result.positions += sum(b["input_ids"].numel() for b in batches)
            result.micro_batches_per_step += len(batches) / args.steps
            flops += useful_flops(model, lengths)
    synchronize(device)
    result.seconds = time.perf_counter() - start
    result.steps = args.steps
    result.tokens_per_second = result.non_pad_tokens / result.seconds
    result.padding_fraction = 1 - result.non_pad_tokens / result.positions
    result.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result.mfu = flops / result.seconds / peak_flops if peak_flops else None
    result.kernels = attention_kernels(model.config._attn_implementation)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bf16_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """Dense bf16 peak FLOP/s of the GPU and where it came from; ``None`` on CPU or unknown GPUs."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak on CPU"
    name = torch.cuda.get_device_name(device)
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    for fragment, sms, tflops in PEAK_BF16_TFLOPS:
        if fragment in name and sms in (None, sm_count):
            return tflops * 1e12, f"{name}, {sm_count} SMs: {tflops:g} TFLOP/s"
    return None, f"{name} with {sm_count} SMs is not in the table; pass --peak-tflops for MFU"


def versions(device: torch.device) -> dict[str, Any]:
    import transformers

    try:
        import flash_attn

        flash = flash_attn.__version__
    except ImportError:
        flash = None
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "flash_attn": flash}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            device=properties.name, sm_count=properties.multi_processor_count, cuda=torch.version.cuda
        )
    else:
        info["device"] = "cpu"
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=["0.5b", "1.5b"], default="0.5b", help="Qwen2.5 shape (random init)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny model, one warm-up and one timed step (CI)"
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help=f"comma-separated subset of {', '.join(PRECISIONS)}",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}"
    )
    parser.add_argument(
        "--cutoff-len", type=int, default=None, help="row length / longest sample (default 4096)"
    )
    parser.add_argument("--mean-length", type=float, default=None, help="mean sample length (default 700)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="real tokens per optimizer step")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per padded micro-batch")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed optimizer steps per run (default 3)"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=defaults.gradient_checkpointing,
        help="as fastsft train (default: its default)",
    )
    parser.add_argument(
        "--chunked-loss",
        action=argparse.BooleanOptionalAction,
        default=defaults.chunked_loss,
        help="as fastsft train (default: its default)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak for MFU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here (after every run)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device = args.device or "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = (128, 40.0, 256, 1, 1) if args.dry_run else (4096, 700.0, 65536, 10, 3)
    args.cutoff_len = args.cutoff_len or sizes[0]
    args.mean_length = args.mean_length or sizes[1]
    args.tokens_per_step = args.tokens_per_step or sizes[2]
    args.steps = args.steps or sizes[3]
    args.warmup = sizes[4] if args.warmup is None else args.warmup
    for name, choices in (("modes", MODES), ("precisions", PRECISIONS)):
        unknown = set(getattr(args, name).split(",")) - set(choices)
        if unknown:
            parser.error(f"unknown {name} {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> list[RunResult]:
    args = parse_args(argv)
    device = torch.device(args.device)
    vocab_size = MODEL_SHAPES["tiny" if args.dry_run else args.model]["vocab_size"]
    steps = make_steps(args, vocab_size)
    peak_flops, peak_source = peak_bf16_flops(device, args.peak_tflops)
    batchings: dict[str, Callable[[list[dict[str, list[int]]]], list[dict]]] = {
        "padded_sdpa": lambda s: padded_batches(s, args.batch_size),
        "lf_neat_packing_dense_mask": lambda s: lf_neat_packed_batches(s, args.cutoff_len),
        "fastsft_varlen": lambda s: varlen_batches(s, args.cutoff_len),
    }
    report: dict[str, Any] = {
        "versions": versions(device),
        "peak": peak_source,
        "model": "tiny" if args.dry_run else args.model,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [],
    }
    print(f"peak: {peak_source}", flush=True)
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as workdir:
        args.workdir = workdir
        write_model_config(args)
        for precision in (p for p in PRECISIONS if p in args.precisions.split(",")):
            for mode in (m for m in MODES if m in args.modes.split(",")):
                result = RunResult(mode, precision)
                try:
                    run_mode(result, batchings[mode], steps, args, device, peak_flops)
                except Exception as err:  # recorded; the other runs go on
                    result.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
                compare_with_padded(result, results)
                results.append(result)
                release_memory(device)
                print_result(result)
                report["results"] = [asdict(r) for r in results]
                if args.json:
                    write_json(args.json, report)
    return results


def compare_with_padded(result: RunResult, earlier: list[RunResult]) -> None:
    padded = next((r for r in earlier if r.mode == "padded_sdpa" and r.precision == result.precision), None)
    if (
        result.mode == "padded_sdpa"
        or padded is None
        or None in (padded.first_step_loss, result.first_step_loss)
    ):
        return
    result.first_step_loss_matches_padded = math.isclose(
        result.first_step_loss, padded.first_step_loss, rel_tol=LOSS_RTOL
    )


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Atomically: a run killed later leaves the runs before it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def print_result(result: RunResult) -> None:
    label = f"{result.mode:27s} {result.precision:13s}"
    if result.error:
        print(f"{label} failed: {result.error}", flush=True)
        return
    memory = f"{result.peak_memory_gb:6.1f} GiB" if result.peak_memory_gb is not None else "     n/a"
    mfu = f"{100 * result.mfu:5.1f}%" if result.mfu is not None else "  n/a"
    loss = f"loss {result.first_step_loss:.4f}"
    if result.first_step_loss_matches_padded is not None:
        loss += " (= padded)" if result.first_step_loss_matches_padded else " (DIFFERS from padded)"
    kernels = ", ".join(result.kernels or {})
    print(
        f"{label} {result.tokens_per_second:12,.0f} tok/s  padding {100 * result.padding_fraction:5.1f}%  "
        f"peak {memory}  MFU {mfu}  {loss}  [{kernels}; {result.loss_setup}; "
        f"{result.micro_batches_per_step:.1f} micro-batches/step]",
        flush=True,
    )


if __name__ == "__main__":
    main()
