"""``fastsft train``, split by job: ``config`` (the options), ``command`` (the CLI entry and exit
status), ``workflow`` (one run, as LLaMA-Factory's ``run_sft``), ``environment`` (CPU threads,
process groups), ``model`` (tokenizer, model, attention, loss), ``trainer`` (the ``Trainer``
subclass), ``logs`` (progress lines, logs, plots), ``checkpoints`` (atomic checkpoints, resume
integrity), ``output_dir`` (the lock, the path checks, the run marker, the final publish),
``adapter`` (LoRA / freeze set-up), ``export`` (``fastsft export``: adapters merged into the
base), plus ``attention`` and ``loss``.

``train(config)`` and ``load_config(path, overrides)`` are the Python entry points.
"""

from __future__ import annotations

from fastsft.lazy import lazy_getattr

_HOMES = {"TrainConfig": "config", "load_config": "config", "train": "workflow", "run_train": "command"}
__all__ = sorted(_HOMES)

__getattr__ = lazy_getattr(__name__, _HOMES)
