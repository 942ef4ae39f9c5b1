"""``fastsft train`` end to end on the embedded tiny default (CPU, fp32).

Every run builds the tiny random-init Qwen2 model from ``examples/tiny/model/config.json`` with
the fixture tokenizer and the bundled ShareGPT sample, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from conftest import saved_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from fastsft.errors import ConfigError, DataError
from fastsft.train.command import run_train
from fastsft.train.config import load_config
from fastsft.train.workflow import build_trainer, train

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_YAML = REPO_ROOT / "examples" / "tiny_sft.yaml"
LF_YAML = REPO_ROOT / "examples" / "llamafactory_full_sft.yaml"

pytestmark = pytest.mark.usefixtures("repo_cwd")


def read_log(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def step_losses(output_dir: Path, key: str = "loss") -> dict[int, float]:
    return {entry["current_steps"]: entry[key] for entry in read_log(output_dir) if key in entry}


EVAL = ["val_size=9", "eval_strategy=steps", "eval_steps=2", "per_device_eval_batch_size=2"]


@pytest.mark.slow
def test_tiny_default_trains_and_saves_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [str(TINY_YAML), f"output_dir={out}", "max_steps=16", "logging_steps=1", "save_steps=8"]
    assert run_train(argv) == 0
    # The attention kernel is announced once and recorded (packed training and evaluation on CPU).
    assert capsys.readouterr().out.count("[fastsft] attention kernel: ") == 1

    log = [entry for entry in read_log(out) if "loss" in entry]
    assert [entry["current_steps"] for entry in log] == list(range(1, 17))
    for entry in log:
        assert {"grad_norm", "learning_rate", "tokens_per_second", "num_input_tokens_seen"} <= entry.keys()
        assert entry["tokens_per_second"] > 0
    losses = [entry["loss"] for entry in log]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses  # clearly decreasing
    # Non-padding tokens counted over the run, consistent between the log and metrics.json.
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["global_step"] == 16
    assert metrics["num_input_tokens_seen"] == log[-1]["num_input_tokens_seen"] > 16
    assert metrics["final_loss"] == pytest.approx(losses[-1])
    assert metrics["train_tokens_per_second"] > 0
    assert metrics["attention_kernels"] == {"sdpa_per_sequence": "no varlen kernel on cpu"}
    assert (out / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint-8").is_dir() and (out / "checkpoint-16").is_dir()
    # The example holds out 5% and evaluates every eval_steps and at the end (as LLaMA-Factory's do_eval).
    # transformers 5's Trainer also evaluates at a last step that is not a multiple of eval_steps (25);
    # the final evaluation (LLaMA-Factory's do_eval) goes to eval_results.json, not the log, as LF's.
    trainer_evals = [16] if int(transformers.__version__.split(".")[0]) >= 5 else []
    assert [entry["current_steps"] for entry in read_log(out) if "eval_loss" in entry] == trainer_evals
    assert metrics["eval_loss"] > 0

    # The final model and tokenizer reload and equal the last checkpoint.
    model = AutoModelForCausalLM.from_pretrained(out)
    checkpoint = AutoModelForCausalLM.from_pretrained(out / "checkpoint-16")
    for (name, saved), (_, reference) in zip(
        model.state_dict().items(), checkpoint.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(saved, reference, msg=name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == "<|im_end|>"  # fixed for the qwen template, as LLaMA-Factory saves it
    ids = tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def first_batch_grads(overrides: list[str], tmp_path: Path) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss and gradients of the first batch (the whole tiny subset) through ``training_step``."""
    config = load_config(
        TINY_YAML,
        [
            f"output_dir={tmp_path}",
            "max_samples=12",
            "cutoff_len=1024",
            "per_device_train_batch_size=12",
            "max_steps=1",
            *overrides,
        ],
    )
    trainer = build_trainer(config)
    batch = next(iter(trainer.get_train_dataloader()))
    num_items = int(batch["labels"][..., 1:].ne(-100).sum())
    trainer.create_optimizer()
    loss = trainer.training_step(trainer.model, batch, num_items)
    grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters()}
    return float(loss), grads, num_items


def test_packed_padding_free_and_padded_batches_give_the_same_loss_and_gradients(tmp_path: Path) -> None:
    padded = first_batch_grads(["packing=false", "attn=auto"], tmp_path / "padded")
    padding_free = first_batch_grads(["packing=false", "padding_free=true"], tmp_path / "free")
    # neat_packing keeps a row's samples apart (plain packing lets them attend across, as LLaMA-Factory does)
    packed = first_batch_grads(["neat_packing=true"], tmp_path / "packed")
    assert padded[2] == padding_free[2] == packed[2] > 0  # the same labelled tokens
    for loss, grads, _ in (padding_free, packed):
        assert loss == pytest.approx(padded[0], rel=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, padded[1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("packing", ["true", "false"])
def test_chunked_loss_equals_the_plain_loss_through_the_trainer(tmp_path: Path, packing: str) -> None:
    """``training_step`` with ``num_items_in_batch``: packed (-100 at sequence starts) and padded batches."""
    plain = first_batch_grads([f"packing={packing}", "chunked_loss=false"], tmp_path / "plain")
    chunked = first_batch_grads([f"packing={packing}", "loss_chunk_tokens=7"], tmp_path / "chunked")
    assert chunked[2] == plain[2] > 0
    assert chunked[0] == pytest.approx(plain[0], rel=1e-6)
    for name, grad in plain[1].items():
        torch.testing.assert_close(chunked[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def hand_computed_loss(model: Any, dataset: Any) -> float:
    """Cross-entropy over every labelled token of ``dataset``, one sequence at a time, in float64.

    Packed rows are cut into their sequences (``position_ids`` restart at 0); each sequence's
    first label is never predicted (nothing precedes it), as in training.
    """
    total, count = 0.0, 0
    model.eval()
    for row in dataset.with_format("torch"):
        starts = (row["position_ids"] == 0).nonzero().flatten().tolist() if "position_ids" in row else [0]
        for begin, end in zip(starts, [*starts[1:], len(row["input_ids"])]):
            ids, labels = row["input_ids"][begin:end].long(), row["labels"][begin:end].long()
            with torch.no_grad():
                logits = model(input_ids=ids[None]).logits[0].double()
            targets = labels[1:]
            keep = targets != -100
            log_probs = torch.log_softmax(logits[:-1][keep], dim=-1)
            total -= log_probs.gather(1, targets[keep][:, None]).sum().item()
            count += int(keep.sum())
    return total / count


@pytest.mark.parametrize(
    "batching", [["neat_packing=true"], ["packing=false"], ["packing=false", "padding_free=true"]], ids=str
)
def test_eval_loss_is_the_token_level_loss_of_the_validation_split(
    tmp_path: Path, batching: list[str]
) -> None:
    """``eval_loss`` equals a hand-computed token-level loss, however the eval rows are batched."""
    overrides = [f"output_dir={tmp_path}", "max_samples=60", "max_steps=1", "val_size=9", *batching]
    config = load_config(TINY_YAML, [*overrides, "per_device_eval_batch_size=3"])
    trainer = build_trainer(config)
    assert len(trainer.eval_dataset) > 1
    metrics = trainer.evaluate()
    model = trainer.accelerator.unwrap_model(trainer.model)
    expected = hand_computed_loss(model, trainer.eval_dataset)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx(
        EVAL_LOSS_BEFORE_TRAINING.setdefault("loss", expected), rel=1e-5
    )


EVAL_LOSS_BEFORE_TRAINING: dict[str, float] = {}  # the same samples and initial model in every batching


def test_eval_batches_deal_every_row_once() -> None:
    from fastsft.train.trainer import eval_batches

    assert eval_batches(0, 2, 2, 1) == []
    for rows, size, world in ((7, 2, 2), (8, 2, 2), (5, 3, 4), (1, 4, 2)):
        per_rank = [eval_batches(rows, size, world, rank) for rank in range(world)]
        assert len({len(batches) for batches in per_rank}) == 1  # the same number of forward passes
        real = sorted(i for batches in per_rank for batch in batches for i in batch if i < rows)
        assert real == list(range(rows))  # every row once; padding batches are marked (index >= rows)


def test_best_model_is_loaded_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    overrides = [f"output_dir={out}", "max_steps=6", "save_steps=2", "max_samples=60", "learning_rate=0.05"]
    overrides += [*EVAL, "load_best_model_at_end=true", "metric_for_best_model=eval_loss", "plot_loss=false"]
    metrics = train(load_config(TINY_YAML, overrides))
    evals = step_losses(out, "eval_loss")
    best_step = min((loss, step) for step, loss in evals.items())[1]
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert metrics["eval_loss"] == pytest.approx(evals[best_step], rel=1e-5)  # the final eval: the best model
    best = AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{best_step}").state_dict()
    for name, weight in AutoModelForCausalLM.from_pretrained(out).state_dict().items():
        torch.testing.assert_close(weight, best[name], msg=name)


def test_eval_on_each_dataset_logs_and_plots_every_eval_split(tmp_path: Path) -> None:
    out = tmp_path / "out"
    overrides = [f"output_dir={out}", "dataset_dir=tests/data", "dataset=sharegpt_chat", "max_steps=2"]
    overrides += ["val_size=0", "eval_dataset=alpaca_mix,openai_chat", "eval_on_each_dataset=true"]
    overrides += ["eval_strategy=steps"]
    overrides += ["eval_steps=1", "logging_steps=1"]
    metrics = train(load_config(TINY_YAML, overrides))
    for key in ("eval_alpaca_mix_loss", "eval_openai_chat_loss"):
        assert sorted(step_losses(out, key)) == [1, 2] and metrics[key] > 0
        assert (out / f"training_{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_named_and_drawn_as_llamafactory_draws_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One figure per metric (raw and smoothed), ``training_loss.png`` and ``training_eval_loss.png``;
    a metric nothing logged gets LLaMA-Factory's warning instead of a silent gap."""
    import matplotlib.axes

    from fastsft.train.logs import plot_loss

    labels: list[str] = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda self, *a, **k: labels.append(k.get("label")) or original(self, *a, **k),
    )
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.5}]
    warnings = plot_loss(history, tmp_path, ["loss", "eval_loss", "eval_other_loss"])
    assert labels == ["original", "smoothed"] * 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["training_eval_loss.png", "training_loss.png"]
    assert warnings == [
        "No metric eval_other_loss to plot: nothing was logged, so training_eval_other_loss.png is not written"
    ]


class StopAt(TrainerCallback):
    """Ends training after ``step`` as an interruption would (the checkpoint at ``step`` is kept)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


@pytest.mark.parametrize(
    "extra",
    [[], pytest.param(["max_tokens_per_batch=700", "gradient_accumulation_steps=2"], marks=pytest.mark.slow)],
)
def test_resume_reproduces_the_uninterrupted_losses(tmp_path: Path, extra: list[str]) -> None:
    common = [
        "max_steps=6",
        "save_steps=3",
        "logging_steps=1",
        "max_samples=120",
        "plot_loss=false",
        *EVAL,
        *extra,
    ]
    train(load_config(TINY_YAML, [f"output_dir={tmp_path / 'full'}", *common]))
    reference = step_losses(tmp_path / "full")

    interrupted = tmp_path / "interrupted"
    train(load_config(TINY_YAML, [f"output_dir={interrupted}", *common]), callbacks=[StopAt(3)])
    assert max(step_losses(interrupted)) == 3
    train(load_config(TINY_YAML, [f"output_dir={interrupted}", "resume_from_checkpoint=true", *common]))
    resumed = step_losses(interrupted)

    assert sorted(resumed) == list(range(1, 7))  # the log reads like one run
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5), (step, resumed, reference)
    reference_eval, resumed_eval = (
        step_losses(tmp_path / "full", "eval_loss"),
        step_losses(interrupted, "eval_loss"),
    )
    assert sorted(reference_eval) == [2, 4, 6]
    for step, loss in reference_eval.items():
        assert resumed_eval[step] == pytest.approx(loss, rel=1e-5), (step, resumed_eval, reference_eval)


def test_existing_output_dir_resumes_like_llamafactory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    common = [
        f"output_dir={out}",
        "max_steps=2",
        "save_steps=2",
        "logging_steps=1",
        "max_samples=40",
        "plot_loss=false",
    ]
    train(load_config(TINY_YAML, [*common, "overwrite_output_dir=false"]))
    first = step_losses(out)
    # Without overwrite_output_dir the last checkpoint is resumed; the first run's log is kept.
    train(load_config(TINY_YAML, [*common, "overwrite_output_dir=false"]))
    assert {step: step_losses(out)[step] for step in first} == first
    # With it, training starts over.
    train(load_config(TINY_YAML, [*common, "overwrite_output_dir=true"]))
    assert sorted(step_losses(out)) == [1, 2]
    assert not (out / "checkpoint-3").exists()


def test_llamafactory_full_sft_yaml_runs(tmp_path: Path) -> None:
    """LLaMA-Factory's YAML with only the model, the precision and the run length swapped for CPU."""
    out = tmp_path / "out"
    overrides = [
        "model_name_or_path=null",
        "model_config=examples/tiny/model/config.json",
        "tokenizer_name_or_path=examples/tiny/tokenizer",
        "deepspeed=null",
        "bf16=false",
        "max_steps=2",
        "logging_steps=1",
        "dataloader_num_workers=0",
        "preprocessing_num_workers=1",
        "max_samples=40",
        f"output_dir={out}",
    ]
    metrics = train(load_config(LF_YAML, overrides))
    assert metrics["global_step"] == 2 and len(step_losses(out)) == 2
    assert (out / "training_loss.png").is_file()
    AutoModelForCausalLM.from_pretrained(out)


def test_cli_reports_config_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from fastsft.cli import main

    assert main(["train", str(TINY_YAML), "learning_rat=1e-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fastsft train: error: unknown config key `learning_rat`; did you mean learning_rate?"


def test_a_failed_build_leaves_no_tokenized_path(tmp_path: Path) -> None:
    """The rows (and BFD's spilled samples) stream to a temporary folder, renamed into place only when complete."""
    data = tmp_path / "data"
    data.mkdir()
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ["not text"]}]}
    (data / "chat.json").write_text(json.dumps([good] * 30 + [bad]))
    (data / "dataset_info.json").write_text(
        json.dumps({"chat": {"file_name": "chat.json", "formatting": "sharegpt"}})
    )
    tokenized = tmp_path / "tokenized"
    overrides = [f"dataset_dir={data}", "dataset=chat", f"tokenized_path={tokenized}", "packing=true"]
    with pytest.raises(DataError, match="sample #30"):
        train(load_config(TINY_YAML, [*overrides, f"output_dir={tmp_path / 'out'}"]))
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_tokenized_path_is_saved_then_loaded(tmp_path: Path) -> None:
    from datasets import load_from_disk

    tokenized = tmp_path / "tokenized"
    common = [
        f"tokenized_path={tokenized}",
        "max_samples=40",
        "max_steps=2",
        "logging_steps=1",
        "plot_loss=false",
        *EVAL,
    ]
    train(load_config(TINY_YAML, [*common, f"output_dir={tmp_path / 'built'}"]))
    # A DatasetDict({"train": ..., "validation": ...}), as LLaMA-Factory saves it.
    assert list(load_from_disk(str(tokenized))) == ["train", "validation"]
    train(load_config(TINY_YAML, [*common, f"output_dir={tmp_path / 'loaded'}"]))
    assert step_losses(tmp_path / "loaded") == pytest.approx(step_losses(tmp_path / "built"), rel=1e-6)
    loaded_eval = step_losses(tmp_path / "loaded", "eval_loss")
    assert (
        loaded_eval == pytest.approx(step_losses(tmp_path / "built", "eval_loss"), rel=1e-6) and loaded_eval
    )
    # The tokenizer is fixed for the template either way (it is saved with the model).
    assert AutoTokenizer.from_pretrained(tmp_path / "loaded").eos_token == "<|im_end|>"


# --- tokenized_path provenance ------------------------------------------------------------------


def test_a_missing_model_fails_before_the_data_is_built(tmp_path: Path) -> None:
    overrides = [
        "model_config=null",
        f"model_name_or_path={tmp_path / 'no-model'}",
        f"tokenized_path={tmp_path / 'tokenized'}",
        f"output_dir={tmp_path / 'out'}",
    ]
    with pytest.raises(ConfigError, match=f"cannot load the model config from {tmp_path / 'no-model'}"):
        build_trainer(load_config(TINY_YAML, overrides))
    assert not (tmp_path / "tokenized").exists()


def test_tokenized_path_from_another_tokenizer_is_refused(tmp_path: Path) -> None:
    from fastsft.data.pipeline import build_to_disk

    other = AutoTokenizer.from_pretrained(REPO_ROOT / "examples" / "tiny" / "tokenizer")
    other.add_tokens(["<an-extra-token>"])
    tokenized = tmp_path / "tokenized"
    config = load_config(TINY_YAML, [f"tokenized_path={tokenized}", f"output_dir={tmp_path / 'out'}"])
    build_to_disk(config.data, other, tokenized)
    with pytest.raises(ConfigError, match=f"tokenized_path {tokenized} was made with another tokenizer"):
        build_trainer(config)


def test_tokenized_path_of_format_1_is_checked_with_its_own_fingerprint(tmp_path: Path) -> None:
    from fastsft.data.pipeline import build_to_disk
    from fastsft.data.store.provenance import tokenizer_fingerprint

    tokenizer_dir = REPO_ROOT / "examples" / "tiny" / "tokenizer"
    tokenized = tmp_path / "tokenized"
    config = load_config(TINY_YAML, [f"tokenized_path={tokenized}", f"output_dir={tmp_path / 'out'}"])
    build_to_disk(config.data, AutoTokenizer.from_pretrained(tokenizer_dir), tokenized)
    marker = tokenized / "fastsft_output.json"
    record = json.loads(marker.read_text())
    assert record["format"] == 2
    record["format"] = 1  # as fastsft wrote it before the fingerprint covered tokens in id order
    record["tokenizer"]["fingerprint"] = tokenizer_fingerprint(
        AutoTokenizer.from_pretrained(tokenizer_dir), 1
    )
    marker.write_text(json.dumps(record))
    build_trainer(config)
    record["tokenizer"]["fingerprint"] = "0" * 16
    marker.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="was made with another tokenizer"):
        build_trainer(config)


def test_token_ids_the_model_cannot_embed_are_refused(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    tokenized = tmp_path / "made-elsewhere"  # no provenance marker, as LLaMA-Factory saves it
    rows = {"input_ids": [[1, 2, 3], [4, 99_999]], "attention_mask": [[1] * 3, [1] * 2]}
    rows["labels"] = rows["input_ids"]
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tokenized))
    config = load_config(TINY_YAML, [f"tokenized_path={tokenized}", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(
        ConfigError, match=r"\(train split\) holds token id 99999, but the model's vocab_size is"
    ):
        build_trainer(config)


def test_data_options_a_saved_dataset_ignores_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenized = tmp_path / "tokenized"
    common = [f"tokenized_path={tokenized}", "max_samples=20"]
    build_trainer(load_config(TINY_YAML, [*common, f"output_dir={tmp_path / 'a'}"]))
    capsys.readouterr()
    build_trainer(load_config(TINY_YAML, [*common, "cutoff_len=256", f"output_dir={tmp_path / 'b'}"]))
    out = capsys.readouterr().out
    assert "[fastsft] data options ignored, as tokenized_path exists: cutoff_len 256 (saved: 512)" in out


def test_training_data_without_label_tokens_is_refused(tmp_path: Path) -> None:
    config = load_config(TINY_YAML, ["cutoff_len=1", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="the training data has no label tokens"):
        build_trainer(config)


def test_a_non_finite_gradient_norm_stops_the_run_before_the_optimizer_step(tmp_path: Path) -> None:
    """Checked through the public ``on_pre_optimizer_step`` hook, so on every supported transformers."""
    from fastsft.train.trainer import NonFiniteError

    config = load_config(
        TINY_YAML,
        [f"output_dir={tmp_path}", "max_samples=40", "max_steps=3", "val_size=0", "eval_strategy=no"],
    )
    trainer = build_trainer(config)
    weight = trainer.model.get_input_embeddings().weight
    before = weight.detach().clone()
    weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteError, match=r"^step 1: the gradient norm is (nan|inf); likely cause"):
        trainer.train()
    torch.testing.assert_close(weight.detach(), before)  # the optimizer never used it


@pytest.mark.parametrize("missing", ["_save_checkpoint", "_get_output_dir", "evaluation_loop"])
def test_a_trainer_without_a_method_fastsft_overrides_is_refused_in_one_line(missing: str) -> None:
    from transformers import Trainer

    from fastsft.errors import FastSFTError
    from fastsft.train.trainer import check_trainer_hooks, declared_requirement

    check_trainer_hooks()  # the installed transformers has them all
    renamed = type("RenamedTrainer", (Trainer,), {missing: None})
    with pytest.raises(FastSFTError, match=f"Trainer has no `{missing}`") as err:
        check_trainer_hooks(renamed)
    supported = declared_requirement("transformers")
    assert supported.startswith("transformers") and supported != "transformers"
    assert "\n" not in str(err.value) and str(err.value).endswith(f"pip install '{supported}'")


def test_a_save_checkpoint_that_no_longer_asks_get_output_dir_is_refused() -> None:
    from transformers import Trainer

    from fastsft.errors import FastSFTError
    from fastsft.train.trainer import check_trainer_hooks

    def _save_checkpoint(self: Any, model: Any, trial: Any) -> None:
        self.save_model("elsewhere")

    with pytest.raises(FastSFTError, match="_save_checkpoint calling _get_output_dir"):
        check_trainer_hooks(type("ChangedTrainer", (Trainer,), {"_save_checkpoint": _save_checkpoint}))


@pytest.mark.parametrize("reporter", ["tensorboard", "wandb", "swanlab", "mlflow"])
def test_a_missing_report_to_package_is_named_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reporter: str
) -> None:
    import importlib.util

    import fastsft.train.workflow as workflow

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name.startswith(reporter) else real_find_spec(name, *args),
    )
    monkeypatch.setattr(workflow, "load_datasets", lambda *args: pytest.fail("the data was built"))
    config = load_config(TINY_YAML, [f"output_dir={tmp_path}", f"report_to={reporter}"])
    with pytest.raises(ConfigError) as err:
        build_trainer(config)
    assert (
        str(err.value)
        == f"`report_to: {reporter}` needs {reporter}, which is not installed: pip install {reporter}"
    )


def test_fa2_without_flash_attn_falls_back_as_llamafactory_does_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is usable here: nothing to fall back from")
    overrides = [
        f"output_dir={tmp_path}",
        "max_samples=40",
        "val_size=0",
        "eval_strategy=no",
        "flash_attn=fa2",
    ]
    config = load_config(TINY_YAML, overrides)
    trainer = build_trainer(config)
    out = capsys.readouterr().out
    fallback = [line for line in out.splitlines() if "flash_attn: fa2" in line]
    assert fallback == [
        "[fastsft] `flash_attn: fa2` (attn: flash_attention_2) needs flash-attn on a CUDA GPU, which is not "
        "available here (pip install flash-attn); falling back to the default attention as LLaMA-Factory does "
        "(fastsft_varlen for packed batches, else sdpa)"
    ]
    assert trainer.model.config._attn_implementation == "fastsft_varlen"  # the tiny example packs
    assert "attention fastsft_varlen" in out


@pytest.mark.parametrize("collective", ["reduce_scatter_tensor", "all_gather_into_tensor"])
def test_only_torchs_deprecation_of_deepspeeds_collectives_is_silenced(collective: str) -> None:
    import warnings

    from fastsft.train.environment import quiet_deepspeed_deprecations

    message = getattr(getattr(torch.distributed, collective), "__deprecated__", None)
    if message is None:
        pytest.skip(f"this torch does not deprecate {collective}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_deepspeed_deprecations()
        warnings.warn(message, FutureWarning, stacklevel=1)
        warnings.warn("`torch.distributed.something_else` is deprecated.", FutureWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == [
        "`torch.distributed.something_else` is deprecated."
    ]


@pytest.mark.slow
@pytest.mark.deepspeed
def test_a_run_leaves_the_process_as_it_found_it(tmp_path: Path) -> None:
    """A later run in the same process trains as its own config says (a notebook, a sweep).

    Without ``run_scope`` a bf16 run left ``ACCELERATE_MIXED_PRECISION=bf16`` on transformers 4.x (the
    fp32 run after it trained under bf16 autocast), a ZeRO-3 run left its config (the run after it
    built its model under ZeRO-3), and a plain run before made ZeRO-3 fail."""
    pytest.importorskip("deepspeed")
    from transformers.integrations import is_deepspeed_zero3_enabled

    initial = saved_tiny_model(tmp_path / "initial")
    common = ["model_config=null", f"model_name_or_path={initial}", "max_steps=2", "logging_steps=1"]
    common += ["max_samples=40", "val_size=0", "eval_strategy=no", "plot_loss=false", "cpu_threads=1"]
    environment, threads = dict(os.environ), torch.get_num_threads()
    runs = {
        "fp32": [],
        "bf16": ["bf16=true", "use_cpu=true"],
        "zero3": ["deepspeed=examples/deepspeed/ds_z3_config.json"],
        "zero3 again": ["deepspeed=examples/deepspeed/ds_z3_config.json"],
        "fp32 again": [],
    }
    for name, overrides in runs.items():
        train(load_config(TINY_YAML, [*common, *overrides, f"output_dir={tmp_path / name}"]))
        assert dict(os.environ) == environment, name
        assert torch.get_num_threads() == threads, name
        assert not is_deepspeed_zero3_enabled(), name
    for again, first in (("zero3 again", "zero3"), ("fp32 again", "fp32")):
        assert list(step_losses(tmp_path / again).values()) == list(step_losses(tmp_path / first).values())


@pytest.mark.deepspeed
def test_a_random_init_model_under_zero3_trains_or_is_refused_in_one_line(tmp_path: Path) -> None:
    """transformers 4.x's weight init indexes the partitioned embedding of a model built under ZeRO-3
    (huggingface/transformers#43638): the run is refused in one line saying what to do instead."""
    pytest.importorskip("deepspeed")
    overrides = [
        "max_steps=1",
        "logging_steps=1",
        "max_samples=20",
        "val_size=0",
        "eval_strategy=no",
        "plot_loss=false",
    ]
    overrides += ["deepspeed=examples/deepspeed/ds_z3_config.json", f"output_dir={tmp_path / 'out'}"]
    config = load_config(TINY_YAML, overrides)
    if int(transformers.__version__.split(".")[0]) >= 5:
        train(config)
        assert len(step_losses(tmp_path / "out")) == 1
    else:
        with pytest.raises(
            ConfigError, match=r"cannot build a random-init model \(model_config\) under ZeRO-3"
        ):
            train(config)
