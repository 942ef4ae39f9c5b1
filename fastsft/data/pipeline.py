"""The SFT data pipeline, orchestrated: datasets → conversations → token ids → rows → ``datasets.Dataset``.

Each stage is its own module and gets only what it needs::

    reading.iter_batches ──▶ encoding.Encoder ──▶ rows.RowBuilder ──▶ Arrow record batches
      (registry, formats)     (templates, tokenizer,   (kernels; spill.HeldSamples for BFD)
                               kernels; workers.py)

This module turns ``DataArgs`` into those stages and streams the record batches into a table, a
cache file, or the ``save_to_disk`` layout published atomically (``build_to_disk``).
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from fastsft.data.accounting import SamplePolicy, Summary
from fastsft.data.disk_layout import DATA_FILE, ArrowStreamFile, write_dataset_dict, write_split_metadata
from fastsft.data.encoding import Encoder
from fastsft.data.options import DataArgs
from fastsft.data.output import (
    OutputError,
    check_output_path,
    check_replaceable,
    os_error_line,
    staged_output,
)
from fastsft.data.provenance import describe, tokenizer_fingerprint
from fastsft.data.reading import iter_batches
from fastsft.data.registry import input_bytes, input_paths
from fastsft.data.rows import RowBuilder, empty_table
from fastsft.data.splitting import TRAIN, RunDatasets, SplitSource, plan_splits, resolve_run_datasets
from fastsft.data.templates import Template, fix_tokenizer, get_template
from fastsft.data.workers import encoded_batches
from fastsft.errors import ConfigError, DataError
from fastsft.kernels import resolve_encode_path

__all__ = ["build_dataset", "build_to_disk", "check_output", "make_encoder", "make_template"]


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


def make_encoder(args: DataArgs, tokenizer: Any, *, expected_chars: int = 0) -> Encoder:
    """The encoder for ``args``; fixes ``tokenizer`` in place exactly as LLaMA-Factory does (eos, pad, stop words).

    The compiled encode path tokenizes with the fastest exact implementation for about
    ``expected_chars`` of text (``fastsft.tokenization.load_backend``); the python path calls the
    tokenizer once per string, as LLaMA-Factory does.
    """
    from fastsft.tokenization import PerStringBackend, load_backend

    encode_path = resolve_encode_path(args.backend)
    template = make_template(args, tokenizer)
    fix_tokenizer(template, tokenizer)
    tokenizer_backend = (
        PerStringBackend(tokenizer)
        if encode_path == "python"
        else load_backend(tokenizer, args.tokenizer_backend, expected_chars=expected_chars)
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

    if source is None:
        args.require_dataset()
        plan = plan_splits(args)
        if split not in plan:
            raise ConfigError(f"no split {split!r} (the splits are {', '.join(plan)})")
        source = plan[split]
    if cache_file is None:
        chunks: list[pa.RecordBatch] = []
        summary = _build_split(args, tokenizer, source, chunks.append, None, progress, workers)
        table = pa.Table.from_batches(chunks) if chunks else empty_table(bool(args.packing))
        # A random fingerprint: `datasets` would otherwise hash every token to name an in-memory table.
        return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=uuid.uuid4().hex), summary
    path = Path(cache_file).absolute()
    summary = _write_split(args, tokenizer, source, path, path.parent, progress, workers)
    return datasets.Dataset.from_file(str(path)), summary


def _write_split(
    args: DataArgs,
    tokenizer: Any,
    source: SplitSource,
    path: Path,
    spill_dir: Path,
    progress: bool,
    workers: int | None,
) -> Summary:
    """Stream one split's rows into the Arrow file ``path`` (BFD spills beside it, in ``spill_dir``)."""
    with ArrowStreamFile(path) as file:
        summary = _build_split(args, tokenizer, source, file.write, str(spill_dir), progress, workers)
        file.close(empty_table(bool(args.packing)).schema)
    return summary


def _build_split(
    args: DataArgs,
    tokenizer: Any,
    source: SplitSource,
    sink: Callable[[pa.RecordBatch], None],
    spill_dir: str | None,
    progress: bool,
    workers: int | None,
) -> Summary:
    """Every stage for one split: its record batches go to ``sink`` in order; returns the ``Summary``."""
    start = time.perf_counter()
    attrs = source.attrs
    # Input bytes stand in for the characters to encode (JSON keys and escapes make them an
    # overestimate); with max_samples they say nothing, and the backend decides as it goes.
    expected = 0 if args.max_samples else input_bytes(attrs, args.dataset_dir)
    encoder = make_encoder(args, tokenizer, expected_chars=expected)
    summary = Summary(encode_path=encoder.encode_path, tokenizer_backend=encoder.tokenizer_backend.name)
    rows = RowBuilder(
        encoder.kernels,
        summary,
        packing=bool(args.packing),
        strategy=args.strategy,
        neat_packing=args.neat_packing,
        cutoff_len=args.effective_cutoff_len,
        pad_token_id=tokenizer.pad_token_id,
        spill_dir=spill_dir,
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
    with _cyclic_gc_paused():
        try:
            for encoded in encoded_batches(
                encoder, batches, summary, workers or args.preprocessing_num_workers or 1
            ):
                for batch in rows.add(encoded):
                    sink(batch)
                bar.update(summary.examples_in - bar.n)
            for batch in rows.finish():
                sink(batch)
        finally:
            rows.close()
    bar.close()
    summary.tokenizer_backend = encoder.tokenizer_backend.name  # "auto" may have switched
    summary.seconds = time.perf_counter() - start
    if summary.examples_encoded == 0:
        raise DataError(
            "no valid samples"
            + (f" ({summary.dropped} dropped; first: {summary.first_dropped})" if summary.dropped else ""),
            dataset=",".join(a.name for a in attrs),
        )
    return summary


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a split is built, then back as it was.

    Building makes millions of short-lived containers while the parsed rows of a JSON array file
    stay alive, and each full collection walks all of them: on 20,000 conversations two full
    collections took 0.4 s of a 2 s build. The pipeline makes no reference cycles, so reference
    counting frees everything it drops meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_output(
    args: DataArgs,
    output: Path,
    *,
    overwrite: bool,
    tokenizer_dir: str | None,
    datasets: RunDatasets | None = None,
) -> None:
    """Refuse ``output`` when it is, holds or lies inside an input (dataset files, ``dataset_dir``,
    ``tokenizer_dir``, the eval datasets too) or the working directory, or when it exists and may
    not be replaced. ``datasets``: the run's datasets if already resolved (else resolved here)."""
    attrs = (datasets or resolve_run_datasets(args)).all
    inputs = [Path(path) for path in input_paths(attrs, args.dataset_dir)]
    if tokenizer_dir and Path(tokenizer_dir).is_dir():
        inputs.append(Path(tokenizer_dir))
    check_output_path(output, inputs)
    check_replaceable(output, overwrite)


def build_to_disk(
    args: DataArgs,
    tokenizer: Any,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
    notice: Callable[[str], None] | None = None,
    datasets: RunDatasets | None = None,
) -> dict[str, Summary]:
    """Every split of ``args`` saved as ``DatasetDict({"train": ..., "validation": ...})`` at
    ``output`` (LLaMA-Factory's ``tokenized_path`` layout), without risking data; returns each
    split's ``Summary``.

    ``output`` may not be an input or hold one (``check_output_path``). Rows stream into the
    ``save_to_disk`` layout (``fastsft.data.disk_layout``) in a locked temporary folder beside
    ``output`` (memory stays flat), the provenance marker is added, and a no-replace rename
    publishes the result (``fastsft.data.output``): a crash, a signal or a bad sample leaves
    ``output`` as it was, and an existing ``output`` is replaced only with ``overwrite`` and only
    if fastsft wrote it. Notices (a killed run's folder removed) go to ``notice``, by default stderr.
    ``datasets``: the run's datasets if the caller resolved them already.
    """
    output = Path(output)
    datasets = datasets or resolve_run_datasets(args)  # once for the run (the caller's, if given)
    tokenizer_dir = str(getattr(tokenizer, "name_or_path", ""))
    check_output(args, output, overwrite=overwrite, tokenizer_dir=tokenizer_dir, datasets=datasets)
    fingerprint = tokenizer_fingerprint(tokenizer)  # before build_dataset fixes the tokenizer
    try:
        with staged_output(output, overwrite=overwrite, notice=notice) as staged:
            summaries = {}
            for name, source in plan_splits(args, datasets).items():
                split_dir = staged.dataset / name
                split_dir.mkdir(parents=True)
                summaries[name] = _write_split(
                    args, tokenizer, source, split_dir / DATA_FILE, staged.workdir, progress, workers
                )
                write_split_metadata(split_dir)
            write_dataset_dict(staged.dataset, list(summaries))
            staged.commit(describe(args, fingerprint=fingerprint, tokenizer=tokenizer))
    except OSError as err:
        action = f"write {output}" if _is_output_side(err.filename, output) else "read an input"
        raise OutputError(os_error_line(err, action)) from None
    return summaries


def _is_output_side(filename: Any, output: Path) -> bool:
    """Whether an ``OSError``'s path is the output, its folder or a file the run keeps beside it."""
    if filename is None:
        return True
    parent = output.parent.resolve()
    path = Path(os.fsdecode(filename)).resolve()
    if path == parent or parent.is_relative_to(path):
        return True
    if not path.is_relative_to(parent):
        return False
    first = path.relative_to(parent).parts[0]
    return first == output.name or first.startswith(f".{output.name}.")


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
