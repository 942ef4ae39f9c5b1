"""Peak memory of the causal-LM loss, plain vs chunked, forward + backward on CPU.

Each mode runs in its own subprocess and reports its peak RSS (``ru_maxrss``) above the RSS
after setup (inputs and LM head allocated), so only the loss's own tensors count. Defaults: a
Qwen-sized vocabulary (151,936), hidden size 64, 4,096 labelled tokens, fp32, chunks of 1,024 tokens.

    python benchmarks/loss_memory.py [--tokens 4096] [--vocab 151936] [--hidden 64] [--chunk 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def measure(mode: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict[str, float]:
    """Run in the child: one forward + backward of the loss; peak RSS growth in MiB."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fastsft.train.loss import chunked_causal_lm_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(hidden, vocab, bias=False)
    hidden_states = torch.randn(1, tokens, hidden, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens))
    lm_head.weight.grad = torch.zeros_like(lm_head.weight)  # the gradient buffer exists in both modes
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "plain":  # what transformers does: full logits, then ForCausalLMLoss
        logits = lm_head(hidden_states).float()
        shifted = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
        loss = F.cross_entropy(logits.view(-1, vocab), shifted, ignore_index=-100)
    else:
        loss = chunked_causal_lm_loss(hidden_states, lm_head, labels, chunk_tokens=chunk)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"loss": float(loss), "peak_mib": (peak - base) / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--child", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = (args.tokens, args.vocab, args.hidden, args.chunk)
    if args.child:
        print(json.dumps(measure(args.child, *sizes)))
        return
    results = {}
    for mode in ("plain", "chunked"):
        command = [sys.executable, __file__, "--child", mode, "--tokens", str(args.tokens)]
        command += ["--vocab", str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk)]
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
        results[mode] = json.loads(done.stdout.splitlines()[-1])
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    print(f"{args.tokens} tokens x vocabulary {args.vocab} (one fp32 logits copy: {logits_mib:,.0f} MiB)")
    for mode, result in results.items():
        print(f"{mode:>8}: peak RSS +{result['peak_mib']:,.0f} MiB  loss {result['loss']:.6f}")
    ratio = results["plain"]["peak_mib"] / max(results["chunked"]["peak_mib"], 1e-9)
    print(f"plain / chunked peak: {ratio:.1f}x")


if __name__ == "__main__":
    main()
