"""``streaming: true``: LLaMA-Factory 0.9.5's streamed order, loss parity with it, resume, bad input.

The goldens come from ``scripts/make_streaming_goldens.py`` (LLaMA-Factory's ``run_exp`` with
``streaming: true`` on the committed tiny base; ``datasets`` 4.0.0's own streamed orders).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import TrainerCallback

from fastsft.data.sources.parser import resolve_datasets
from fastsft.data.streaming import SampleStream, StreamSpec
from fastsft.errors import ConfigError, DataError
from fastsft.train.config import load_config
from fastsft.train.streaming import STREAM_STATE
from fastsft.train.workflow import train

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "goldens" / "train"
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("repo_cwd")


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN_DIR / f"{name}.json").read_text(encoding="utf-8"))


def conversation(text: str) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": f"q {text}"}, {"from": "gpt", "value": f"a {text}"}]}


@pytest.mark.parametrize("case", sorted(golden("streaming_orders")))
def test_sample_order_is_datasets(case: str, tmp_path: Path) -> None:
    """``SampleStream`` streams the samples in ``datasets`` 4.0.0's order, pass after pass, and a
    stream restored from its state at any sample continues with the same samples."""
    spec_values = golden("streaming_orders")[case]
    files = []
    for number, length in enumerate(spec_values["lengths"]):
        path = tmp_path / f"part{number}.json"
        path.write_text(json.dumps([conversation(f"{number}-{i}") for i in range(length)]))
        files.append(str(path))
    spec = StreamSpec(
        resolve_datasets(files, str(tmp_path)),
        str(tmp_path),
        buffer_size=spec_values["buffer_size"],
        seed=spec_values["seed"],
        skip=spec_values.get("skip", 0),
        take=spec_values.get("take"),
        interleave=spec_values.get("mix"),
        interleave_probs=spec_values.get("probs"),
    )
    names = [attr.label for attr in spec.attrs]
    for epoch, expected in enumerate(spec_values["passes"]):
        stream = SampleStream(spec, epoch)
        got = [[names.index(attr.label), ref.index] for attr, ref, _ in stream]
        assert got == expected, f"pass {epoch}"
    stream = SampleStream(spec, 1)
    head = [next(stream) for _ in range(len(expected) // 3)]
    state = json.loads(json.dumps(stream.state()))  # as a checkpoint stores it
    rest = [[names.index(attr.label), ref.index] for attr, ref, _ in SampleStream(spec, 1, state)]
    assert [[names.index(a.label), r.index] for a, r, _ in head] + rest == spec_values["passes"][1]


def run_yaml(values: dict[str, Any], tmp_path: Path, *overrides: str, callbacks: list[Any] = ()) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(values), encoding="utf-8")
    output_dir = tmp_path / "output"
    config = load_config(
        config_path, [f"output_dir={output_dir}", "cpu_threads=1", "plot_loss=false", *overrides]
    )
    train(config, callbacks=list(callbacks))
    return output_dir


def logged_steps(output_dir: Path) -> list[dict[str, Any]]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("unpacked", []),
        ("unpacked", ["preprocessing_num_workers=2", "preprocessing_batch_size=16"]),
        ("neat_packed", []),
        ("val_size", []),
        ("interleave_probs", []),
    ],
    ids=["unpacked", "unpacked-2-encoding-processes", "neat_packed", "val_size", "interleave_probs"],
)
def test_losses_match_llamafactory(case: str, overrides: list[str], tmp_path: Path) -> None:
    """Every step's loss, grad norm and learning rate equal ``llamafactory-cli train``'s with
    ``streaming: true`` on the same YAML: the same samples, in the same order, packed alike (also
    with the batches encoded in two processes)."""
    reference = golden(f"streaming_{case}")
    steps = logged_steps(run_yaml(reference["yaml"], tmp_path, *overrides))
    assert [s["step"] for s in steps] == [s["step"] for s in reference["steps"]]
    for mine, theirs in zip(steps, reference["steps"]):
        for key in ("loss", "grad_norm", "learning_rate"):
            assert mine[key] == pytest.approx(theirs[key], abs=TOLERANCE), (key, mine["step"])


class StopBefore(TrainerCallback):
    """Interrupts the run as step ``step`` begins (as Ctrl-C would), after the checkpoints before it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt


class StreamCounts(TrainerCallback):
    """The samples the run's stream read, when training ends."""

    def __init__(self) -> None:
        self.examples_in: int | None = None

    def on_train_end(
        self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any
    ) -> None:
        self.examples_in = train_dataloader.dataset.source.summary.examples_in


def small_stream_yaml(tmp_path: Path, rows: int = 22) -> dict[str, Any]:
    """The unpacked golden's YAML over a small file, so a run passes over it more than once."""
    data = tmp_path / "data.json"
    text = json.loads((REPO_ROOT / "examples/tiny/data/tiny_sharegpt.json").read_text())
    data.write_text(json.dumps(text[:rows]))
    return resumable_stream_yaml(data, max_steps=9, save_steps=3)


def resumable_stream_yaml(data: Path, **changes: Any) -> dict[str, Any]:
    """The unpacked golden's YAML over ``data`` in 6-sample preprocessing batches through an
    8-sample buffer, saving checkpoints that a second run resumes from; then ``changes``."""
    values = dict(golden("streaming_unpacked")["yaml"])
    values.update(
        dataset=str(data),
        buffer_size=8,
        preprocessing_batch_size=6,
        warmup_steps=1,
        overwrite_output_dir=False,  # a second run resumes
    )
    values.update(changes)
    return values


@pytest.mark.parametrize("stop_before", [4, 7])
def test_resume_continues_the_stream(stop_before: int, tmp_path: Path) -> None:
    """A run interrupted after a checkpoint and resumed trains the same losses as one that ran
    through (across passes over the data: 22 rows are 5.5 steps), and its stream starts at the
    checkpoint's position: it reads only the samples from that preprocessing batch on."""
    values = small_stream_yaml(tmp_path)
    whole_counts = StreamCounts()
    whole = logged_steps(run_yaml(values, tmp_path / "whole", callbacks=[whole_counts]))
    with pytest.raises(KeyboardInterrupt):
        run_yaml(values, tmp_path / "cut", callbacks=[StopBefore(stop_before)])
    checkpoint = tmp_path / "cut" / "output" / f"checkpoint-{stop_before - 1}"
    state = json.loads((checkpoint / STREAM_STATE).read_text())
    resumed_counts = StreamCounts()
    resumed = logged_steps(run_yaml(values, tmp_path / "cut", callbacks=[resumed_counts]))
    assert [s["step"] for s in resumed] == list(range(1, 10))
    for mine, theirs in zip(resumed, whole):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6), mine["step"]
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], abs=1e-6), mine["step"]
    # No replay: the resumed stream read the samples from its batch's start only (22 per pass).
    already = state["epoch"] * 22 + state["batch"]["emitted"]
    assert resumed_counts.examples_in == whole_counts.examples_in - already
    assert already > 0


def data_with_bad_row(tmp_path: Path, bad_index: int, rows: int = 30) -> Path:
    """The first ``rows`` tiny_sharegpt conversations with row ``bad_index``'s second message's value an int."""
    text = json.loads((REPO_ROOT / "examples/tiny/data/tiny_sharegpt.json").read_text())[:rows]
    text[bad_index]["conversations"][1]["value"] = 5
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(text))
    return path


def test_malformed_row_mid_stream_stops_the_run_keeping_checkpoints(tmp_path: Path) -> None:
    """A malformed row met mid-stream stops the run with one line naming the dataset, the row and
    the field; the checkpoints saved before it stay."""
    values = small_stream_yaml(tmp_path)
    values.update(dataset=str(data_with_bad_row(tmp_path, 27)), save_steps=2)
    with pytest.raises(DataError) as caught:
        run_yaml(values, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "bad.json" in message and "sample #27" in message and "conversations[1].value" in message
    assert (tmp_path / "output" / "checkpoint-2").is_dir()


def test_malformed_row_mid_stream_is_skipped_and_counted(tmp_path: Path, capsys: Any) -> None:
    values = small_stream_yaml(tmp_path)
    values.update(dataset=str(data_with_bad_row(tmp_path, 27)), skip_malformed=True)
    run_yaml(values, tmp_path)
    out = capsys.readouterr().out
    assert "streamed: malformed, skipped: 1 (first: dataset" in out
    assert "sample #27" in out


def test_inspect_streaming_shows_the_streamed_order(capsys: Any) -> None:
    """``fastsft inspect --streaming`` shows the samples in the order the streamed run reads them."""
    from fastsft.cli import main

    flags = ["--dataset", "tiny_sharegpt", "--dataset-dir", "examples/tiny/data", "--template", "qwen"]
    flags += ["--streaming", "--buffer-size", "8", "--seed", "42", "-n", "4"]
    assert main(["inspect", *flags, "--tokenizer", str(GOLDEN_DIR / "tiny_base")]) == 0
    headings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("== ")]
    attrs = resolve_datasets("tiny_sharegpt", "examples/tiny/data")
    spec = StreamSpec(attrs, "examples/tiny/data", buffer_size=8, seed=42)
    expected = [ref.index for _, ref, _ in itertools.islice(SampleStream(spec, 0), 4)]
    assert [int(h.split("sample #")[1].split(":")[0]) for h in headings] == expected
    assert expected != [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["max_steps=-1"], "`streaming: true` needs `max_steps`"),
        (["max_samples=10"], "`max_samples` is incompatible with `streaming`"),
        (["val_size=0.1"], "needs an integer val_size"),
        (["packing=true", "packing_strategy=bfd"], "packs the whole dataset"),
        (["max_tokens_per_batch=100"], "does not work with `streaming: true`"),
    ],
)
def test_llamafactory_streaming_rules(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_yaml(golden("streaming_unpacked")["yaml"], tmp_path, *overrides)


def test_saved_tokenized_path_is_streamed_in_order_and_resumes(tmp_path: Path) -> None:
    """An existing ``tokenized_path`` is read in its saved order (LLaMA-Factory's
    ``to_iterable_dataset()``), and a run on it resumes at the checkpoint's row."""
    from fastsft.cli import main

    saved = tmp_path / "tokenized"
    flags = ["--dataset", "tiny_sharegpt", "--dataset-dir", "examples/tiny/data", "--template", "qwen"]
    flags += ["--cutoff-len", "128", "--max-samples", "40", "--quiet", "--output", str(saved)]
    assert main(["preprocess", *flags, "--tokenizer", str(GOLDEN_DIR / "tiny_base")]) == 0
    values = small_stream_yaml(tmp_path)
    values.update(tokenized_path=str(saved))
    whole = logged_steps(run_yaml(values, tmp_path / "whole"))
    with pytest.raises(KeyboardInterrupt):
        run_yaml(values, tmp_path / "cut", callbacks=[StopBefore(5)])
    state = json.loads((tmp_path / "cut" / "output" / "checkpoint-3" / STREAM_STATE).read_text())
    assert state == {"epoch": 0, "row": 12, "world_size": 1}
    resumed = logged_steps(run_yaml(values, tmp_path / "cut"))
    assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in whole], abs=1e-6)


def numbered_stream_yaml(tmp_path: Path, samples: int = 48, **changes: Any) -> dict[str, Any]:
    """The unpacked golden's YAML over ``samples`` conversations ``q i`` / ``a i``: 6-sample
    preprocessing batches, so two processes take 4 batches (24 rows, 12 steps of 2) per pass each."""
    data = tmp_path / "numbered.json"
    data.write_text(json.dumps([conversation(str(i)) for i in range(samples)]))
    return resumable_stream_yaml(data, gradient_accumulation_steps=1, max_steps=14, save_steps=5, **changes)


def stream_of(values: dict[str, Any], tmp_path: Path) -> Any:
    """The run's ``RowStream`` for ``values``, as ``fastsft train`` makes it."""
    from fastsft.data.pipeline import prepare_run
    from fastsft.data.streaming import RowStream
    from fastsft.train.model import load_tokenizer

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(values), encoding="utf-8")
    config = load_config(config_path, [f"output_dir={tmp_path / 'output'}"])
    run = prepare_run(config.data, load_tokenizer(config))
    return RowStream(run, run.stream_spec())


def as_lists(row: dict[str, Any]) -> dict[str, list[int]]:
    return {name: values.tolist() for name, values in row.items()}


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "neat_packed"])
def test_processes_share_the_stream_by_preprocessing_batch(
    packed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process ``r`` of 2 makes the rows of preprocessing batches ``r``, ``r + 2``, ...: exactly the
    rows the one-process stream makes of them (packing included: it packs within a batch),
    encoding only those batches' samples; a process resumed mid-share continues its share."""
    import fastsft.data.streaming as data_streaming

    encoded: list[list[int]] = []
    original = data_streaming.encoded_batches

    def recording(encoder: Any, batches: Any, summary: Any, workers: int) -> Any:
        encoded.append([])
        recorded = (encoded[-1].extend(ref.index for ref in b.refs) or b for b in batches)
        return original(encoder, recorded, summary, workers)

    monkeypatch.setattr(data_streaming, "encoded_batches", recording)
    values = numbered_stream_yaml(tmp_path, samples=40, packing=packed, neat_packing=packed)
    whole_stream = stream_of(values, tmp_path)
    whole = [as_lists(row) for _, row in whole_stream.rows(0)]
    batch_of = [whole_stream.position(0, n)["batch_number"] for n in range(len(whole))]
    assert max(batch_of) == 6  # 40 samples: 7 batches, the last one short
    shares = []
    for rank in (0, 1):
        stream = stream_of(values, tmp_path)
        share = [as_lists(row) for _, row in stream.rows(0, rank=rank, world_size=2)]
        assert share == [row for row, batch in zip(whole, batch_of) if batch % 2 == rank]
        assert stream.summary.examples_in == sum(6 if b < 6 else 4 for b in range(rank, 7, 2))
        shares.append(share)
        if rank == 1:  # resumed mid-share, from a checkpoint's position
            middle = len(share) // 2 + 1
            position = json.loads(json.dumps(stream.position(0, middle)))
            resumed = stream_of(values, tmp_path)
            rest = [as_lists(row) for _, row in resumed.rows(0, position, rank=1, world_size=2)]
            assert rest == share[middle:]
    whole_encoded, *rank_encoded, _ = encoded
    assert sorted(rank_encoded[0] + rank_encoded[1]) == sorted(whole_encoded) == list(range(40))
    assert not set(rank_encoded[0]) & set(rank_encoded[1])
    assert len(shares[0]) + len(shares[1]) == len(whole) and shares[0] and shares[1]


def torchrun_streamed(config_path: Path, record_dir: Path, *overrides: str, stop_before: int = 0) -> Any:
    """``tests/streaming_ranks_driver.py`` in 2 gloo processes; each process's record, by rank."""
    import os
    import subprocess
    import sys

    from fastsft.train.launch import free_port

    record_dir.mkdir(parents=True, exist_ok=True)
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_port", str(free_port()), str(REPO_ROOT / "tests" / "streaming_ranks_driver.py")),
        *(str(config_path), str(record_dir), str(stop_before), "cpu_threads=1", "plot_loss=false"),
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    said = done.stdout[-3000:] + done.stderr[-3000:]
    if stop_before:  # both processes interrupted as that step began
        assert done.returncode != 0 and done.stderr.count("KeyboardInterrupt") >= 2, said
    else:
        assert done.returncode == 0, said
    records = [json.loads((record_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return records, done.stdout


def trained_ids(steps: list[dict[str, Any]], tokenizer: Any) -> list[int]:
    """The sample numbers of the rows trained in ``steps`` (each row one ``q i`` / ``a i`` conversation)."""
    ids = []
    for step in steps:
        for row in step["rows"]:
            [number] = set(re.findall(r"[qa] (\d+)", tokenizer.decode(row)))
            ids.append(int(number))
    return ids


def test_two_processes_train_each_sample_once_per_pass_and_resume_exactly(tmp_path: Path) -> None:
    """``torchrun`` with 2 processes (gloo): each process encodes only its own preprocessing
    batches, every sample is trained exactly once per pass across the two, each process runs
    into the next pass on its own, and a run interrupted after a checkpoint and resumed trains
    the same losses and rows as the one that ran through, encoding from the checkpoint's batch on.
    A resume with one process is refused, naming both counts."""
    from transformers import AutoTokenizer

    values = numbered_stream_yaml(tmp_path)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(values), encoding="utf-8")
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole, out = torchrun_streamed(config_path, tmp_path / "whole_record", f"output_dir={whole_dir}")
    assert "streamed, process 1 of 2: examples in: " in out
    tokenizer = AutoTokenizer.from_pretrained(GOLDEN_DIR / "tiny_base")
    first_pass = []
    for record in whole:
        assert len(record["trained"]) == 14
        assert [step["position"] for step in record["trained"][11:13]] == [[0, 24], [1, 2]]
        ids = trained_ids(record["trained"][:12], tokenizer)
        assert sorted(ids) == sorted(record["encoded"][0]) and len(ids) == 24  # its own share, once
        first_pass.append(ids)
    assert sorted(first_pass[0] + first_pass[1]) == list(range(48))  # every sample exactly once
    assert whole[0]["weights"] == whole[1]["weights"]  # one model: DDP averaged the two shares' gradients

    torchrun_streamed(config_path, tmp_path / "cut_record", f"output_dir={cut_dir}", stop_before=7)
    assert (cut_dir / "checkpoint-5" / "fastsft_stream_state_rank1.json").is_file()
    resumed, _ = torchrun_streamed(config_path, tmp_path / "resumed_record", f"output_dir={cut_dir}")
    mine, theirs = logged_steps(cut_dir), logged_steps(whole_dir)
    assert [s["step"] for s in mine] == list(range(1, 15))
    for ours, expected in zip(mine, theirs, strict=True):
        assert ours["loss"] == pytest.approx(expected["loss"], abs=1e-6), ours["step"]
        assert ours["grad_norm"] == pytest.approx(expected["grad_norm"], abs=1e-6), ours["step"]
    for after, before in zip(resumed, whole):
        assert after["trained"] == before["trained"][5:]
        # Step 5 ended at row 10 of the share, in its second batch: encoding resumed there.
        assert after["encoded"][0] == before["encoded"][0][6:]

    with pytest.raises(ConfigError, match="trained by 2 processes and this run has 1 process"):
        run_yaml(values, tmp_path / "one", f"resume_from_checkpoint={cut_dir / 'checkpoint-5'}")


def test_a_process_without_rows_or_another_process_count_is_refused(tmp_path: Path) -> None:
    """A process whose share of a pass is empty stops the run in one line (instead of waiting for
    rows forever); a one-process checkpoint resumed by two processes is refused, naming both counts."""
    from fastsft.train.streaming import StreamedTrainSet

    one_batch = stream_of(numbered_stream_yaml(tmp_path, samples=4), tmp_path)
    with pytest.raises(
        ConfigError, match=r"process 1 of 2 has no rows to train in pass 0: .* lower preprocessing_batch_size"
    ):
        next(iter(StreamedTrainSet(one_batch, rank=1, world_size=2)))
    saved_row = {"input_ids": [1, 2]}
    with pytest.raises(ConfigError, match="the saved split has 1 rows, fewer than the processes"):
        next(iter(StreamedTrainSet([saved_row], rank=1, world_size=2)))
    (tmp_path / STREAM_STATE).write_text(json.dumps({"epoch": 0, "row": 4, "world_size": 1}))
    with pytest.raises(
        ConfigError, match=r"trained by 1 process and this run has 2 processes; .* resume with 1 process$"
    ):
        StreamedTrainSet([saved_row], rank=0, world_size=2).resume(str(tmp_path))
