"""What ``fastsft train`` tells the user and writes beside the model: progress lines, ``trainer_log.jsonl``,
``metrics.json``, the ``*_results.json`` files and the loss plots, named as LLaMA-Factory names them."""

from __future__ import annotations

import json
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

from fastsft.errors import ConfigError

__all__ = [
    "METRICS_FILE",
    "TRAINER_LOG",
    "JsonlLogCallback",
    "llamafactory_entry",
    "plot_keys",
    "plot_loss",
    "plot_name",
    "save_results",
    "say",
    "smooth",
]

TRAINER_LOG = "trainer_log.jsonl"
METRICS_FILE = "metrics.json"


def plot_keys(eval_names: list[str] | None, evaluates: bool) -> list[str]:
    """The metrics LLaMA-Factory's ``run_sft`` plots: ``loss``, and ``eval_loss`` (or
    ``eval_NAME_loss`` per named eval set) when the run evaluates. Its ``eval_accuracy`` keys are
    left out: fastsft computes no accuracy, so they would only ever warn."""
    if not evaluates:
        return ["loss"]
    return ["loss", *([f"eval_{name}_loss" for name in eval_names] if eval_names else ["eval_loss"])]


def save_results(folder: Path, train_metrics: dict[str, Any], eval_metrics: dict[str, Any]) -> None:
    """``train_results.json``, ``eval_results.json`` (when evaluated) and ``all_results.json`` (both),
    as ``Trainer.save_metrics`` writes them in LLaMA-Factory's ``run_sft``."""
    results = {"train": train_metrics, "eval": eval_metrics}
    combined: dict[str, Any] = {}
    for split, metrics in results.items():
        if split == "train" or metrics:
            _write_json(folder / f"{split}_results.json", metrics)
            combined.update(metrics)
    _write_json(folder / "all_results.json", combined)


def _write_json(path: Path, values: dict[str, Any]) -> None:
    path.write_text(json.dumps(values, indent=4, sort_keys=True), encoding="utf-8")  # as save_metrics


def say(message: str) -> None:
    """One progress line for the user (callers print only on the main process)."""
    print(f"[fastsft] {message}", flush=True)


class JsonlLogCallback(TrainerCallback):
    """Appends every log to ``trainer_log.jsonl`` as LLaMA-Factory's ``LogCallback`` writes it
    (``current_steps``, ``total_steps``, ``loss``, ``eval_loss``, ``lr``, ``epoch``, ``percentage``,
    ``elapsed_time``, ``remaining_time``, and ``throughput`` / ``total_tokens`` once tokens were
    counted: what LlamaBoard and users' scripts read), followed by the rest of ``Trainer``'s log
    (``grad_norm``, ``learning_rate``, ``tokens_per_second``, ``num_input_tokens_seen``, ...).

    Only training's logs are written, as LLaMA-Factory does: the final evaluation is in
    ``eval_results.json``. A resumed run first drops the lines past the checkpoint's step, so the
    file reads like one run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.time()
        self.training = False

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.time()
        self.training = True
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
            if isinstance(entry, dict) and entry.get("current_steps", 0) <= step:
                kept.append(line)
        return kept

    def on_train_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False

    def on_log(
        self, args: TrainingArguments, state: Any, control: Any, logs: Any = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not logs or not self.training:
            return
        entry = llamafactory_entry(state, logs, time.time() - self.start)
        entry.update((key, value) for key, value in logs.items() if key not in entry)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def llamafactory_entry(state: Any, logs: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """One ``trainer_log.jsonl`` record with LLaMA-Factory's ``LogCallback.on_log`` fields, in its
    order, computed as it computes them (absent values left out)."""
    steps, total = state.global_step, state.max_steps
    remaining = (total - steps) * (elapsed / steps if steps else 0)
    entry = {
        "current_steps": steps,
        "total_steps": total,
        "loss": logs.get("loss"),
        "eval_loss": logs.get("eval_loss"),
        "lr": logs.get("learning_rate"),
        "epoch": logs.get("epoch"),
        "percentage": round(steps / total * 100, 2) if total else 100,
        "elapsed_time": str(timedelta(seconds=int(elapsed))),
        "remaining_time": str(timedelta(seconds=int(remaining))),
    }
    if state.num_input_tokens_seen:
        entry["throughput"] = round(state.num_input_tokens_seen / max(elapsed, 1e-9), 2)
        entry["total_tokens"] = state.num_input_tokens_seen
    return {key: value for key, value in entry.items() if value is not None}


def plot_name(key: str) -> str:
    """LLaMA-Factory's file name for the plot of ``key``: ``training_loss.png``, ``training_eval_loss.png``."""
    return "training_{}.png".format(key.replace("/", "_"))


def plot_loss(log_history: list[dict[str, Any]], output_dir: Path, keys: list[str]) -> list[str]:
    """One PNG per key, as LLaMA-Factory's ``plot_loss``: the values per step, raw and exponentially
    smoothed, drawn with matplotlib's Agg into ``training_KEY.png``. A key nothing logged gets
    LLaMA-Factory's warning (returned, one line each) and no file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings = []
    for key in keys:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if not points:
            warnings.append(
                f"No metric {key} to plot: nothing was logged, so {plot_name(key)} is not written"
            )
            continue
        steps, values = zip(*points)
        figure, axes = plt.subplots()
        axes.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
        axes.plot(steps, smooth(list(values)), color="#1f77b4", label="smoothed")
        axes.set_title(f"training {key} of {output_dir}")
        axes.set_xlabel("step")
        axes.set_ylabel(key)
        axes.legend()
        figure.savefig(output_dir / plot_name(key), format="png", dpi=100)
        plt.close(figure)
    return warnings


def smooth(values: list[float]) -> list[float]:
    """TensorBoard-style exponential moving average, as LLaMA-Factory's loss plot (weight from the count)."""
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    smoothed = [values[0]]
    for value in values[1:]:
        smoothed.append(smoothed[-1] * weight + (1 - weight) * value)
    return smoothed
