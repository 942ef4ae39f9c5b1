"""``train``: one SFT run as LLaMA-Factory's ``run_sft`` lays it out (its ``train/sft/workflow.py``).

The pieces are fastsft's own: the data from ``fastsft.data.pipeline`` (``prepare_run`` then
``load_or_build``: a saved ``tokenized_path`` or the rows built now), ``VarlenCollator``
(packing / padding-free, with fastsft's varlen attention) or ``PaddingCollator``, and
``TokenBudgetBatchSampler`` for ``max_tokens_per_batch``.

Order matters under ZeRO-3: ``TrainingArguments`` (which activates ``HfDeepSpeedConfig``) is
built before the model, so ``from_pretrained`` / ``from_config`` create it partitioned.

Outputs in ``output_dir``, named as LLaMA-Factory names them: ``checkpoint-*`` folders,
``trainer_log.jsonl`` (one line per log, LLaMA-Factory's fields first), ``train_results.json``,
``eval_results.json``, ``all_results.json``, ``trainer_state.json``, ``training_loss.png`` and
``training_eval_loss.png``; fastsft's ``metrics.json`` (all of them, plus the final loss and
step); and the final model + tokenizer
(``save_pretrained``; for ``finetuning_type: lora`` the peft adapter only).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

from fastsft.data.data_args import DataArgs
from fastsft.data.pipeline import load_or_build, prepare_run, stream_splits
from fastsft.data.sources.splitting import TRAIN, VALIDATION
from fastsft.data.streaming import RowStream
from fastsft.errors import ConfigError
from fastsft.train import checkpoints
from fastsft.train.adapter import RANDOM_BASE_DIR, describe_trainable, init_adapter
from fastsft.train.config import TrainConfig, build_training_args
from fastsft.train.environment import (
    check_optional_packages,
    configure_cpu_distributed,
    configure_cpu_threads,
    quiet_deepspeed_deprecations,
    run_scope,
    threads_reason,
)
from fastsft.train.logs import (
    METRICS_FILE,
    TRAINER_LOG,
    JsonlLogCallback,
    plot_keys,
    plot_loss,
    save_results,
    say,
)
from fastsft.train.model import (
    attention_kernels,
    choose_attention,
    configure_loss,
    count_parameters,
    load_model,
    load_tokenizer,
    model_vocab_size,
)
from fastsft.train.output_dir import (
    FINAL_PARTIAL,
    check_output_dir,
    check_overwritable,
    check_resumable,
    clear_previous_run,
    finished_run,
    locked_output_dir,
    mark_run,
    publish_final,
    read_marker,
    run_settings,
)
from fastsft.train.streaming import PositionCollator, StreamedTrainSet, StreamReport
from fastsft.train.trainer import SFTTrainer, check_trainer_hooks

__all__ = ["build_trainer", "load_datasets", "train"]


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, float]:
    """Train as ``config`` says, save everything to ``output_dir`` and return the final metrics.

    ``output_dir`` is checked (never an input) and locked for the run; a run that already finished
    trains nothing; one whose final checkpoint is complete but whose final save was interrupted
    publishes the final model from that checkpoint instead of training again. What the run changes
    in the process is undone when it ends (``run_scope``), so a later run trains as its own config says.
    """
    output_dir = Path(str(config.output_dir))
    is_main = int(os.environ.get("RANK", "0")) == 0
    check_output_dir(config)
    with run_scope(), locked_output_dir(output_dir, is_main=is_main):
        finished = None if config.overwrite_output_dir else finished_run(output_dir, config)
        if finished is not None:
            if is_main:
                say(
                    f"{output_dir} already holds this run, finished at step {finished['global_step']}; nothing to "
                    "train (overwrite_output_dir: true would start over, deleting its checkpoints and replacing its model)"
                )
            return {"global_step": finished["global_step"]}
        trainer = build_trainer(config, callbacks)
        record = {
            "max_steps": config.max_steps,
            "num_train_epochs": config.num_train_epochs,
            "settings": run_settings(config),
            "published": [RANDOM_BASE_DIR] if (output_dir / RANDOM_BASE_DIR).is_dir() else [],
        }
        if trainer.is_world_process_zero():
            mark_run(output_dir, **record, finished=False)
        resume = trainer.resume_checkpoint
        try:
            if resume is not None and _is_final(Path(resume), config):
                return _publish_from_checkpoint(trainer, config, Path(resume), record)
            result = trainer.train(resume_from_checkpoint=resume)
            return _publish(trainer, config, result.metrics, record)
        except KeyboardInterrupt:  # the run is not finished; the next one publishes again
            if is_main:
                shutil.rmtree(output_dir / FINAL_PARTIAL, ignore_errors=True)
            raise


def _is_final(checkpoint: Path, config: TrainConfig) -> bool:
    """Whether ``checkpoint`` is the last step of this schedule (resuming from it would train past it)."""
    state = checkpoints.checkpoint_state(checkpoint)
    if state.get("global_step", 0) < state.get("max_steps", 0) or not state.get("max_steps"):
        return False
    if config.max_steps > 0:
        return config.max_steps == state["max_steps"]
    return config.num_train_epochs == state.get("num_train_epochs")


def _publish(
    trainer: SFTTrainer, config: TrainConfig, train_metrics: dict[str, Any], record: dict[str, Any]
) -> dict[str, float]:
    """The final model, tokenizer, state, metrics and plot, staged in ``.final.partial`` and moved
    into ``output_dir`` once all are written; the run marker then says the run finished."""
    output_dir = Path(str(config.output_dir))
    staging = output_dir / FINAL_PARTIAL
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # trained without the KV cache; the saved model generates with it
    trainer.save_model(
        str(staging)
    )  # under ZeRO-3 gathers the 16-bit weights (stage3_gather_16bit_weights_on_model_save)
    trainer.count_pending_tokens()  # the steps since the last log count too
    train_results = dict(train_metrics)
    train_results["num_input_tokens_seen"] = trainer.state.num_input_tokens_seen
    session_tokens = trainer.state.num_input_tokens_seen - trainer.initial_tokens_seen
    train_results["train_tokens_per_second"] = session_tokens / max(
        train_results.get("train_runtime", 0.0), 1e-9
    )
    eval_results = {}
    if trainer.eval_dataset is not None and trainer.args.do_eval:  # as LLaMA-Factory's run_sft
        eval_results = trainer.evaluate(metric_key_prefix="eval")
    metrics = {**train_results, **_run_summary(trainer.state.log_history, trainer.state.global_step)}
    metrics.update(eval_results)
    metrics["attention_kernels"] = attention_kernels(model.config._attn_implementation)
    if trainer.is_world_process_zero():
        trainer.state.save_to_json(str(staging / checkpoints.TRAINER_STATE))
        save_results(staging, train_results, eval_results)
        eval_names = list(trainer.eval_dataset) if isinstance(trainer.eval_dataset, dict) else None
        keys = plot_keys(eval_names, evaluates=trainer.eval_dataset is not None)
        _finish(trainer.state.log_history, metrics, config, staging, record, trainer.state.max_steps, keys)
    trainer.accelerator.wait_for_everyone()
    return metrics


def _run_summary(log_history: list[dict[str, Any]], global_step: int) -> dict[str, Any]:
    """fastsft's own lines of ``metrics.json``: the last logged training loss and the steps trained."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return {**({"final_loss": losses[-1]} if losses else {}), "global_step": global_step}


def _publish_from_checkpoint(
    trainer: SFTTrainer, config: TrainConfig, checkpoint: Path, record: dict[str, Any]
) -> dict[str, float]:
    """Publish the final model from the run's last checkpoint (its final save was interrupted): the
    same files the final save writes (the best checkpoint's weights with ``load_best_model_at_end``),
    with ``use_cache`` restored, and no step trained again."""
    output_dir = Path(str(config.output_dir))
    state = checkpoints.checkpoint_state(checkpoint)
    log_history = state.get("log_history", [])
    train_results = {"num_input_tokens_seen": state.get("num_input_tokens_seen", 0)}
    metrics: dict[str, Any] = {**train_results, **_run_summary(log_history, state["global_step"])}
    if trainer.is_world_process_zero():
        say(f"{checkpoint} is this run's last step; publishing the final model from it (nothing to train)")
        staging = output_dir / FINAL_PARTIAL
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        best = state.get("best_model_checkpoint")
        weights = (
            Path(best) if trainer.args.load_best_model_at_end and best and Path(best).is_dir() else checkpoint
        )
        for source in weights.iterdir():
            if source.is_file() and not _training_state_file(source.name):
                shutil.copy2(source, staging / source.name)
        if (weights / "config.json").is_file():  # a full model's (a LoRA checkpoint holds the adapter only)
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(str(weights))
            model_config.use_cache = True
            model_config.save_pretrained(str(staging))
        shutil.copy2(checkpoint / checkpoints.TRAINER_STATE, staging / checkpoints.TRAINER_STATE)
        save_results(staging, train_results, {})
        evaluates = any(key.startswith("eval_") for entry in log_history for key in entry)
        _finish(log_history, metrics, config, staging, record, state["max_steps"], plot_keys(None, evaluates))
    trainer.accelerator.wait_for_everyone()
    return metrics


def _training_state_file(name: str) -> bool:
    """Files of a checkpoint that are not part of the saved model (optimizer, RNG, markers, ...)."""
    return (
        name in ("optimizer.pt", "scheduler.pt", "scaler.pt", "latest", "zero_to_fp32.py")
        or name in (checkpoints.TRAINER_STATE, checkpoints.CHECKPOINT_MARKER)
        or (name.startswith("rng_state") and name.endswith(".pth"))
    )


def _finish(
    log_history: list[dict[str, Any]],
    metrics: dict[str, Any],
    config: TrainConfig,
    staging: Path,
    record: dict[str, Any],
    planned_steps: int,
    plot_keys: list[str],
) -> None:
    """Write the metrics and plots into ``staging`` and publish it; the marker records the steps
    trained and planned (a run a callback stopped early is not finished)."""
    output_dir = Path(str(config.output_dir))
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if config.plot_loss:
        for warning in plot_loss(log_history, staging, plot_keys):
            say(warning)
    record = {**record, "global_step": metrics["global_step"], "planned_steps": planned_steps}
    publish_final(staging, output_dir, record)
    say(f"saved the model, {METRICS_FILE} and {TRAINER_LOG} to {output_dir}")


TOKEN_COLUMNS = ("input_ids", "attention_mask", "position_ids", "labels")


def build_trainer(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> SFTTrainer:
    """Everything ``train`` sets up before ``trainer.train()``: arguments, data, model, collator."""
    check_trainer_hooks()
    package_notices = check_optional_packages(config)  # before any work
    if config.deepspeed:
        quiet_deepspeed_deprecations()
    uses_configured_state = configure_cpu_distributed(config)
    threads = configure_cpu_threads(config)
    training_args = build_training_args(config, uses_configured_state)  # before the model (ZeRO-3 init)
    if training_args.process_index == 0:
        for notice in [*config.notices, *package_notices]:
            say(notice)
        if threads is not None:
            say(
                f"CPU training with {threads} torch thread{'s' if threads > 1 else ''} ({threads_reason(config)})"
            )
    resume = resolve_resume(config, training_args)
    vocab_size = model_vocab_size(config)  # the model is checked before the data is built
    tokenizer = load_tokenizer(config)
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}"
        )
    splits = load_datasets(config, tokenizer, training_args, vocab_size)
    if training_args.process_index == 0 and config.data.packing_notice():
        say(config.data.packing_notice())
    dataset = splits.pop(TRAIN)
    eval_dataset = eval_datasets(splits, training_args)
    packed = config.uses_varlen_batches or "position_ids" in dataset.column_names
    attn_implementation = choose_attention(config, packed)

    from transformers import set_seed
    from transformers.integrations import is_deepspeed_zero3_enabled

    set_seed(config.data.seed)  # the same random init on every run and rank
    model = load_model(config, attn_implementation)
    loss_line = configure_loss(config, model)
    model = init_adapter(  # LoRA / freeze
        config, model, zero3=is_deepspeed_zero3_enabled(), is_main=training_args.process_index == 0
    )
    collator = make_collator(packed, tokenizer, config.data)
    streamed = isinstance(dataset, StreamedTrainSet)
    if streamed:
        collator = PositionCollator(collator)
        if resume is not None:
            dataset.resume(resume)
        if isinstance(dataset.source, RowStream):
            callbacks = [StreamReport(dataset.source, say, dataset.rank, dataset.world_size), *callbacks]
    else:  # token columns as numpy arrays: the compiled collators then copy buffers, not Python lists
        dataset = token_format(dataset)
    if isinstance(eval_dataset, dict):
        eval_dataset = {name: token_format(split) for name, split in eval_dataset.items()}
    elif eval_dataset is not None:
        eval_dataset = token_format(eval_dataset)
    if training_args.process_index == 0:
        batching = f"token budget {config.max_tokens_per_batch}" if config.max_tokens_per_batch else "rows"
        rows = "streamed" if streamed else str(len(dataset))
        say(
            f"{rows} {'packed ' if 'position_ids' in dataset.column_names else ''}rows, "
            f"{type(collator).__name__} ({batching}), attention {attn_implementation}, "
            f"{count_parameters(model):,} parameters, {loss_line}"
        )
        if config.finetuning_type != "full":
            say(f"finetuning_type {config.finetuning_type}: {describe_trainable(model)}")
        for name, split in splits.items():
            use = "evaluated" if eval_dataset is not None else "not evaluated (set eval_strategy or do_eval)"
            say(f"{name}: {len(split)} rows, {use}")
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(Path(config.output_dir) / TRAINER_LOG), *callbacks],
        max_tokens_per_batch=config.max_tokens_per_batch,
        resume_checkpoint=resume,
    )


def resolve_resume(config: TrainConfig, training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from, as LLaMA-Factory decides it, among complete checkpoints only.

    ``resume_from_checkpoint: true`` means the newest ``checkpoint-N`` in ``output_dir``. Unset, a
    non-empty ``output_dir`` resumes from its newest checkpoint (or is an error without one)
    unless ``overwrite_output_dir``, which deletes what a previous fastsft run wrote there (and
    refuses a folder fastsft did not train into). A checkpoint with a missing or damaged file is
    refused in one line naming the file and the newest intact checkpoint.
    """
    output_dir = Path(str(config.output_dir))
    is_main = training_args.process_index == 0
    if isinstance(config.resume_from_checkpoint, str):
        chosen = checkpoints.select_resume(output_dir, Path(config.resume_from_checkpoint))
        check_resumable(chosen, config)
        return str(chosen)
    if config.overwrite_output_dir and config.resume_from_checkpoint is not True:
        check_overwritable(output_dir)
        with training_args.main_process_first(desc="clean output_dir"):
            if is_main:
                clear_previous_run(output_dir, say)
        return None
    with training_args.main_process_first(desc="unfinished saves"):
        if is_main:
            checkpoints.remove_partials(output_dir, say)
    if config.resume_from_checkpoint is False or not output_dir.is_dir():
        return None
    last = checkpoints.select_resume(output_dir)
    if last is not None:
        check_resumable(last, config)
        if is_main:
            say(
                f"resuming from {last} (overwrite_output_dir: true would start over, deleting its checkpoints)"
            )
        return str(last)
    if config.resume_from_checkpoint is True:
        raise ConfigError(f"resume_from_checkpoint is true but {output_dir} has no checkpoint-* folder")
    if any(output_dir.iterdir()) and read_marker(output_dir) is None:
        raise ConfigError(
            f"output_dir {output_dir} is not empty, has no checkpoint and was not written by fastsft; "
            "choose an empty or new output_dir"
        )
    return None


def load_datasets(
    config: TrainConfig, tokenizer: Any, training_args: TrainingArguments, vocab_size: int
) -> dict[str, Any]:
    """Every split: ``train`` and any ``validation`` / ``validation_NAME``, through the data pipeline's
    one entry (``prepare_run`` then ``load_or_build``); the main process goes first, so the others
    load what it saved. With ``streaming``, ``train`` is a ``StreamedTrainSet`` (``stream_splits``)."""
    data_args = config.data
    if data_args.streaming:
        with training_args.main_process_first(desc="dataset"):
            train, splits = stream_splits(
                prepare_run(data_args, tokenizer),
                vocab_size=vocab_size,
                is_main=training_args.process_index == 0,
                notice=say,
            )
        source = train if isinstance(train, RowStream) else token_format(train)
        share = StreamedTrainSet(source, training_args.process_index, training_args.world_size)
        return {TRAIN: share, **splits}
    with training_args.main_process_first(desc="dataset"):
        run = prepare_run(config.data, tokenizer)
        return load_or_build(
            run,
            vocab_size=vocab_size,
            is_main=training_args.process_index == 0,
            should_save=training_args.should_save,
            notice=say,
        )


def eval_datasets(splits: dict[str, Any], training_args: TrainingArguments) -> Any:
    """The eval dataset as LLaMA-Factory's ``get_dataset_module`` gives it to ``Trainer``:
    ``validation``, else ``{NAME: validation_NAME}``; ``None`` when training does not evaluate."""
    if not (training_args.do_eval or training_args.eval_strategy != "no"):
        return None
    if VALIDATION in splits:
        return splits[VALIDATION]
    named = {key.removeprefix(f"{VALIDATION}_"): split for key, split in splits.items()}
    if not named:
        raise ConfigError(
            "evaluation (do_eval / eval_strategy) needs val_size or eval_dataset; the data has none"
        )
    return named


def token_format(dataset: Any) -> Any:
    """The token columns as numpy arrays (the compiled collators then copy buffers, not Python lists)."""
    return dataset.with_format("numpy", columns=[c for c in TOKEN_COLUMNS if c in dataset.column_names])


def make_collator(packed: bool, tokenizer: Any, data: DataArgs) -> Any:
    """Packed or padding-free batches flattened (``VarlenCollator``), else padded as LLaMA-Factory trains."""
    from fastsft.collators import PaddingCollator, VarlenCollator

    if packed:
        return VarlenCollator(rows_attend_across=data.rows_attend_across)
    return PaddingCollator(
        pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8
    )  # as LLaMA-Factory trains
