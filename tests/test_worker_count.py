"""``preprocessing_num_workers`` (``--workers``) is a ceiling: the processes a run uses, and the line
that says why (``fastsft.data.rows.worker_count``)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from fastsft.cli import main
from fastsft.data.data_args import DataArgs
from fastsft.data.rows import worker_count
from fastsft.data.rows.worker_count import (
    MAX_SAMPLE_BYTES,
    MIN_BYTES_PER_WORKER,
    WorkerChoice,
    choose_workers,
    workers_for_run,
)
from fastsft.data.sources.parser import resolve_datasets

MIB = 2**20


@pytest.mark.parametrize("requested", [None, 1])
def test_one_process_asked_for_is_one_process_without_a_line(requested: int | None) -> None:
    assert choose_workers(requested, 10**12, 64) == WorkerChoice(1, None)


@pytest.mark.parametrize("input_bytes", [0, 900_000, 60 * MIB, 10 * 2**30])
def test_two_cores_always_encode_in_one_process(input_bytes: int) -> None:
    """LLaMA-Factory's examples ask for 16; on 2 cores more processes measured slower at every size."""
    choice = choose_workers(16, input_bytes, 2)
    assert choice.count == 1
    assert choice.line == (
        "encoding in 1 process (preprocessing_num_workers: 16 is a ceiling): on 2 cores one process's "
        "tokenizer threads already use them all, and more processes would only add start-ups"
    )


def test_small_input_on_many_cores_is_one_process() -> None:
    choice = choose_workers(16, MIB, 64)
    assert choice.count == 1
    assert choice.line is not None and "1 MiB of input is too little to pay for starting more" in choice.line


@pytest.mark.parametrize(
    ("requested", "input_bytes", "cores", "expected"),
    [
        (16, 3 * MIN_BYTES_PER_WORKER, 64, 3),  # one per MIN_BYTES_PER_WORKER of input
        (16, 3 * MIN_BYTES_PER_WORKER - 1, 64, 2),
        (16, 100 * MIN_BYTES_PER_WORKER, 8, 8),  # at most one per core
        (4, 100 * MIN_BYTES_PER_WORKER, 64, 4),  # never more than asked
    ],
)
def test_large_inputs_use_up_to_one_process_per_share_and_core(
    requested: int, input_bytes: int, cores: int, expected: int
) -> None:
    choice = choose_workers(requested, input_bytes, cores)
    assert choice.count == expected
    assert choice.line is not None
    assert choice.line.startswith(f"encoding in {expected} processes (preprocessing_num_workers: {requested}")


def test_max_samples_bounds_the_input_the_choice_counts(
    monkeypatch: pytest.MonkeyPatch, test_data_dir: Path
) -> None:
    """A huge file read only for its first samples is not a huge input."""
    monkeypatch.setattr(worker_count, "available_cores", lambda: 64)
    monkeypatch.setattr(worker_count, "input_bytes", lambda attrs, folder: 100 * MIN_BYTES_PER_WORKER)
    attrs = resolve_datasets("sharegpt_chat", str(test_data_dir))
    args = DataArgs(dataset="sharegpt_chat", dataset_dir=str(test_data_dir), preprocessing_num_workers=16)
    assert workers_for_run(args, attrs).count == 16
    limited = DataArgs(
        dataset="sharegpt_chat",
        dataset_dir=str(test_data_dir),
        preprocessing_num_workers=16,
        max_samples=1000,
    )
    assert workers_for_run(limited, attrs).count == max(1, 1000 * MAX_SAMPLE_BYTES // MIN_BYTES_PER_WORKER)


def test_preprocess_says_what_it_chose_and_starts_no_pool(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    test_data_dir: Path,
    fixture_tokenizer_path: Path,
) -> None:
    """``--workers 16`` on a tiny input: one process, no spawned pool, and one line saying so."""

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker pool was started for a tiny input")

    monkeypatch.setattr(multiprocessing, "get_context", no_pool)
    argv = ["preprocess", "--dataset", "sharegpt_chat", "--dataset-dir", str(test_data_dir), "--template"]
    argv += ["qwen", "--tokenizer", str(fixture_tokenizer_path), "--output", str(tmp_path / "out")]
    assert main([*argv, "--workers", "16", "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("encoding in ")]
    assert len(lines) == 1
    assert lines[0].startswith("encoding in 1 process (preprocessing_num_workers: 16 is a ceiling): ")
