"""One process of a streamed ``torchrun`` run for ``tests/test_streaming.py``: trains the YAML with
its overrides and writes what this process encoded and trained to ``RECORD_DIR/rank{N}.json``.

Usage: ``torchrun --nproc_per_node 2 tests/streaming_ranks_driver.py CONFIG RECORD_DIR STOP_BEFORE
KEY=VALUE...`` (``STOP_BEFORE`` > 0: interrupted as that step begins, as Ctrl-C would).

The record: ``encoded``, per pass this process streamed, the dataset index of every sample that
reached its encoder; ``trained``, per step, the stream position after the step's rows and each
row's tokens without padding; ``weights``, the sum of the trained weights (a run that ended).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from test_streaming import StopBefore
from transformers import TrainerCallback

import fastsft.data.streaming as data_streaming
from fastsft.train.config import load_config
from fastsft.train.streaming import STREAM_POSITION
from fastsft.train.trainer import SFTTrainer
from fastsft.train.workflow import train

encoded: list[list[int]] = []
trained: list[dict[str, Any]] = []
weights: list[float] = []


def recording_encoded_batches(encoder: Any, batches: Any, summary: Any, workers: int) -> Any:
    this_pass: list[int] = []
    encoded.append(this_pass)

    def recorded() -> Any:
        for batch in batches:
            this_pass.extend(ref.index for ref in batch.refs)
            yield batch

    return original_encoded_batches(encoder, recorded(), summary, workers)


def recording_training_step(self: Any, model: Any, inputs: dict[str, Any], *args: Any) -> Any:
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    trained.append({"position": list(inputs[STREAM_POSITION]), "rows": rows})
    return original_training_step(self, model, inputs, *args)


class WeightsSum(TrainerCallback):
    """The sum of the trained weights, when training ends: equal on every process under DDP."""

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        weights.append(float(sum(p.detach().double().sum() for p in model.parameters())))


original_encoded_batches = data_streaming.encoded_batches
original_training_step = SFTTrainer.training_step
data_streaming.encoded_batches = recording_encoded_batches
SFTTrainer.training_step = recording_training_step

if __name__ == "__main__":
    config_path, record_dir, stop_before, *overrides = sys.argv[1:]
    callbacks = [StopBefore(int(stop_before))] if int(stop_before) else [WeightsSum()]
    try:
        train(load_config(config_path, overrides), callbacks=callbacks)
    finally:
        record = {"encoded": encoded, "trained": trained, "weights": weights}
        (Path(record_dir) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record), encoding="utf-8")
