"""Runs a tiny Qwen2 under a real DeepSpeed ZeRO-3 engine with bf16 (one CPU process, gloo) on a
packed batch, for ``tests/test_attention.py``; kernels are chosen as on CUDA without flash-attn.

Usage: ``python tests/zero3_attention_driver.py PORT``. Prints one JSON line: the dtypes the
(stand-in) varlen kernel received per layer, the kernels announced, the packed logits and each
sequence's logits run alone through transformers' sdpa attention on the same engine.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

import deepspeed
import torch
from transformers import AutoModelForCausalLM, Qwen2Config
from transformers.integrations import HfDeepSpeedConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_attention import VOCAB, fake_varlen, samples

from fastsft.collators import VarlenCollator
from fastsft.train import attention

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 1,
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "SGD", "params": {"lr": 0.0}},
    "zero_allow_untested_optimizer": True,
}


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    zero3 = HfDeepSpeedConfig(DS_CONFIG)  # from_config builds the model inside zero.Init
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=VOCAB,
        use_cache=False,
        attn_implementation=attention.register_varlen_attention(),
    )
    model = AutoModelForCausalLM.from_config(config)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=list(model.parameters()), config=DS_CONFIG
    )

    calls: list[dict] = []
    adapter = attention.TorchVarlenAdapter.from_function(fake_varlen("enable_gqa", calls))
    real_kernel = attention.varlen_kernel
    attention._flash_attn_varlen = lambda: None
    attention._torch_varlen = lambda: adapter
    attention.varlen_kernel = lambda device_type, dtype, **kwargs: real_kernel("cuda", dtype, **kwargs)
    announced: list[str] = []
    attention.KERNELS.reset(announce=lambda message, warning: announced.append(message))

    features = samples(15, [8, 3, 12])
    with torch.no_grad():
        packed = engine(**VarlenCollator(backend="python")(features)).logits[0]
        engine.module.set_attn_implementation("sdpa")
        alone = [engine(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in features]
    print(
        json.dumps(
            {
                "weights": str(next(engine.module.parameters()).dtype),
                "zero3": zero3.is_zero3(),
                "dtypes": [[str(dtype) for dtype in call["dtypes"]] for call in calls],
                "announced": announced,
                "packed": packed.float().tolist(),
                "alone": torch.cat(alone).float().tolist(),
            }
        )
    )


if __name__ == "__main__":
    main()
