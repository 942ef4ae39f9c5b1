"""What ``fastsft train`` tells the user and writes beside the model: progress lines, ``trainer_log.jsonl``,
``metrics.json`` and the loss plot."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

from fastsft.errors import ConfigError

__all__ = ["LOSS_PLOT", "METRICS_FILE", "TRAINER_LOG", "JsonlLogCallback", "plot_loss", "say", "smooth"]

TRAINER_LOG = "trainer_log.jsonl"
METRICS_FILE = "metrics.json"
LOSS_PLOT = "training_loss.png"
EVAL_COLORS = ["#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]  # train is blue


def say(message: str) -> None:
    """One progress line for the user (callers print only on the main process)."""
    print(f"[fastsft] {message}", flush=True)


class JsonlLogCallback(TrainerCallback):
    """Appends every log (loss, learning rate, grad norm, tokens/s, ...) to ``trainer_log.jsonl``.

    A resumed run first drops the lines past the checkpoint's step, so the file reads like one run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.perf_counter()

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if state.global_step > 0 and self.path.exists():  # resumed
            kept = [line + "\n" for line in self.entries_up_to(state.global_step)]
        self.path.write_text("".join(kept), encoding="utf-8")

    def entries_up_to(self, step: int) -> list[str]:
        """The log's lines up to ``step``; a torn last line (a run killed mid-write) is dropped with a
        notice, any other unreadable line is an error naming the file and line."""
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        kept = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as err:
                if number == len(lines):
                    say(f"dropped the torn last line of {self.path} (a run was stopped while writing it)")
                    continue
                raise ConfigError(
                    f"{self.path} line {number} is not JSON ({err}); move the file aside"
                ) from None
            if isinstance(entry, dict) and entry.get("step", 0) <= step:
                kept.append(line)
        return kept

    def on_log(
        self, args: TrainingArguments, state: Any, control: Any, logs: Any = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        entry = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "elapsed_seconds": round(time.perf_counter() - self.start, 3),
            **logs,
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> None:
    """Training loss per step (raw and exponentially smoothed) and every eval loss (``eval_loss``,
    ``eval_NAME_loss``) on one figure, as a PNG drawn with matplotlib's Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    eval_keys = sorted(
        {key for entry in log_history for key in entry if key.startswith("eval") and key.endswith("_loss")}
    )
    if not points and not eval_keys:
        return
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    if points:
        steps, losses = zip(*points)
        axes.plot(steps, losses, color="#1f77b4", alpha=0.4, label="loss")
        axes.plot(steps, smooth(list(losses)), color="#1f77b4", label="smoothed")
    for key, color in zip(eval_keys, EVAL_COLORS * len(eval_keys)):
        evals = sorted({entry["step"]: entry[key] for entry in log_history if key in entry}.items())
        axes.plot(*zip(*evals), color=color, marker="o", markersize=4, label=key)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("training and evaluation loss" if eval_keys else "training loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def smooth(values: list[float]) -> list[float]:
    """TensorBoard-style exponential moving average, as LLaMA-Factory's loss plot (weight from the count)."""
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    smoothed = [values[0]]
    for value in values[1:]:
        smoothed.append(smoothed[-1] * weight + (1 - weight) * value)
    return smoothed
