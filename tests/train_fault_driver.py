"""Runs ``fastsft train`` paused at (or failing at) one point, for ``tests/test_train_faults.py``.

Usage: ``python tests/train_fault_driver.py POINT READY_FILE ARGV...``. When the run reaches POINT
it writes its pid to READY_FILE and waits until ``READY_FILE.go`` exists (the test signals or
kills it meanwhile). Only module attributes are replaced, from outside; fastsft has no test hooks.

* ``checkpoint-write``: the second checkpoint's model is written, its optimizer not yet;
* ``checkpoint-publish``: the second checkpoint is complete and marked, not yet renamed into place;
* ``final-write``: the final model is staged, nothing of it published yet;
* ``final-publish``: the final files are half moved into ``output_dir``;
* ``nan-loss``: no pause; the model's loss is NaN from the 7th optimizer step on;
* ``none``: no pause, no change (for runs that must hold the lock while the test runs another).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from fault_driver import pause  # preprocess's driver, beside this file (sys.path[0] when run)


def install(point: str, ready: Path) -> None:
    from transformers import Trainer

    from fastsft.train import checkpoints, output_dir, trainer, workflow

    saves = {"n": 0}
    if point == "checkpoint-write":
        original_save_optimizer = Trainer._save_optimizer_and_scheduler

        def save_optimizer(self: Any, folder: str) -> None:
            saves["n"] += 1
            if saves["n"] == 2:
                pause(ready)
            original_save_optimizer(self, folder)

        trainer.SFTTrainer._save_optimizer_and_scheduler = save_optimizer
    elif point == "checkpoint-publish":
        original_publish = checkpoints.publish_checkpoint

        def publish_checkpoint(folder: Path, target: Path) -> None:
            saves["n"] += 1
            if saves["n"] == 2:
                pause(ready)
            original_publish(folder, target)

        checkpoints.publish_checkpoint = publish_checkpoint
    elif point == "final-write":
        original_publish_final = workflow.publish_final

        def publish_final(*args: Any) -> None:
            pause(ready)
            original_publish_final(*args)

        workflow.publish_final = publish_final
    elif point == "final-publish":
        original_replace = os.replace

        def replace(source: Any, target: Any) -> None:
            original_replace(source, target)
            if Path(source).parent.name == output_dir.FINAL_PARTIAL and Path(target).name == "config.json":
                pause(ready)

        output_dir.os.replace = replace  # type: ignore[attr-defined]
    elif point == "nan-loss":
        original_step = Trainer.training_step

        def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
            loss = original_step(self, *args, **kwargs)
            return loss * float("nan") if self.state.global_step >= 6 else loss

        Trainer.training_step = training_step
    elif point != "none":
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    install(sys.argv[1], Path(sys.argv[2]))
    from fastsft.cli import main

    sys.exit(main(sys.argv[3:]))
