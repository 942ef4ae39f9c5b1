"""The SFT data pipeline, orchestrated: datasets → conversations → token ids → rows → ``datasets.Dataset``.

Each stage is its own module and gets only what it needs::

    reading.iter_batches ──▶ encoding.Encoder ──▶ rows.RowBuilder ──▶ Arrow record batches
      (registry, formats)     (templates, tokenizer,   (kernels; spill.HeldSamples for BFD)
                               kernels; workers.py)

This module turns ``DataArgs`` into those stages, streams the record batches into a table or a
cache file, and saves the result atomically (``build_to_disk``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from fastsft.data.accounting import SamplePolicy, Summary
from fastsft.data.encoding import Encoder
from fastsft.data.options import DataArgs
from fastsft.data.reading import iter_batches
from fastsft.data.rows import RowBuilder, empty_table
from fastsft.data.splitting import TRAIN, SplitSource, plan_splits
from fastsft.data.templates import Template, fix_tokenizer, get_template
from fastsft.data.workers import encoded_batches
from fastsft.errors import ConfigError, DataError
from fastsft.kernels import resolve_encode_path

__all__ = ["build_dataset", "build_to_disk", "make_encoder", "make_template"]


def make_template(args: DataArgs, tokenizer: Any) -> Template:
    """The chat template ``args`` name, with its options; unset, as LLaMA-Factory does: parsed from
    the tokenizer's jinja chat template, else ``empty`` (with a warning)."""
    return get_template(
        args.template,
        tool_format=args.tool_format,
        default_system=args.default_system,
        enable_thinking=args.enable_thinking,
        preserve_thinking=args.preserve_thinking,
        train_on_prompt=args.train_on_prompt,
        tokenizer=tokenizer,
    )


def make_encoder(args: DataArgs, tokenizer: Any) -> Encoder:
    """The encoder for ``args``; fixes ``tokenizer`` in place exactly as LLaMA-Factory does (eos, pad, stop words).

    The compiled encode path tokenizes with the fastest exact implementation
    (``fastsft.tokenization.load_backend``); the python path calls the tokenizer once per string,
    as LLaMA-Factory does.
    """
    from fastsft.tokenization import PerStringBackend, load_backend

    encode_path = resolve_encode_path(args.backend)
    template = make_template(args, tokenizer)
    fix_tokenizer(template, tokenizer)
    tokenizer_backend = (
        PerStringBackend(tokenizer)
        if encode_path == "python"
        else load_backend(tokenizer, args.tokenizer_backend)
    )
    return Encoder(
        template,
        tokenizer,
        tokenizer_backend,
        encode_path=encode_path,
        cutoff_len=args.effective_cutoff_len,
        train_on_prompt=args.train_on_prompt,
        mask_history=args.mask_history,
        policy=SamplePolicy(strict=args.strict, skip_malformed=args.skip_malformed),
    )


def build_dataset(
    args: DataArgs,
    tokenizer: Any,
    *,
    split: str = TRAIN,
    source: SplitSource | None = None,
    cache_file: str | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> tuple[Any, Summary]:
    """Run the pipeline; returns a ``datasets.Dataset`` with LLaMA-Factory's columns and a ``Summary``.

    The tokenizer is fixed in place exactly as LLaMA-Factory does (eos, pad, stop words). With
    ``cache_file`` the rows stream to that Arrow file and the dataset is memory-mapped from it, so
    memory does not grow with the dataset (BFD packing, which needs every length first, keeps 16
    bytes a sample and spills the tokens to a temporary folder beside ``cache_file``).
    ``workers`` (default ``args.preprocessing_num_workers`` or 1) encodes batches in that many
    processes, in order, with a bounded queue. ``split`` names the split of ``args`` to build
    (``fastsft.data.splitting.split_names``); ``source``, when given, is its planned samples.
    """
    import datasets
    from datasets.arrow_writer import ArrowWriter

    start = time.perf_counter()
    encoder = make_encoder(args, tokenizer)
    summary = Summary(encode_path=encoder.encode_path, tokenizer_backend=encoder.tokenizer_backend.name)
    if source is None:
        args.require_dataset()
        plan = plan_splits(args)
        if split not in plan:
            raise ConfigError(f"no split {split!r} (the splits are {', '.join(plan)})")
        source = plan[split]
    attrs = source.attrs
    rows = RowBuilder(
        encoder.kernels,
        summary,
        packing=bool(args.packing),
        strategy=args.strategy,
        neat_packing=args.neat_packing,
        cutoff_len=args.effective_cutoff_len,
        pad_token_id=tokenizer.pad_token_id,
        spill_dir=os.path.dirname(os.path.abspath(cache_file)) if cache_file else None,
    )
    batches = iter_batches(
        attrs,
        args.dataset_dir,
        max_samples=args.max_samples,
        batch_size=args.preprocessing_batch_size,
        policy=encoder.policy,
        summary=summary,
        order=source.order,
        lengths=source.lengths,
    )
    bar = _progress_bar(progress)

    def record_batches() -> Iterator[pa.RecordBatch]:
        n_workers = workers or args.preprocessing_num_workers or 1
        for encoded in encoded_batches(encoder, batches, summary, n_workers):
            yield from rows.add(encoded)
            bar.update(summary.examples_in - bar.n)
        yield from rows.finish()

    try:
        if cache_file is None:
            chunks = list(record_batches())
            table = pa.Table.from_batches(chunks) if chunks else empty_table(bool(args.packing))
            # A random fingerprint: `datasets` would otherwise hash every token to name an in-memory table.
            dataset = datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=uuid.uuid4().hex)
        else:
            with ArrowWriter(path=cache_file) as writer:
                wrote = False
                for batch in record_batches():
                    writer.write_table(pa.Table.from_batches([batch]))
                    wrote = True
                if not wrote:
                    writer.write_table(empty_table(bool(args.packing)))
                writer.finalize()
            dataset = datasets.Dataset.from_file(cache_file)
    finally:
        rows.close()
    bar.close()
    summary.seconds = time.perf_counter() - start
    if summary.examples_encoded == 0:
        raise DataError(
            "no valid samples"
            + (f" ({summary.dropped} dropped; first: {summary.first_dropped})" if summary.dropped else ""),
            dataset=",".join(a.name for a in attrs),
        )
    return dataset, summary


def build_to_disk(
    args: DataArgs,
    tokenizer: Any,
    output: str | os.PathLike[str],
    *,
    progress: bool = False,
    workers: int | None = None,
) -> dict[str, Summary]:
    """``build_dataset`` of every split saved as ``DatasetDict({"train": ..., "validation": ...})``
    at ``output`` (LLaMA-Factory's ``tokenized_path`` layout), atomically; returns each split's ``Summary``.

    Rows stream to a cache file in a temporary folder beside ``output`` (so memory stays flat),
    ``save_to_disk`` writes there too, and a rename puts the result in place: a crash or a bad
    sample never leaves a half-written dataset, and an existing ``output`` is replaced only then.
    """
    import datasets

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        splits, summaries = {}, {}
        for name, source in plan_splits(args).items():
            splits[name], summaries[name] = build_dataset(
                args,
                tokenizer,
                source=source,
                cache_file=str(workdir / f"{name}.arrow"),
                progress=progress,
                workers=workers,
            )
        staged = workdir / "dataset"
        bars_were_disabled = datasets.are_progress_bars_disabled()
        if not progress:
            datasets.disable_progress_bars()  # save_to_disk has no switch of its own
        try:
            datasets.DatasetDict(splits).save_to_disk(str(staged))
        finally:
            if not bars_were_disabled:
                datasets.enable_progress_bars()
        if output.exists():
            os.replace(output, workdir / "previous")
        os.replace(staged, output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summaries


class _NoBar:
    n = 0

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(desc="Encoding", unit=" samples", smoothing=0.1)
