"""The SFT data pipeline, orchestrated: datasets → conversations → token ids → rows → ``datasets.Dataset``.

Each stage is its own module and gets only what it needs::

    sources.reading.iter_batches ──▶ rows.encoder.Encoder ──▶ rows.builder.RowBuilder ──▶ Arrow batches
      (sources.parser, converter)     (chat templates, tokenizer    (kernels.pack; rows.spill for
                                       backend, kernels; workers)     whole-dataset strategies)

Every command enters here: ``prepare_run`` (the tokenizer's fingerprint, the template, the
tokenizer's fixes, once and in that order, giving the ``TokenizerSpec`` the stages read) and ``load_or_build`` (a saved ``tokenized_path``
checked against its provenance, or the rows built now). This module streams the record batches
into a table, a cache file, or the ``save_to_disk`` layout published atomically (``build_to_disk``).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from fastsft.data.accounting import SamplePolicy, SampleRef, Summary
from fastsft.data.chat.registry import get_template
from fastsft.data.chat.template import Template, fix_tokenizer
from fastsft.data.data_args import DataArgs
from fastsft.data.rows.builder import RowBuilder, empty_table
from fastsft.data.rows.chat_mode import CHAT_TEMPLATE_MODE, ChatTemplateMode
from fastsft.data.rows.encoder import Encoder
from fastsft.data.rows.tokenizing import expected_chars
from fastsft.data.rows.worker_count import workers_for_run
from fastsft.data.rows.workers import encoded_batches
from fastsft.data.sources.converter import Conversation, Dropped, convert
from fastsft.data.sources.mixing import STOPPING_STRATEGIES
from fastsft.data.sources.parser import count_rows
from fastsft.data.sources.reading import iter_batches, iter_converted
from fastsft.data.sources.splitting import (
    TRAIN,
    VALIDATION,
    RunDatasets,
    SplitSource,
    check_output,
    data_inputs,
    plan_splits,
    resolve_run_datasets,
)
from fastsft.data.store.disk_layout import (
    DATA_FILE,
    ArrowStreamFile,
    write_dataset_dict,
    write_split_metadata,
)
from fastsft.data.store.provenance import FORMAT as FINGERPRINT_FORMAT
from fastsft.data.store.provenance import (
    check_token_ids,
    check_tokenizer,
    describe,
    fingerprint_version,
    ignored_options,
    read_provenance,
    tokenizer_fingerprint,
)
from fastsft.data.streaming import RowStream, SampleStream, StreamSpec
from fastsft.errors import ConfigError, DataError
from fastsft.kernels import resolve_encode_path
from fastsft.kernels.packing import llamafactory_batch_sizes
from fastsft.safe_output import (
    OutputError,
    os_error_line,
    staged_output,
)
from fastsft.tokenizer.encoders import TextEncoder, choose_encoder
from fastsft.tokenizer.loader import load_tokenizer
from fastsft.tokenizer.spec import TokenizerSpec, load_saved_spec, save_spec, spec_key

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "PreparedRun",
    "build_dataset",
    "build_to_disk",
    "check_output",
    "data_inputs",
    "load_or_build",
    "make_encoder",
    "make_template",
    "prepare_run",
    "stream_splits",
]


def make_template(args: DataArgs, tokenizer: PreTrainedTokenizerBase | None) -> Template:
    """The chat template ``args`` name, with its options; unset, as LLaMA-Factory does: parsed from
    the tokenizer's jinja chat template, else ``empty`` (with a warning). The chat-template mode
    renders with the tokenizer's own template; its LLaMA-Factory template is ``empty`` without
    LLaMA-Factory's jinja replacement, for the tokenizer fixes alone (a pad token where none is set)."""
    if args.template == CHAT_TEMPLATE_MODE:
        if args.tool_format is not None:
            raise ConfigError(
                f"tool_format has no meaning with template {CHAT_TEMPLATE_MODE}: the chat template formats tool calls"
            )
        template = get_template("empty", train_on_prompt=args.train_on_prompt)
        template.replace_jinja_template = False
        return template
    return get_template(
        args.template,
        tool_format=args.tool_format,
        default_system=args.default_system,
        enable_thinking=args.enable_thinking,
        preserve_thinking=args.preserve_thinking,
        train_on_prompt=args.train_on_prompt,
        tokenizer=tokenizer,
    )


def make_encoder(
    args: DataArgs, tokenizer: PreTrainedTokenizerBase | str, *, expected_chars: int = 0
) -> Encoder:
    """The encoder for ``args``; fixes ``tokenizer`` in place exactly as LLaMA-Factory does (eos, pad, stop words).

    A shortcut for ``prepare_run(args, tokenizer, fingerprint=False).encoder(...)``.
    """
    return prepare_run(args, tokenizer, fingerprint=False).encoder(expected_chars=expected_chars)


@dataclass(frozen=True)
class PreparedRun:
    """A run's data set-up, made once by ``prepare_run`` and passed to every stage that needs it.

    ``spec`` is the tokenizer fixed as LLaMA-Factory fixes it for ``template`` (eos, pad, stop
    words, chat template); its ``fingerprints`` are the tokenizer's as loaded, before those fixes,
    by fingerprint format: what a saved dataset's provenance records and is checked against.
    ``tokenizer`` is the real tokenizer, fixed, when the run loaded one (``None`` when the spec was
    read from fastsft's cache). The text encoder of each encode path is chosen once for the run.
    """

    args: DataArgs
    spec: TokenizerSpec
    template: Template
    tokenizer: PreTrainedTokenizerBase | None = None
    datasets: RunDatasets | None = None  # resolved once for the run; None: when first needed
    text_encoders: dict[str, TextEncoder] = field(default_factory=dict, repr=False, compare=False)
    chat_modes: list[ChatTemplateMode] = field(default_factory=list, repr=False, compare=False)  # 0 or 1

    @property
    def fingerprints(self) -> dict[int, str]:
        return dict(self.spec.fingerprints)

    @property
    def fingerprint(self) -> str:
        """The tokenizer's fingerprint in the current format (what a new output records)."""
        return self.fingerprints[FINGERPRINT_FORMAT]

    def fingerprint_for(self, record: dict[str, Any] | None) -> str:
        """The tokenizer's fingerprint in the format of a saved dataset's provenance ``record``."""
        return self.fingerprints[fingerprint_version(record)]

    def splits(self) -> dict[str, SplitSource]:
        """The run's splits (``train``, ``validation``, ``validation_NAME``) and their samples, in order."""
        self.args.require_dataset()
        return plan_splits(self.args, self.datasets)

    def row_builder(self, encoder: Encoder, summary: Summary, *, spill_dir: Path | None = None) -> RowBuilder:
        """A builder of this run's rows: its packing options, cutoff and pad token."""
        return RowBuilder(
            encoder.kernels,
            summary,
            packing=bool(self.args.packing),
            strategy=self.args.strategy,
            neat_packing=self.args.neat_packing,
            cutoff_len=self.args.effective_cutoff_len,
            pad_token_id=self.spec.pad_token_id,
            spill_dir=spill_dir,
        )

    def text_encoder(self, encode_path: str, *, expected_chars: int = 0) -> TextEncoder:
        """The run's text encoder for ``encode_path``: chosen (``fastsft.tokenizer.encoders.choose_encoder``)
        by the first call, for about ``expected_chars`` of text, and kept for the run."""
        if encode_path not in self.text_encoders:
            self.text_encoders[encode_path] = choose_encoder(
                self.spec,
                self.args.tokenizer_backend,
                expected_chars=expected_chars,
                per_string=encode_path == "python",
                tokenizer=self.tokenizer,
            )
        return self.text_encoders[encode_path]

    def encoder(self, *, expected_chars: int = 0, encode_path: str | None = None) -> Encoder:
        """An encoder over the fixed tokenizer, with the run's ``text_encoder`` (chosen for about
        ``expected_chars`` of text when this is the first); ``encode_path`` overrides ``args.backend``."""
        path = resolve_encode_path(encode_path or self.args.backend)
        return Encoder(
            self.template,
            self.spec,
            self.text_encoder(path, expected_chars=expected_chars),
            encode_path=path,
            cutoff_len=self.args.effective_cutoff_len,
            train_on_prompt=self.args.train_on_prompt,
            mask_history=self.args.mask_history,
            policy=SamplePolicy(strict=self.args.strict, skip_malformed=self.args.skip_malformed),
            chat_mode=self.chat_mode,
        )

    @property
    def chat_mode(self) -> ChatTemplateMode | None:
        """``template: chat_template``: the tokenizer's own chat template set up for training (made
        once for the run); else ``None``."""
        if self.args.template != CHAT_TEMPLATE_MODE:
            return None
        if not self.chat_modes:
            self.chat_modes.append(
                ChatTemplateMode(
                    self.spec,
                    enable_thinking=self.args.enable_thinking,
                    default_system=self.args.default_system,
                )
            )
        return self.chat_modes[0]

    def samples(self, split: str = TRAIN) -> Iterator[tuple[SampleRef, Conversation | Dropped | DataError]]:
        """Every sample of ``split`` in training order, converted: a ``Conversation``, or why it is not one."""
        source = self.splits()[split]
        return iter_converted(
            source.attrs,
            self.args.dataset_dir,
            self.args.max_samples,
            source.order,
            source.lengths,
            system_as_written=self.args.template == CHAT_TEMPLATE_MODE,
        )

    def stream_spec(self, *, take: int | None = None) -> StreamSpec:
        """``streaming: true``: the training datasets' ``StreamSpec`` (``val_size`` samples cut off its
        head; with ``take``, only those)."""
        args = self.args
        args.require_dataset()
        datasets = self.datasets or resolve_run_datasets(args)
        holdout = int(args.val_size) if args.val_size > 1e-6 else 0
        return dataclasses.replace(
            self.mixed_stream_spec(datasets.train), skip=0 if take is not None else holdout, take=take
        )

    def mixed_stream_spec(self, attrs: list[Any]) -> StreamSpec:
        """``streaming: true``: ``attrs`` merged as ``mix_strategy`` says, shuffled by the buffer."""
        args = self.args
        interleave = None if len(attrs) == 1 or args.mix_strategy == "concat" else args.mix_strategy
        return StreamSpec(
            attrs,
            args.dataset_dir,
            buffer_size=args.buffer_size,
            seed=args.seed,
            interleave=STOPPING_STRATEGIES[interleave] if interleave else None,
            interleave_probs=list(args.interleave_probs) if interleave and args.interleave_probs else None,
        )

    def streamed_samples(self) -> Iterator[tuple[SampleRef, Conversation | Dropped | DataError]]:
        """``streaming: true``: the training samples in the streamed order (first pass), converted."""
        for attr, ref, row in SampleStream(self.stream_spec(), 0):
            try:
                yield ref, convert(row, attr, system_as_written=self.args.template == CHAT_TEMPLATE_MODE)
            except DataError as err:
                yield ref, err


def prepare_run(
    args: DataArgs,
    tokenizer: PreTrainedTokenizerBase | str,
    *,
    fingerprint: bool = True,
    datasets: RunDatasets | None = None,
) -> PreparedRun:
    """The one data set-up of every command: the tokenizer's fingerprint, then the template, then
    the tokenizer fixed for it, in that order (the fingerprint describes the tokenizer as loaded).
    ``fingerprint=False`` skips it, for builds that record no provenance; ``datasets`` are the
    run's datasets if the caller resolved them already.

    ``tokenizer`` is a HF tokenizer (fixed in place), or the folder of one: then its spec is read
    from fastsft's cache when this folder's content was fixed for this template and these options
    before (without importing transformers), else made from the tokenizer loaded there and kept.
    When ``args.tokenized_path`` holds a saved dataset recorded with an older fingerprint format,
    the fingerprint is taken in that format too, so the two compare.
    """
    versions = {FINGERPRINT_FORMAT} if fingerprint else set()
    if fingerprint and args.tokenized_path and Path(args.tokenized_path).exists():
        versions.add(fingerprint_version(read_provenance(args.tokenized_path)))
    if not isinstance(tokenizer, str):
        return _fixed_run(args, tokenizer, versions, datasets)
    template = make_template(args, None) if args.template is not None else None
    key = _spec_key(args, template, tokenizer) if template is not None else None
    spec = load_saved_spec(key) if key is not None else None
    if spec is not None and template is not None and versions <= spec.fingerprints.keys():
        spec = dataclasses.replace(spec, name_or_path=tokenizer)
        return PreparedRun(args, spec, template, None, datasets)
    run = _fixed_run(args, load_tokenizer(tokenizer), versions | {FINGERPRINT_FORMAT}, datasets)
    if key is not None:
        save_spec(key, run.spec)
    return run


def _fixed_run(
    args: DataArgs, tokenizer: PreTrainedTokenizerBase, versions: set[int], datasets: RunDatasets | None
) -> PreparedRun:
    fingerprints = {version: tokenizer_fingerprint(tokenizer, version) for version in versions}
    template = make_template(args, tokenizer)
    if args.template == CHAT_TEMPLATE_MODE and not isinstance(tokenizer.chat_template, str):
        raise ConfigError(
            f"template {CHAT_TEMPLATE_MODE}: the tokenizer {getattr(tokenizer, 'name_or_path', '')} has no chat template"
        )
    fix_tokenizer(template, tokenizer)
    spec = TokenizerSpec.from_tokenizer(
        tokenizer, slot_tokens=template.slot_tokens(), fingerprints=fingerprints
    )
    return PreparedRun(args, spec, template, tokenizer, datasets)


def _spec_key(args: DataArgs, template: Template, folder: str) -> str | None:
    """What a tokenizer folder's spec is kept under: the folder's content, the options that decide
    the template and the template's whole definition, which decides the fixes (a fastsft that
    defines it otherwise fixes the tokenizer again). ``None``: not kept, for a path that is not a
    folder (an unset template, parsed from the tokenizer itself, is never kept either)."""
    if not Path(folder).is_dir():
        return None
    options = (args.template, args.tool_format, args.default_system, args.enable_thinking)
    return spec_key(Path(folder), *options, args.preserve_thinking, args.train_on_prompt, repr(template))


def build_dataset(
    args: DataArgs,
    tokenizer: PreTrainedTokenizerBase | str,
    *,
    split: str = TRAIN,
    source: SplitSource | None = None,
    cache_file: str | None = None,
    progress: bool = False,
    workers: int | None = None,
    run: PreparedRun | None = None,
) -> tuple[Any, Summary]:
    """Run the pipeline; returns a ``datasets.Dataset`` with LLaMA-Factory's columns and a ``Summary``.

    The tokenizer is fixed in place exactly as LLaMA-Factory does (eos, pad, stop words). With
    ``cache_file`` the rows stream to that Arrow file and the dataset is memory-mapped from it, so
    memory does not grow with the dataset (BFD packing, which needs every length first, keeps 16
    bytes a sample and spills the tokens to a temporary folder beside ``cache_file``).
    ``workers`` encodes batches in exactly that many processes, in order, with a bounded queue;
    unset, ``args.preprocessing_num_workers`` is a ceiling (``fastsft.data.rows.worker_count``).
    ``split`` names the split of ``args`` to build
    (``fastsft.data.sources.splitting.split_names``); ``source``, when given, is its planned samples.
    ``run``, when given, is ``prepare_run(args, tokenizer)`` already made (the tokenizer fixed).
    """
    import datasets

    run = run or prepare_run(args, tokenizer, fingerprint=False)
    if source is None:
        plan = run.splits()
        if split not in plan:
            raise ConfigError(f"no split {split!r} (the splits are {', '.join(plan)})")
        source = plan[split]
    if cache_file is None:
        chunks: list[pa.RecordBatch] = []
        summary = _build_split(run, source, chunks.append, None, progress, workers)
        table = pa.Table.from_batches(chunks) if chunks else empty_table(bool(args.packing))
        # A random fingerprint: `datasets` would otherwise hash every token to name an in-memory table.
        return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=uuid.uuid4().hex), summary
    path = Path(cache_file).absolute()
    summary = _write_split(run, source, path, path.parent, progress, workers)
    return datasets.Dataset.from_file(str(path)), summary


def _write_split(
    run: PreparedRun,
    source: SplitSource,
    path: Path,
    spill_dir: Path,
    progress: bool,
    workers: int | None,
) -> Summary:
    """Stream one split's rows into the Arrow file ``path`` (BFD spills beside it, in ``spill_dir``)."""
    with ArrowStreamFile(path) as file:
        summary = _build_split(run, source, file.write, str(spill_dir), progress, workers)
        file.close(empty_table(bool(run.args.packing)).schema)
    return summary


def _build_split(
    run: PreparedRun,
    source: SplitSource,
    sink: Callable[[pa.RecordBatch], None],
    spill_dir: str | None,
    progress: bool,
    workers: int | None,
) -> Summary:
    """Every stage for one split: its record batches go to ``sink`` in order; returns the ``Summary``."""
    start = time.perf_counter()
    args = run.args
    attrs = source.attrs
    encoder = run.encoder(expected_chars=expected_chars(args, attrs))
    summary = Summary(encode_path=encoder.encode_path, tokenizer_backend=encoder.text_encoder.name)
    if workers is None:  # preprocessing_num_workers is a ceiling; the line says what was chosen
        choice = workers_for_run(args, attrs)
        workers, summary.workers = choice.count, choice.line or ""
    rows = run.row_builder(encoder, summary, spill_dir=spill_dir)
    batches = iter_batches(
        attrs,
        args.dataset_dir,
        max_samples=args.max_samples,
        batch_size=args.preprocessing_batch_size,
        summary=summary,
        order=source.order,
        lengths=source.lengths,
        batch_sizes=_llamafactory_batch_sizes(args, source),
    )
    bar = _progress_bar(progress)
    with _cyclic_gc_paused():
        try:
            for encoded in encoded_batches(encoder, batches, summary, workers):
                for batch in rows.add(encoded):
                    sink(batch)
                bar.update(summary.examples_in - bar.n)
            for batch in rows.finish():
                sink(batch)
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
    return summary


def _llamafactory_batch_sizes(args: DataArgs, source: SplitSource) -> list[int] | None:
    """LLaMA-Factory's batches for its packing when its ``preprocessing_num_workers`` shards the split
    (its rows depend on them); ``None`` where batches of ``preprocessing_batch_size`` are its batches."""
    if args.packing_shards <= 1:
        return None
    if source.order is not None:
        samples = len(source.order)
    else:
        samples = sum(
            count_rows(attr, args.dataset_dir, max_samples=args.max_samples) for attr in source.attrs
        )
    return llamafactory_batch_sizes(samples, args.packing_shards, args.preprocessing_batch_size)


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


def build_to_disk(
    args: DataArgs,
    tokenizer: PreTrainedTokenizerBase | str,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
    notice: Callable[[str], None] | None = None,
    run: PreparedRun | None = None,
    datasets: RunDatasets | None = None,
) -> dict[str, Summary]:
    """Every split of ``args`` saved as ``DatasetDict({"train": ..., "validation": ...})`` at
    ``output`` (LLaMA-Factory's ``tokenized_path`` layout), without risking data; returns each
    split's ``Summary``.

    ``output`` may not be an input or hold one (``check_output_path``). Rows stream into the
    ``save_to_disk`` layout (``fastsft.data.store.disk_layout``) in a locked temporary folder beside
    ``output`` (memory stays flat), the provenance marker is added, and a no-replace rename
    publishes the result (``fastsft.safe_output``): a crash, a signal or a bad sample leaves
    ``output`` as it was, and an existing ``output`` is replaced only with ``overwrite`` and only
    if fastsft wrote it. Notices (a killed run's folder removed) go to ``notice``, by default stderr.
    ``run``, when given, is ``prepare_run(args, tokenizer)`` already made; ``datasets``, the run's
    datasets if the caller resolved them already (each is resolved once per run).
    """
    if args.streaming:
        raise ConfigError("turn off `streaming` to save a dataset to disk (as in LLaMA-Factory)")
    output = Path(output)
    datasets = datasets or (run.datasets if run is not None else None) or resolve_run_datasets(args)
    tokenizer_dir = tokenizer if isinstance(tokenizer, str) else str(getattr(tokenizer, "name_or_path", ""))
    check_output(args, output, overwrite=overwrite, tokenizer_dir=tokenizer_dir, datasets=datasets)
    if run is None:
        # The fingerprint of a new output is in the current format, whatever an output it replaces used.
        run = prepare_run(dataclasses.replace(args, tokenized_path=None), tokenizer, datasets=datasets)
    else:
        run = dataclasses.replace(run, datasets=datasets)
    try:
        with staged_output(output, overwrite=overwrite, notice=notice) as staged:
            summaries = {}
            for name, source in run.splits().items():
                split_dir = staged.dataset / name
                split_dir.mkdir(parents=True)
                summaries[name] = _write_split(
                    run, source, split_dir / DATA_FILE, staged.workdir, progress, workers
                )
                write_split_metadata(split_dir)
            write_dataset_dict(staged.dataset, list(summaries))
            staged.commit(describe(args, fingerprint=run.fingerprint, tokenizer=run.spec))
    except OSError as err:
        action = f"write {output}" if _is_output_side(err.filename, output) else "read an input"
        raise OutputError(os_error_line(err, action)) from None
    return summaries


def load_or_build(
    run: PreparedRun,
    *,
    vocab_size: int,
    is_main: bool = True,
    should_save: bool = True,
    notice: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every split of ``run`` as a ``datasets.Dataset``: ``train`` and any ``validation`` / ``validation_NAME``.

    A saved ``tokenized_path`` is memory-mapped after its checks (``fastsft.data.store.provenance``):
    another tokenizer or a token id at or above ``vocab_size`` is refused, ignored data options are
    named. A ``tokenized_path`` not yet there is built first by the process that ``should_save``
    (``build_to_disk``: flat memory, written safely), then loaded; without one each split is built in
    memory. Distributed callers let the main process go first, so the others load what it saved.
    ``notice`` gets the summary lines; only the ``is_main`` process speaks.
    """
    args = run.args
    path = args.tokenized_path
    say = notice if is_main else _silent
    if path and Path(path).exists():
        return _load_tokenized(path, say, record_checks=(run, vocab_size))
    if path and should_save:
        summaries = build_to_disk(args, run.spec.name_or_path, path, notice=notice, run=run)
        for name, summary in summaries.items():
            _report(name, summary, say)
        _require_labels(summaries[TRAIN])
        say(f"saved the tokenized dataset to {path}")
        return _load_tokenized(path, say)
    splits = {}
    for name, source in run.splits().items():
        splits[name], summary = build_dataset(args, run.spec.name_or_path, source=source, run=run)
        _report(name, summary, say)
        if name == TRAIN:
            _require_labels(summary)
    return splits


def stream_splits(
    run: PreparedRun, *, vocab_size: int, is_main: bool = True, notice: Callable[[str], None] = print
) -> tuple[RowStream | Any, dict[str, Any]]:
    """``streaming: true``: the training split as a ``RowStream`` (rows made as training reads them,
    in LLaMA-Factory's streamed order) and every other split built now, as ``load_or_build`` does.

    ``val_size`` (a count) is the stream's first samples (LLaMA-Factory's ``take``; training
    ``skip``s them); an ``eval_dataset`` list is streamed shuffled, ``eval_on_each_dataset`` ones
    in file order. An existing ``tokenized_path`` gives its saved splits, the training one to be
    read in order (LLaMA-Factory's ``to_iterable_dataset()``); one to be written is refused.
    """
    args = run.args
    say = notice if is_main else _silent
    if args.tokenized_path:
        if not Path(args.tokenized_path).exists():
            raise ConfigError(
                f"tokenized_path {args.tokenized_path} does not exist: `streaming: true` reads a saved dataset "
                "but does not write one (as in LLaMA-Factory; run `fastsft preprocess` first)"
            )
        splits = load_or_build(run, vocab_size=vocab_size, is_main=is_main, should_save=False, notice=notice)
        return splits.pop(TRAIN), splits
    datasets = run.datasets or resolve_run_datasets(args)
    holdout = int(args.val_size) if args.val_size > 1e-6 else 0
    others: dict[str, Any] = {}
    if holdout:
        others[VALIDATION] = run.stream_spec(take=holdout)
    elif args.eval_dataset and args.eval_on_each_dataset:
        for attr in datasets.eval:
            others[f"{VALIDATION}_{attr.name}"] = StreamSpec(
                [attr], args.dataset_dir, buffer_size=1, seed=args.seed
            )
    elif args.eval_dataset:
        others[VALIDATION] = run.mixed_stream_spec(datasets.eval)
    built = {}
    for name, spec in others.items():
        built[name], summary = _stream_to_dataset(RowStream(run, spec))
        _report(name, summary, say)
    return RowStream(run, run.stream_spec()), built


def _stream_to_dataset(stream: RowStream) -> tuple[Any, Summary]:
    """A (finite) streamed split built whole, in memory, as a ``datasets.Dataset``."""
    import datasets

    columns: dict[str, list[Any]] = {name: [] for name in stream.columns}
    for _, row in stream.rows(0):
        for name in columns:
            columns[name].append(row[name])
    table = pa.table({name: pa.array([v.tolist() for v in values]) for name, values in columns.items()})
    return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=uuid.uuid4().hex), stream.summary


def _silent(message: str) -> None:
    pass


def _report(name: str, summary: Summary, say: Callable[[str], None]) -> None:
    for line in summary.lines():
        say(line if name == TRAIN else f"{name}: {line}")


def _require_labels(summary: Summary) -> None:
    if summary.label_tokens == 0:
        raise ConfigError(
            "the training data has no label tokens, so there is nothing to learn (is cutoff_len too small?)"
        )


def _load_tokenized(
    path: str, say: Callable[[str], None], record_checks: tuple[PreparedRun, int] | None = None
) -> dict[str, Any]:
    """The splits saved at ``path`` (a ``DatasetDict``, or a ``Dataset``: the train split), memory-mapped.

    With ``record_checks`` (a dataset this run did not just build: its run and the model's vocab
    size) it is checked first: the tokenizer fingerprint, the token ids, the data options it ignores.
    """
    from datasets import DatasetDict, load_from_disk

    record = read_provenance(path)
    if record_checks is not None:
        check_tokenizer(record, record_checks[0].fingerprint_for(record), path)
    try:
        loaded = load_from_disk(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load tokenized_path {path}: {str(err).splitlines()[0]}") from None
    splits = dict(loaded) if isinstance(loaded, DatasetDict) else {TRAIN: loaded}
    if TRAIN not in splits:
        raise ConfigError(f"tokenized_path {path} has no train split (it has {', '.join(splits)})")
    if record_checks is not None:
        check_token_ids(splits, record_checks[1], path)
    say(f"loaded {len(splits[TRAIN])} rows from {path}")
    if record_checks is not None:
        if record is None:
            say(
                "it was not made by fastsft: the data options in the config are ignored (as in LLaMA-Factory)"
            )
        elif differing := ignored_options(record, record_checks[0].args):
            say(f"data options ignored, as tokenized_path exists: {'; '.join(differing)}")
    return splits


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
