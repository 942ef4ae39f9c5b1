"""``fastsft train``: full-parameter SFT on Hugging Face ``Trainer``, optionally under DeepSpeed ZeRO-3.

The pieces are fastsft's own: ``build_dataset`` (or a saved ``tokenized_path``), ``VarlenCollator``
(packing / padding-free, with fastsft's varlen attention) or ``PaddingCollator``, and
``TokenBudgetBatchSampler`` for ``max_tokens_per_batch``. The loss is transformers' token-level
mean over every labelled token of the global batch (all packed sequences, gradient-accumulation
steps and processes, via ``num_items_in_batch``). Evaluation (``val_size`` / ``eval_dataset``)
uses the same collator and loss path and is token-level over the whole eval split.

Order matters under ZeRO-3: ``TrainingArguments`` (which activates ``HfDeepSpeedConfig``) is
built before the model, so ``from_pretrained`` / ``from_config`` create it partitioned.

Outputs in ``output_dir``: ``checkpoint-*`` folders, ``trainer_log.jsonl`` (one line per log),
``metrics.json``, ``training_loss.png`` (train and eval losses) and the final model + tokenizer
(``save_pretrained``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from fastsft import IGNORE_INDEX
from fastsft.data.options import DataArgs
from fastsft.data.splitting import TRAIN, VALIDATION
from fastsft.errors import ConfigError, Terminated
from fastsft.train.config import TrainConfig, add_train_arguments, load_config

TRAINER_LOG = "trainer_log.jsonl"
METRICS_FILE = "metrics.json"
LOSS_PLOT = "training_loss.png"
EVAL_COLORS = ["#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]  # train is blue


def run_train(args: argparse.Namespace | Sequence[str]) -> int:
    """Entry point of ``fastsft train``: parsed arguments (from the CLI) or an argv list."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="fastsft train")
        add_train_arguments(parser)
        args = parser.parse_args(list(args))
    config = load_config(args.config, args.overrides)
    try:
        train(config)
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        if int(os.environ.get("RANK", "0")) == 0:
            message = interrupted_message(Path(config.output_dir), "SIGTERM" if terminated else "interrupted")
            print(
                f"\nfastsft train: {message}", file=sys.stderr, flush=True
            )  # the progress bar has no newline
        return Terminated.exit_code if terminated else 130
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Tear down torch.distributed before exit: a gloo group left to the interpreter's shutdown
    can abort the process ("terminate called without an active exception") after a good run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def interrupted_message(output_dir: Path, what: str = "interrupted") -> str:
    """The one line ``fastsft train`` prints on Ctrl-C or SIGTERM: the last checkpoint to resume from."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last is None:
        return f"{what}; no checkpoint was saved in {output_dir}"
    return f"{what}; last checkpoint: {last} (rerun with resume_from_checkpoint=true to continue)"


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, float]:
    """Train as ``config`` says, save everything to ``output_dir`` and return the final metrics."""
    trainer = build_trainer(config, callbacks)
    output_dir = Path(config.output_dir)
    result = trainer.train(resume_from_checkpoint=trainer.resume_checkpoint)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # trained without the KV cache; the saved model generates with it
    trainer.save_model()  # under ZeRO-3 gathers the 16-bit weights (stage3_gather_16bit_weights_on_model_save)
    trainer.save_state()
    metrics = dict(result.metrics)
    metrics["num_input_tokens_seen"] = trainer.state.num_input_tokens_seen
    session_tokens = trainer.state.num_input_tokens_seen - trainer.initial_tokens_seen
    metrics["train_tokens_per_second"] = session_tokens / max(metrics.get("train_runtime", 0.0), 1e-9)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        metrics["final_loss"] = losses[-1]
    metrics["global_step"] = trainer.state.global_step
    if trainer.eval_dataset is not None and trainer.args.do_eval:  # as LLaMA-Factory's run_sft
        metrics.update(trainer.evaluate(metric_key_prefix="eval"))
    if trainer.is_world_process_zero():
        (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if config.plot_loss:
            plot_loss(trainer.state.log_history, output_dir / LOSS_PLOT)
        say(f"saved the model, {METRICS_FILE} and {TRAINER_LOG} to {output_dir}")
    return metrics


TOKEN_COLUMNS = ("input_ids", "attention_mask", "position_ids", "labels")


def build_trainer(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> SFTTrainer:
    """Everything ``train`` sets up before ``trainer.train()``: arguments, data, model, collator."""
    uses_configured_state = _configure_cpu_distributed(config)
    threads = configure_cpu_threads(config)
    training_args = build_training_args(config, uses_configured_state)  # before the model (ZeRO-3 init)
    if training_args.process_index == 0:
        for notice in config.notices:
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
    dataset = splits.pop(TRAIN)
    eval_dataset = eval_datasets(splits, training_args)
    packed = config.uses_varlen_batches or "position_ids" in dataset.column_names
    attn_implementation = choose_attention(config, packed)

    from transformers import set_seed

    set_seed(config.data.seed)  # the same random init on every run and rank
    model = load_model(config, attn_implementation)
    loss_line = configure_loss(config, model)
    collator = make_collator(packed, tokenizer)
    # Token columns as numpy arrays: the compiled collators then copy buffers, not Python lists.
    dataset = token_format(dataset)
    if isinstance(eval_dataset, dict):
        eval_dataset = {name: token_format(split) for name, split in eval_dataset.items()}
    elif eval_dataset is not None:
        eval_dataset = token_format(eval_dataset)
    if training_args.process_index == 0:
        batching = f"token budget {config.max_tokens_per_batch}" if config.max_tokens_per_batch else "rows"
        say(
            f"{len(dataset)} {'packed ' if 'position_ids' in dataset.column_names else ''}rows, "
            f"{type(collator).__name__} ({batching}), attention {attn_implementation}, "
            f"{count_parameters(model):,} parameters, {loss_line}"
        )
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


def say(message: str) -> None:
    """One progress line for the user (callers print only on the main process)."""
    print(f"[fastsft] {message}", flush=True)


def _configure_cpu_distributed(config: TrainConfig) -> bool:
    """Without CUDA, run several processes (or DeepSpeed) over gloo; returns whether that was set up.

    accelerate would otherwise see a single process and DeepSpeed's batch-size check would fail.
    The state must exist before ``TrainingArguments(accelerator_config={"use_configured_state": True})``.
    """
    if torch.cuda.is_available():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not config.deepspeed:
        return False
    if config.deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # a single process started without a launcher
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        import deepspeed.ops

        # DeepSpeed's CPU shared-memory all-reduce is JIT-compiled on first use (~90 s); gloo suffices.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    from accelerate import PartialState

    PartialState(backend="gloo")
    return True


def configure_cpu_threads(config: TrainConfig) -> int | None:
    """Set torch's intra-op threads on CPU; returns the count it set (``None``: left as it was).

    ``cpu_threads`` wins, then ``OMP_NUM_THREADS`` (torch already follows it). Otherwise the cores
    this process may use that are not busy (affinity minus the 1-minute load average, shared by
    the local processes), at least 1: torch's default of one spinning thread per core is many
    times slower when another process holds a core (docs/training.md has the numbers).
    """
    if torch.cuda.is_available():
        return None
    if config.cpu_threads is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = config.cpu_threads or idle_cores()
    torch.set_num_threads(threads)
    return threads


def idle_cores() -> int:
    """Cores of this process's affinity not busy with other work, per local training process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (cores - round(load)) // local_processes)


def threads_reason(config: TrainConfig) -> str:
    if config.cpu_threads is not None:
        return "cpu_threads"
    return "the idle cores; set cpu_threads or OMP_NUM_THREADS to choose"


def configure_loss(config: TrainConfig, model: Any) -> str:
    """Turn on the chunked cross-entropy where it is exact; returns the loss for the summary line."""
    from fastsft.train.loss import chunked_loss_unsupported, enable_chunked_loss

    if not config.chunked_loss:
        return "plain loss"
    reason = chunked_loss_unsupported(model)
    if reason is not None:
        return f"plain loss (not chunked: {reason})"
    enable_chunked_loss(model, config.loss_chunk_tokens)
    return f"chunked loss ({config.loss_chunk_tokens} tokens per chunk)"


def build_training_args(config: TrainConfig, uses_configured_state: bool = False) -> TrainingArguments:
    """``TrainingArguments`` from the config (fastsft decides ``remove_unused_columns`` and the state)."""
    kwargs: dict[str, Any] = {
        name: getattr(config, name)
        for name in (
            "output_dir",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "lr_scheduler_type",
            "num_train_epochs",
            "max_steps",
            "bf16",
            "fp16",
            "gradient_checkpointing",
            "logging_steps",
            "save_steps",
            "save_total_limit",
            "deepspeed",
            "report_to",
        )
    }
    kwargs["seed"] = config.data.seed
    field_names = {f.name for f in fields(TrainingArguments)}
    if "activation_checkpointing" in field_names:  # transformers 5 renamed it
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    if config.warmup_ratio:  # transformers 5 reads a warmup_steps float < 1 as the ratio
        kwargs["warmup_ratio" if "warmup_ratio" in field_names else "warmup_steps"] = config.warmup_ratio
    kwargs["remove_unused_columns"] = False  # the collators pick their columns
    kwargs.update(config.extra_training_args)
    if uses_configured_state:
        kwargs["accelerator_config"] = {"use_configured_state": True}
    try:
        return TrainingArguments(**kwargs)
    except ValueError as err:
        raise ConfigError(f"invalid training arguments: {str(err).splitlines()[0]}") from None


def resolve_resume(config: TrainConfig, training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from, as LLaMA-Factory decides it.

    ``resume_from_checkpoint: true`` means the last ``checkpoint-*`` in ``output_dir``. Unset, a
    non-empty ``output_dir`` resumes from its last checkpoint (or is an error without one)
    unless ``overwrite_output_dir``, which removes stale ``checkpoint-*`` folders instead.
    """
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(config.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if config.resume_from_checkpoint is True:
        if last is None:
            raise ConfigError(f"resume_from_checkpoint is true but {output_dir} has no checkpoint-* folder")
        return last
    if isinstance(config.resume_from_checkpoint, str):
        return config.resume_from_checkpoint
    if config.overwrite_output_dir:
        with training_args.main_process_first(desc="clean output_dir"):
            if training_args.process_index == 0 and output_dir.is_dir():
                for stale in output_dir.glob("checkpoint-*"):
                    shutil.rmtree(stale, ignore_errors=True)
        return None
    if config.resume_from_checkpoint is False or not output_dir.is_dir():
        return None
    if last is not None:
        if training_args.process_index == 0:
            say(f"resuming from {last} (set overwrite_output_dir: true to start over)")
        return last
    if any(output_dir.iterdir()):
        raise ConfigError(
            f"output_dir {output_dir} is not empty and has no checkpoint; set overwrite_output_dir: true"
        )
    return None


def load_tokenizer(config: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            config.tokenizer_path, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot load the tokenizer from {config.tokenizer_path}: {str(err).splitlines()[0]}"
        ) from None


def model_vocab_size(config: TrainConfig) -> int:
    """The model's ``vocab_size`` from its config: a missing or broken model fails here, in one
    line, before any data is built."""
    from transformers import AutoConfig

    source = config.model_config or config.model_name_or_path
    try:
        model_config = AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the model config from {source}: {str(err).splitlines()[0]}") from None
    return int(model_config.get_text_config().vocab_size)


def load_datasets(
    config: TrainConfig, tokenizer: Any, training_args: TrainingArguments, vocab_size: int
) -> dict[str, Any]:
    """Every split: ``train`` and any ``validation`` / ``validation_NAME`` (``fastsft.data.splitting``).

    ``load_from_disk(tokenized_path)`` when it exists; else ``build_dataset`` per split. With a
    ``tokenized_path`` the first process streams the rows to it (``build_to_disk``: flat memory,
    written safely) and every process then memory-maps it; the main process goes first, so the
    others load what it saved. Without one each process builds the rows in memory. Either way the
    tokenizer is fixed as LLaMA-Factory does (eos, pad, stop words). A saved dataset is checked
    against its provenance (``fastsft.data.provenance``): another tokenizer or a token id at or
    above ``vocab_size`` is refused, ignored data options are named.
    """
    from fastsft.data.pipeline import build_dataset, build_to_disk, make_template
    from fastsft.data.provenance import fingerprint_version, read_provenance, tokenizer_fingerprint
    from fastsft.data.splitting import plan_splits
    from fastsft.data.templates import fix_tokenizer

    data_args = config.data
    if data_args.packing and data_args.packing_strategy is None:
        # BFD rows for VarlenCollator (it drops their masked padding); the samples of LLaMA-Factory's rows.
        data_args = dataclasses.replace(data_args, packing_strategy="bfd")
    path = data_args.tokenized_path
    with training_args.main_process_first(desc="dataset"):
        if path and Path(path).exists():
            # As build_to_disk takes it: before fixing, in the version the saved record holds.
            fingerprint = tokenizer_fingerprint(tokenizer, fingerprint_version(read_provenance(path)))
            fix_tokenizer(make_template(data_args, tokenizer), tokenizer)
            return _load_tokenized(path, training_args, data_args, fingerprint, vocab_size)
        if path and training_args.should_save:
            summaries = build_to_disk(data_args, tokenizer, path, notice=say)
            for name, summary in summaries.items():
                for line in summary.lines():
                    say(line if name == TRAIN else f"{name}: {line}")
            _require_labels(summaries[TRAIN])
            say(f"saved the tokenized dataset to {path}")
            return _load_tokenized(path, training_args)
        splits = {}
        for name, source in plan_splits(data_args).items():
            splits[name], summary = build_dataset(data_args, tokenizer, source=source)
            if training_args.process_index == 0:
                for line in summary.lines():
                    say(line if name == TRAIN else f"{name}: {line}")
            if name == TRAIN:
                _require_labels(summary)
    return splits


def _require_labels(summary: Any) -> None:
    if summary.label_tokens == 0:
        raise ConfigError(
            "the training data has no label tokens, so there is nothing to learn (is cutoff_len too small?)"
        )


def _load_tokenized(
    path: str,
    training_args: TrainingArguments,
    data_args: DataArgs | None = None,
    fingerprint: str | None = None,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """The splits saved at ``path`` (a ``DatasetDict``, or a ``Dataset``: the train split), memory-mapped.

    With ``data_args`` (a dataset this run did not just build) it is checked first: its tokenizer
    ``fingerprint``, its token ids against ``vocab_size``, and the data options it ignores.
    """
    from datasets import DatasetDict, load_from_disk

    from fastsft.data.provenance import check_token_ids, check_tokenizer, ignored_options, read_provenance

    record = read_provenance(path)
    if fingerprint is not None:
        check_tokenizer(record, fingerprint, path)
    try:
        loaded = load_from_disk(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load tokenized_path {path}: {str(err).splitlines()[0]}") from None
    splits = dict(loaded) if isinstance(loaded, DatasetDict) else {TRAIN: loaded}
    if TRAIN not in splits:
        raise ConfigError(f"tokenized_path {path} has no train split (it has {', '.join(splits)})")
    if vocab_size is not None:
        check_token_ids(splits, vocab_size, path)
    if training_args.process_index == 0:
        say(f"loaded {len(splits[TRAIN])} rows from {path}")
        if data_args is not None:
            if record is None:
                say(
                    "it was not made by fastsft: the data options in the config are ignored (as in LLaMA-Factory)"
                )
            elif differing := ignored_options(record, data_args):
                say(f"data options ignored, as tokenized_path exists: {'; '.join(differing)}")
    return splits


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


def choose_attention(config: TrainConfig, packed: bool) -> str:
    """The ``attn_implementation``: fastsft's varlen attention for flattened batches unless told otherwise."""
    if packed and config.attn in ("sdpa", "eager"):
        raise ConfigError(
            f"the dataset is packed, which needs attn: varlen or flash_attention_2 (not {config.attn})"
        )
    if config.attn == "varlen" or (config.attn == "auto" and packed):
        from fastsft.train.attention import register_varlen_attention

        return register_varlen_attention()
    return "sdpa" if config.attn == "auto" else config.attn


def load_model(config: TrainConfig, attn_implementation: str) -> Any:
    """The model in fp32 (mixed precision comes from Trainer / DeepSpeed), without the KV cache.

    Under ZeRO-3 transformers builds it inside ``deepspeed.zero.Init`` (partitioned) because
    ``TrainingArguments`` already exists.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    common = {"attn_implementation": attn_implementation, "trust_remote_code": config.trust_remote_code}
    if config.model_config:
        model_config = AutoConfig.from_pretrained(
            config.model_config, trust_remote_code=config.trust_remote_code
        )
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32, **common)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                config.model_name_or_path, dtype=torch.float32, **common
            )
        except OSError as err:
            raise ConfigError(
                f"cannot load the model from {config.model_name_or_path}: {str(err).splitlines()[0]}"
            ) from None
    model.config.use_cache = False
    return model


def make_collator(packed: bool, tokenizer: Any) -> Any:
    from fastsft.collators import PaddingCollator, VarlenCollator

    if packed:
        return VarlenCollator()
    return PaddingCollator(
        pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8
    )  # as LLaMA-Factory trains


def count_parameters(model: Any) -> int:
    """Parameters of the whole model, also when ZeRO-3 holds only a shard on this rank."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def count_tokens(inputs: dict[str, Any]) -> torch.Tensor | int:
    """Non-padding tokens of a batch (varlen batches have no padding), without a device sync."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].ne(0).sum()
    return inputs["input_ids"].numel()


class SFTTrainer(Trainer):
    """``Trainer`` plus token-budget batches and tokens-per-second logging."""

    def __init__(
        self,
        *args: Any,
        max_tokens_per_batch: int | None = None,
        resume_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.resume_checkpoint = resume_checkpoint
        self.initial_tokens_seen = 0
        self._pending_tokens = torch.zeros((), dtype=torch.int64, device=self.args.device)
        self._window_start: float | None = None

    def get_train_dataloader(self) -> Any:
        if self.max_tokens_per_batch is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        from fastsft.collators import TokenBudgetBatchSampler

        sampler = TokenBudgetBatchSampler(
            sample_lengths(self.train_dataset),
            self.max_tokens_per_batch,
            shuffle=True,
            seed=self.args.seed,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        prepared = self.accelerator.prepare(loader)
        # The sampler already deals batches per rank; make accelerate's re-sharding wrapper a pass-through.
        shard = getattr(prepared, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
            shard.num_processes = 1
            shard.process_index = 0
        return prepared

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """Batches of ``per_device_eval_batch_size`` rows in order, dealt to the processes in turn.

        Unlike accelerate's sharding, which repeats samples to even out the last batches, a
        process short of a batch gets a copy of the first one weighted 0: every process runs as
        many forward passes (ZeRO-3 gathers parameters in each), and no sample counts twice.
        """
        from torch.utils.data import DataLoader

        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ConfigError("evaluation needs an eval dataset (val_size or eval_dataset)")
        batches = eval_batches(
            len(dataset), self.args.per_device_eval_batch_size, self.args.world_size, self.args.process_index
        )
        return DataLoader(
            WeightedRows(dataset),
            batch_sampler=batches,
            collate_fn=WeightedCollator(self.data_collator),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """Token-level eval loss: the cross-entropy summed over every labelled token of the eval
        set (all batches, all processes) over their count, through the training loss path.

        ``Trainer`` would average per-batch means instead, which depends on how the rows are
        batched; this equals the training loss's definition (``num_items_in_batch``), so packed,
        padding-free and padded evaluation of the same samples agree.
        """
        from transformers.trainer_utils import EvalLoopOutput

        model = self._wrap_model(self.model, training=False)
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        one = torch.ones((), device=self.args.device)
        with torch.no_grad():
            for inputs in dataloader:
                weight = inputs.pop(EVAL_WEIGHT)
                inputs = self._prepare_inputs(inputs)
                labelled = inputs["labels"][..., 1:].ne(IGNORE_INDEX).sum()
                with self.compute_loss_context_manager():
                    loss_sum = model(**inputs, num_items_in_batch=one).loss  # a sum: divided by 1
                totals += weight * torch.stack([loss_sum.detach().double(), labelled.double()])
                self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        totals = self.accelerator.reduce(totals, reduction="sum")
        loss = (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan")
        return EvalLoopOutput(
            predictions=None,
            label_ids=None,
            metrics={f"{metric_key_prefix}_loss": loss},
            num_samples=len(dataloader.dataset),
        )

    def training_step(
        self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        if self._window_start is None:
            self._window_start = time.perf_counter()
            self.initial_tokens_seen = self.state.num_input_tokens_seen
        self._pending_tokens += count_tokens(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``num_input_tokens_seen`` and ``tokens_per_second`` (non-padding, all ranks) to training logs."""
        if "loss" in logs and self._window_start is not None:
            tokens = int(self.accelerator.reduce(self._pending_tokens, reduction="sum").item())
            now = time.perf_counter()
            self.state.num_input_tokens_seen += tokens
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            logs["tokens_per_second"] = round(tokens / max(now - self._window_start, 1e-9), 1)
            self._pending_tokens.zero_()
            self._window_start = now
        super().log(logs, start_time)


EVAL_WEIGHT = "fastsft_eval_weight"


def eval_batches(rows: int, batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """This process's eval batches: consecutive ``batch_size`` rows, batch ``i`` on process ``i % world_size``.

    Every process gets the same number of batches; one short of a batch gets batch 0 again, its
    indices offset by ``rows`` to mark it as weight 0 (``WeightedRows``).
    """
    if batch_size < 1:
        raise ConfigError(f"`per_device_eval_batch_size` must be at least 1, got {batch_size}")
    batches = [list(range(start, min(start + batch_size, rows))) for start in range(0, rows, batch_size)]
    if not batches:
        return []
    per_rank = -(-len(batches) // world_size)
    mine = batches[rank::world_size]
    return mine + [[rows + i for i in batches[0]]] * (per_rank - len(mine))


class WeightedRows(torch.utils.data.Dataset):
    """Rows of a dataset with their weight: index ``i >= len`` is row ``i - len`` weighted 0."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        rows = len(self.dataset)
        return self.dataset[index % rows], int(index < rows)


class WeightedCollator:
    """The training collator over ``WeightedRows`` items; the batch's weight under ``EVAL_WEIGHT``."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, items: Sequence[tuple[Any, int]]) -> dict[str, Any]:
        batch = self.collator([row for row, _ in items])
        batch[EVAL_WEIGHT] = min(weight for _, weight in items)
        return batch


def sample_lengths(dataset: Any) -> np.ndarray:
    """Token count of every row, read from the Arrow column (no Python loop over rows)."""
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")["input_ids"]
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


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
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= state.global_step:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept), encoding="utf-8")

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
