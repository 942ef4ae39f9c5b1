"""``SFTTrainer``: HF ``Trainer`` plus token-budget batches, token-level evaluation and tokens/s logging.

The loss is transformers' token-level mean over every labelled token of the global batch (all
packed sequences, gradient-accumulation steps and processes, via ``num_items_in_batch``).
Evaluation uses the same collator and loss path and is token-level over the whole eval split.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import Trainer, TrainerCallback

from fastsft import IGNORE_INDEX
from fastsft.errors import ConfigError, FastSFTError
from fastsft.train import checkpoints
from fastsft.train.streaming import STREAM_POSITION, StreamedTrainSet, save_position

__all__ = [
    "EVAL_WEIGHT",
    "TRAINER_HOOKS",
    "FiniteGradientsCallback",
    "NonFiniteError",
    "SFTTrainer",
    "WeightedCollator",
    "WeightedRows",
    "check_trainer_hooks",
    "declared_requirement",
    "eval_batches",
    "gradient_norm",
    "sample_lengths",
]

NON_FINITE_CAUSE = (
    "likely cause: a learning rate too high for this model, fp16 overflow, or a sample that breaks the "
    "model; the checkpoints so far are kept"
)


class NonFiniteError(FastSFTError):
    """Training produced a non-finite loss, gradient norm or weight; the run stops there."""


# The ``Trainer`` methods fastsft overrides or calls that transformers does not document as public,
# with what depends on each; ``check_trainer_hooks`` verifies them at start-up.
TRAINER_HOOKS = {
    "_save_checkpoint": "atomic checkpoints",
    "_get_output_dir": "atomic checkpoints (the save goes to a partial folder)",
    "evaluation_loop": "token-level evaluation",
    "_wrap_model": "token-level evaluation",
    "_prepare_inputs": "token-level evaluation",
}


def check_trainer_hooks(trainer_class: type = Trainer) -> None:
    """Fail in one line, before any work, where the installed transformers lacks a ``Trainer``
    method fastsft relies on, or its ``_save_checkpoint`` no longer asks ``_get_output_dir`` where
    to save (the partial folder would then be bypassed)."""
    import inspect

    import transformers

    missing = [name for name in TRAINER_HOOKS if not callable(getattr(trainer_class, name, None))]
    if not missing:
        try:
            source = inspect.getsource(trainer_class._save_checkpoint)
        except (OSError, TypeError):
            source = "_get_output_dir"  # no source to read (a frozen install): the methods exist
        if "_get_output_dir" not in source:
            missing = ["_save_checkpoint calling _get_output_dir"]
    if missing:
        needs = ", ".join(f"`{name}` ({TRAINER_HOOKS.get(name, 'atomic checkpoints')})" for name in missing)
        supported = declared_requirement("transformers")
        raise FastSFTError(
            f"transformers {transformers.__version__}'s Trainer has no {needs}; fastsft supports "
            f"{supported}: pip install '{supported}'"
        )


def declared_requirement(package: str) -> str:
    """fastsft's declared requirement on ``package`` (``transformers>=...,<...``), from its metadata."""
    import importlib.metadata
    import re

    try:
        requirements = importlib.metadata.requires("fastsft") or []
    except importlib.metadata.PackageNotFoundError:
        return package
    for requirement in requirements:
        if re.match(rf"{re.escape(package)}\b(?!-)", requirement):
            return requirement.split(";")[0].replace(" ", "")
    return package


class SFTTrainer(Trainer):
    """``Trainer`` plus token-budget batches and tokens-per-second logging."""

    def __init__(
        self,
        *args: Any,
        max_tokens_per_batch: int | None = None,
        resume_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_trainer_hooks()
        super().__init__(*args, **kwargs)
        self.add_callback(FiniteGradientsCallback(self))
        self.max_tokens_per_batch = max_tokens_per_batch
        self.resume_checkpoint = resume_checkpoint
        self.initial_tokens_seen = 0
        self._pending_tokens = torch.zeros((), dtype=torch.int64, device=self.args.device)
        self._window_start: float | None = None
        self.stream_position: tuple[int, int] | None = None  # streaming: after the rows training used
        self._window_tokens = 0  # counted since the last training log, for its tokens/s

    def create_optimizer(self) -> Any:
        """``Trainer.create_optimizer`` without empty parameter groups (LoRA has no parameter exempt
        from weight decay): DeepSpeed drops them, and transformers 4.56's scheduler, built on the
        groups, would then hold more learning rates than the optimizer has groups (torch 2.13's
        scheduler step refuses that)."""
        optimizer = super().create_optimizer()
        optimizer.param_groups = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def get_train_dataloader(self) -> Any:
        if isinstance(self.train_dataset, StreamedTrainSet):
            return self._streamed_dataloader()
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

    def _streamed_dataloader(self) -> Any:
        """This process's batches of its own share of the stream (``StreamedTrainSet``), put on its
        device by accelerate as one process: ``Accelerator.prepare`` would, for an iterable
        dataset, dispatch every batch from process 0 (its default) or make each process read the
        whole stream and keep a slice (``IterableDatasetShard``)."""
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        prepared = prepare_data_loader(
            loader,
            self.accelerator.device,
            num_processes=1,
            process_index=0,
            split_batches=False,
            put_on_device=True,
            dispatch_batches=False,
        )
        if prepared.dataset is not self.train_dataset:
            raise FastSFTError(
                f"accelerate wrapped the streamed training set in {type(prepared.dataset).__name__}: each "
                "process would no longer train its own share of the stream"
            )
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
        """``Trainer.training_step``; a non-finite loss stops the run at this step (one process: with
        several, each sees only its share, and the gradient norm check, global, catches it)."""
        if STREAM_POSITION in inputs:
            self.stream_position = inputs.pop(STREAM_POSITION)
            self.train_dataset.consumed(self.stream_position)
        if self._window_start is None:
            self._window_start = time.perf_counter()
            self.initial_tokens_seen = self.state.num_input_tokens_seen
        self._pending_tokens += count_tokens(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.args.world_size == 1 and not torch.isfinite(loss).all():
            raise NonFiniteError(
                f"step {self.state.global_step + 1}: the loss is {loss.item()}; {NON_FINITE_CAUSE}"
            )
        return loss

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """``Trainer._save_checkpoint`` made atomic: every rank writes into
        ``.checkpoint-N.partial/checkpoint-N``, a barrier waits for all of them (ZeRO-3 shards
        included), the marker is written, and one rename publishes ``checkpoint-N``. Rotation
        (``save_total_limit``) then sees complete checkpoints only, and only fastsft's.
        Weights that are no longer finite are never saved."""
        self._check_weights_finite(model)
        self.count_pending_tokens()  # the checkpoint's state holds every step's tokens
        run_dir = Path(self._get_output_dir(trial=trial))
        step = self.state.global_step
        partial = checkpoints.partial_folder(run_dir, step)
        try:
            self._save_partial_and_publish(model, trial, run_dir, partial, f"{checkpoints.PREFIX}-{step}")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: nothing half-written stays behind
            if self.args.should_save:
                shutil.rmtree(partial, ignore_errors=True)
            raise

    def _save_partial_and_publish(
        self, model: Any, trial: Any, run_dir: Path, partial: Path, name: str
    ) -> None:
        if self.args.should_save:
            shutil.rmtree(partial, ignore_errors=True)  # a killed save of this step; the output is locked
            partial.mkdir(parents=True)
            checkpoints.mark_partial(partial)
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self._get_output_dir = lambda trial=None: str(partial)  # super() saves into the partial folder
        self.args.save_total_limit = None  # rotation happens here, over published checkpoints
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError, SafetensorError) as err:
            if self.args.should_save:
                shutil.rmtree(partial, ignore_errors=True)
            raise checkpoints.CheckpointError(
                checkpoints.save_error_line(err, run_dir / name, partial)
            ) from None
        finally:
            del self._get_output_dir
            self.args.save_total_limit = limit
        if isinstance(self.train_dataset, StreamedTrainSet):  # every process: its own position
            save_position(partial / name, self.train_dataset, self.stream_position)
        self.accelerator.wait_for_everyone()  # every rank's files are complete
        if self.args.should_save:
            self._point_best_at(run_dir, partial / name)
            checkpoints.mark_checkpoint(
                partial / name, self.state.global_step, model_only=self.args.save_only_model
            )
            checkpoints.publish_checkpoint(partial / name, run_dir / name)
            shutil.rmtree(partial, ignore_errors=True)
            checkpoints.rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _point_best_at(self, run_dir: Path, saved: Path) -> None:
        """``Trainer`` looked for the best checkpoint in the partial folder; point it at the published one."""
        if not self.state.best_global_step:
            return
        best = run_dir / f"{checkpoints.PREFIX}-{self.state.best_global_step}"
        if best.is_dir() or self.state.best_global_step == self.state.global_step:
            self.state.best_model_checkpoint = str(best)
            self.state.save_to_json(str(saved / checkpoints.TRAINER_STATE))

    def _check_weights_finite(self, model: Any) -> None:
        """Refuse to save weights holding NaN or inf (ZeRO-3 partitions hold no local values here)."""
        flags = [torch.isfinite(p).all() for p in model.parameters() if p.numel()]
        if flags and not bool(torch.stack(flags).all()):
            raise NonFiniteError(
                f"step {self.state.global_step}: the weights are no longer finite after this step's update; "
                f"{NON_FINITE_CAUSE}"
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``num_input_tokens_seen`` (non-padding, all ranks, every step so far) to every log once
        training started, as ``Trainer``'s ``include_num_input_tokens_seen`` does (so evaluation and
        the final metrics carry it too), and ``tokens_per_second`` since the previous training log
        to training logs."""
        if self._window_start is not None:
            self.count_pending_tokens()
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        if "loss" in logs and self._window_start is not None:
            now = time.perf_counter()
            logs["tokens_per_second"] = round(self._window_tokens / max(now - self._window_start, 1e-9), 1)
            self._window_tokens = 0
            self._window_start = now
        super().log(logs, start_time)

    def count_pending_tokens(self) -> int:
        """Add the tokens of the steps since the last count (all processes) to
        ``state.num_input_tokens_seen``; a collective, so every process calls it at the same point:
        at each training log, checkpoint and the end of training. Returns the tokens added."""
        tokens = int(self.accelerator.reduce(self._pending_tokens, reduction="sum").item())
        self._pending_tokens.zero_()
        self.state.num_input_tokens_seen += tokens
        self._window_tokens += tokens
        return tokens


class FiniteGradientsCallback(TrainerCallback):
    """Stops the run at a step whose gradient norm is not finite, before the optimizer uses it
    (``on_pre_optimizer_step``, after clipping: a non-finite norm leaves the clipped gradients
    non-finite too). fp16 is exempt: its loss scaler skips such steps by design. Under DeepSpeed
    the engine's global norm of the step is read (its gradients are not on the parameters)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.fp16:
            return
        norm = gradient_norm(self.trainer)
        if norm is not None and not math.isfinite(norm):
            raise NonFiniteError(
                f"step {state.global_step + 1}: the gradient norm is {norm}; {NON_FINITE_CAUSE}"
            )


def gradient_norm(trainer: Trainer) -> float | None:
    """The step's gradient norm as far as finiteness goes: DeepSpeed's global norm, else the 2-norm
    of this process's gradients combined over the processes (so that all of them agree);
    ``None`` where there is none to read."""
    engine = trainer.model_wrapped
    if hasattr(engine, "get_global_grad_norm"):
        norm = engine.get_global_grad_norm()
        return None if norm is None else float(norm)
    grads = [p.grad.detach() for p in trainer.model.parameters() if p.grad is not None]
    if not grads:
        return None
    local = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
    )
    return math.sqrt(float(trainer.accelerator.reduce(local.square(), reduction="sum")))


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


def count_tokens(inputs: dict[str, Any]) -> torch.Tensor | int:
    """Non-padding tokens of a batch (varlen batches have no padding), without a device sync."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].ne(0).sum()
    return inputs["input_ids"].numel()
