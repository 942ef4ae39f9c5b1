"""Fault injection: ``fastsft train`` killed, raced, starved, misled or resumed from damage never loses
or silently alters work (issue 23).

Each killing case runs the real command in a subprocess (``tests/train_fault_driver.py`` pauses it
at a named point), does something to it, checks that what was there before is byte-identical,
then reruns and checks that the losses equal an uninterrupted run's. The runs are tiny (12 steps
of the README model, one thread).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("train_fault_driver.py")
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}
STEPS = 12


def argv(output: Path, *extra: str) -> list[str]:
    return [
        "train",
        "examples/tiny_sft.yaml",
        f"output_dir={output}",
        f"max_steps={STEPS}",
        *(
            "save_steps=4",
            "logging_steps=1",
            "plot_loss=false",
            "cpu_threads=1",
            "overwrite_output_dir=false",
        ),
        *("val_size=0", "eval_strategy=no", "save_total_limit=2"),
        *extra,
    ]


def run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastsft", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


class Paused:
    """A ``fastsft train`` run held at ``point`` until ``resume``."""

    def __init__(self, point: str, tmp_path: Path, args: list[str], wait: bool = True) -> None:
        self.ready = tmp_path / f"ready-{point}-{time.monotonic_ns()}"
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), point, str(self.ready), *args],
            cwd=REPO_ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300
        while wait and not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                _, err = self.process.communicate(timeout=10)
                raise AssertionError(f"the run never reached {point}: {err[-3000:]}")
            time.sleep(0.05)

    def resume(self) -> None:
        self.ready.with_name(self.ready.name + ".go").touch()

    def finish(self) -> tuple[int, str]:
        _, err = self.process.communicate(timeout=300)
        return self.process.returncode, err


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` (except names in ``skip``), by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in skip
    }


def losses(output: Path) -> dict[int, float]:
    lines = (output / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return {entry["current_steps"]: entry["loss"] for entry in map(json.loads, lines) if "loss" in entry}


def last_line(err: str) -> str:
    """The command's own last line (a progress bar may be redrawn after it as the process exits)."""
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith("fastsft ")]
    assert lines and "Traceback" not in err, err[-3000:]
    return lines[-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run: the losses and final model every recovered run must reproduce."""
    output = tmp_path_factory.mktemp("reference") / "out"
    done = run(*argv(output))
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def final_model(output: Path) -> dict[str, str]:
    return snapshot(output, skip=())  # filtered by the caller


MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json")


def assert_same_training(output: Path, reference: Path) -> None:
    assert losses(output) == losses(reference)
    for name in MODEL_FILES:
        if (reference / name).exists():
            assert (output / name).read_bytes() == (reference / name).read_bytes(), name


def partial_folders(output: Path) -> list[str]:
    return sorted(p.name for p in output.iterdir() if p.name.startswith("."))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "sig"),
    [
        ("checkpoint-write", signal.SIGKILL),
        ("checkpoint-write", signal.SIGTERM),
        ("checkpoint-publish", signal.SIGINT),
        ("checkpoint-publish", signal.SIGKILL),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_a_run_killed_during_a_checkpoint_save_resumes_from_the_last_complete_one(
    tmp_path: Path, reference: Path, point: str, sig: signal.Signals
) -> None:
    """Finding 1: an interrupted save never blocks a resume, and the message names a complete checkpoint."""
    output = tmp_path / "out"
    paused = Paused(point, tmp_path, argv(output))  # the second save: checkpoint-8
    before = snapshot(output / "checkpoint-4")
    paused.process.send_signal(sig)
    code, err = paused.finish()
    assert code == EXIT_CODES[sig], err[-3000:]
    assert not (output / "checkpoint-8").exists()
    assert snapshot(output / "checkpoint-4") == before
    if sig != signal.SIGKILL:
        name = "SIGTERM" if sig == signal.SIGTERM else "interrupted"
        assert last_line(err) == (
            f"fastsft train: {name}; last checkpoint: {output / 'checkpoint-4'} "
            "(rerun with resume_from_checkpoint=true to continue)"
        )
        assert partial_folders(output) == []  # a signal removes the unfinished save

    again = run(*argv(output))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {output / 'checkpoint-4'}" in again.stdout
    assert_same_training(output, reference)
    assert partial_folders(output) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "sig"),
    [("final-write", signal.SIGTERM), ("final-publish", signal.SIGKILL)],
    ids=lambda v: getattr(v, "name", v),
)
def test_a_run_killed_during_the_final_save_publishes_without_training_again(
    tmp_path: Path, reference: Path, point: str, sig: signal.Signals
) -> None:
    """Finding 2: a run whose last checkpoint is its last step is never trained past ``max_steps``."""
    output = tmp_path / "out"
    paused = Paused(point, tmp_path, argv(output))
    checkpoints_before = snapshot(output, skip=()).keys()
    last = snapshot(output / f"checkpoint-{STEPS}")
    paused.process.send_signal(sig)
    code, _ = paused.finish()
    assert code == EXIT_CODES[sig]
    assert snapshot(output / f"checkpoint-{STEPS}") == last
    assert checkpoints_before

    again = run(*argv(output))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "publishing the final model from it (nothing to train)" in again.stdout
    assert json.loads((output / "metrics.json").read_text())["global_step"] == STEPS
    assert_same_training(output, reference)
    assert json.loads((output / "fastsft_train.json").read_text())["finished"] is True


@pytest.mark.slow
def test_a_lora_run_killed_during_the_final_save_publishes_its_adapter(tmp_path: Path) -> None:
    """The same for LoRA: the last checkpoint holds the adapter (no config.json); it is published."""
    output = tmp_path / "out"
    lora = ("finetuning_type=lora", "max_steps=4", "save_steps=4")
    paused = Paused("final-write", tmp_path, argv(output, *lora))
    paused.process.send_signal(signal.SIGTERM)
    code, _ = paused.finish()
    assert code == EXIT_CODES[signal.SIGTERM]
    again = run(*argv(output, *lora))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "publishing the final model from it (nothing to train)" in again.stdout
    published = (output / "adapter_model.safetensors").read_bytes()
    assert published == (output / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
    assert not (output / "model.safetensors").exists()


@pytest.mark.slow
def test_a_finished_run_is_not_trained_again(tmp_path: Path, reference: Path) -> None:
    """Finding 2: rerunning a finished run trains nothing, says so, exits 0, changes nothing."""
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    before = snapshot(output)
    again = run(*argv(output))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{output} already holds this run, finished at step {STEPS}; nothing to train" in again.stdout
    assert snapshot(output) == before


def test_a_finished_run_rerun_with_other_settings_is_refused_not_skipped(
    tmp_path: Path, reference: Path
) -> None:
    """A finished run rerun with another method is neither skipped as done nor republished as its model."""
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    before = snapshot(output)
    other = run(*argv(output, "finetuning_type=lora"))
    assert other.returncode == 2, other.stderr[-3000:]
    assert "holds a finished run made with other settings (finetuning_type: full -> lora)" in last_line(
        other.stderr
    )
    assert snapshot(output) == before


def test_overwrite_with_lora_removes_the_previous_full_model(tmp_path: Path, reference: Path) -> None:
    """overwrite_output_dir deletes the final files the previous run published: no full model is left
    beside the new adapter, and the marker lists what this run published."""
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    lora = run(
        *argv(output, "finetuning_type=lora", "overwrite_output_dir=true", "max_steps=2", "save_steps=2")
    )
    assert lora.returncode == 0, lora.stderr[-3000:]
    assert (output / "adapter_model.safetensors").is_file()
    assert not (output / "model.safetensors").exists()
    marker = json.loads((output / "fastsft_train.json").read_text(encoding="utf-8"))
    assert "adapter_model.safetensors" in marker["published"] and marker["finished"] is True


@pytest.mark.slow
def test_two_runs_into_one_output_dir_never_both_proceed(tmp_path: Path, reference: Path) -> None:
    """Finding 3: the second run fails at once naming the first's pid; the first is unharmed."""
    output = tmp_path / "out"
    first = Paused("checkpoint-write", tmp_path, argv(output))
    second = run(*argv(output, "overwrite_output_dir=true"))
    assert second.returncode == 2
    assert last_line(second.stderr).startswith(
        f"fastsft train: error: another run (pid {first.process.pid}) is writing {output}; wait for it"
    )
    first.resume()
    code, err = first.finish()
    assert code == 0, err[-3000:]
    assert_same_training(output, reference)


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    """Finding 5: NaN at step 7 stops there, non-zero, no final model, checkpoint-4 kept."""
    output = tmp_path / "out"
    paused = Paused("nan-loss", tmp_path, argv(output), wait=False)
    code, err = paused.finish()
    assert code == 2, err[-3000:]
    assert last_line(err).startswith("fastsft train: error: step 7: the loss is nan; likely cause:")
    assert [p.name for p in output.glob("checkpoint-*")] == ["checkpoint-4"]
    assert not (output / "model.safetensors").exists()
    assert json.loads((output / "fastsft_train.json").read_text())["finished"] is False


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_complete_checkpoints(
    tmp_path: Path, reference: Path, small_filesystem: Any
) -> None:
    """Finding 6: ENOSPC during a checkpoint save is one line with the hint; what was saved is kept."""
    folder = tmp_path / "disk"
    checkpoint_bytes = sum(
        p.stat().st_size for p in (reference / f"checkpoint-{STEPS}").rglob("*") if p.is_file()
    )
    assert checkpoint_bytes > 0
    with small_filesystem(folder, f"size={int(checkpoint_bytes * 1.6) // 1024}k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        output = folder / "out"
        done = run(*argv(output))
        assert done.returncode == 2, done.stderr[-3000:]
        line = last_line(done.stderr)
        assert line.startswith(f"fastsft train: error: cannot save {output / 'checkpoint-8'}:"), line
        assert "No space left on device" in line and "the previous checkpoints are kept" in line, line
        assert [p.name for p in output.glob("checkpoint-*")] == ["checkpoint-4"]
        assert partial_folders(output) == []


def damage_copy(reference: Path, output: Path, damage: str, file: str) -> Path:
    """A copy of the reference run stopped after its last checkpoint, with ``file`` of that checkpoint
    deleted or cut in half; returns the damaged file's path."""
    shutil.copytree(reference, output)
    (output / "fastsft_train.json").unlink()
    target = output / f"checkpoint-{STEPS}" / file
    if damage == "delete":
        target.unlink()
    else:
        with open(target, "r+b") as handle:
            handle.truncate(target.stat().st_size // 2)
    return target


@pytest.mark.slow
def test_a_checkpoint_missing_its_scheduler_is_refused_by_the_command(
    tmp_path: Path, reference: Path
) -> None:
    """Findings 5, 6: the schedule never restarts silently; one line names the file and the newest
    intact checkpoint, and nothing changes."""
    output = tmp_path / "out"
    target = damage_copy(reference, output, "delete", "scheduler.pt")
    before = snapshot(output)
    done = run(*argv(output, "max_steps=16"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert last_line(done.stderr) == (
        f"fastsft train: error: cannot resume from {target.parent}: {target} is missing; the newest intact "
        f"checkpoint is {output / 'checkpoint-8'} (resume_from_checkpoint={output / 'checkpoint-8'} continues from it)"
    )
    assert snapshot(output) == before


@pytest.mark.parametrize(
    ("damage", "file", "problem"),
    [
        ("truncate", "optimizer.pt", "is damaged"),
        ("truncate", "model.safetensors", "is damaged"),
        ("truncate", "trainer_state.json", "is damaged"),
        ("delete", "rng_state.pth", "is missing"),
        ("delete", "optimizer.pt", "is missing"),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_newest_intact_one(
    tmp_path: Path, reference: Path, damage: str, file: str, problem: str
) -> None:
    """Findings 1, 5, 6: what resume would have crashed on (or silently restarted) is named."""
    from fastsft.train.checkpoints import CheckpointError, select_resume

    output = tmp_path / "out"
    target = damage_copy(reference, output, damage, file)
    with pytest.raises(CheckpointError) as caught:
        select_resume(output)
    message = str(caught.value)
    assert message.startswith(f"cannot resume from {target.parent}: {target} {problem}"), message
    assert message.endswith(
        f"the newest intact checkpoint is {output / 'checkpoint-8'} "
        f"(resume_from_checkpoint={output / 'checkpoint-8'} continues from it)"
    )


def test_resume_from_an_empty_folder_or_a_model_folder_is_one_line(tmp_path: Path) -> None:
    """Finding 6: ``resume_from_checkpoint`` at something that is not a checkpoint."""
    from fastsft.train.checkpoints import CheckpointError, select_resume

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"trainer_state.json is missing \(not a checkpoint folder\?\)"):
        select_resume(tmp_path, tmp_path / "empty")
    model = REPO_ROOT / "examples" / "tiny" / "model"
    with pytest.raises(CheckpointError, match=r"cannot resume from .*model: .*trainer_state.json is missing"):
        select_resume(tmp_path, model)


DANGEROUS = {
    "the tokenizer folder": ("examples/tiny/tokenizer", "is an input"),
    "the model folder": ("examples/tiny/model", "is an input"),
    "dataset_dir": ("examples/tiny/data", "is an input"),
    "a folder holding the data": ("examples/tiny", "holds an input"),
    "the working directory": (".", "is the working directory"),
}


@pytest.mark.parametrize("where", list(DANGEROUS))
def test_an_input_folder_or_the_working_directory_is_refused_before_any_work(
    where: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 4: training into an input folder (even with overwrite_output_dir) changes nothing."""
    from fastsft.cli import main

    monkeypatch.chdir(REPO_ROOT)
    folder, reason = DANGEROUS[where]
    before = snapshot(REPO_ROOT / "examples" / "tiny")
    code = main(["train", "examples/tiny_sft.yaml", f"output_dir={folder}", "overwrite_output_dir=true"])
    assert code == 2
    assert last_line(capsys.readouterr().err).startswith(
        f"fastsft train: error: output_dir {folder} {reason}"
    )
    assert snapshot(REPO_ROOT / "examples" / "tiny") == before


def test_output_dir_equal_to_tokenized_path_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 4: a later ``preprocess --overwrite`` of the tokenized_path would delete the model."""
    from fastsft.cli import main

    monkeypatch.chdir(REPO_ROOT)
    shared = tmp_path / "tokenized"
    code = main(["train", "examples/tiny_sft.yaml", f"output_dir={shared}", f"tokenized_path={shared}"])
    assert code == 2
    assert last_line(capsys.readouterr().err) == (
        f"fastsft train: error: output_dir {shared} is an input ({shared}); choose a new folder"
    )


def test_overwrite_deletes_only_what_fastsft_wrote(tmp_path: Path) -> None:
    """Finding 4: a user's ``checkpoint-best-keep`` survives; a foreign ``checkpoint-3`` or a folder
    fastsft never trained into is refused, not deleted; the message says what would be replaced."""
    from fastsft.errors import ConfigError
    from fastsft.train.checkpoints import mark_checkpoint
    from fastsft.train.output_dir import clear_previous_run, mark_run

    output = tmp_path / "out"
    (output / "checkpoint-best-keep").mkdir(parents=True)
    (output / "checkpoint-best-keep" / "mine.txt").write_text("mine")
    with pytest.raises(
        ConfigError, match=r"holds files fastsft did not write .* overwrite_output_dir would replace"
    ):
        clear_previous_run(output, print)
    mark_run(output, finished=True)
    (output / "checkpoint-3").mkdir()
    with pytest.raises(ConfigError, match="holds checkpoint-3, which fastsft did not write"):
        clear_previous_run(output, print)
    mark_checkpoint(output / "checkpoint-3", 3, model_only=True)
    clear_previous_run(output, print)
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint-best-keep"]
    assert (output / "checkpoint-best-keep" / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learning_rate=-1e-3", "`learning_rate` must be a positive finite number, got -0.001"),
        ("learning_rate=nan", "`learning_rate` must be a positive finite number, got nan"),
        ("learning_rate=inf", "`learning_rate` must be a positive finite number, got inf"),
        ("seed=-1", "`seed` must be at least 0, got -1"),
        ("max_steps=0", "`max_steps` must be at least 1 (or -1: from num_train_epochs), got 0"),
    ],
)
def test_invalid_values_are_one_line_config_errors(override: str, message: str) -> None:
    """Findings 5, 6: values that train garbage (or crash) are refused up front."""
    from fastsft.errors import ConfigError
    from fastsft.train.config import load_config

    with pytest.raises(ConfigError) as caught:
        load_config(REPO_ROOT / "examples" / "tiny_sft.yaml", [override])
    assert str(caught.value) == message


def test_a_torn_last_log_line_is_dropped_and_a_torn_middle_line_named(tmp_path: Path) -> None:
    """Finding 6: a run killed while appending to trainer_log.jsonl leaves half a line."""
    from types import SimpleNamespace

    from fastsft.errors import ConfigError
    from fastsft.train.logs import JsonlLogCallback

    log = tmp_path / "trainer_log.jsonl"
    log.write_text(
        '{"current_steps": 1, "loss": 2.0}\n{"current_steps": 2, "loss": 1.5}\n{"current_steps": 3, "lo',
        encoding="utf-8",
    )
    state = SimpleNamespace(is_world_process_zero=True, global_step=2)
    JsonlLogCallback(log).on_train_begin(None, state, None)  # type: ignore[arg-type]
    assert (
        log.read_text(encoding="utf-8")
        == '{"current_steps": 1, "loss": 2.0}\n{"current_steps": 2, "loss": 1.5}\n'
    )
    log.write_text('{"current_steps": 1, "lo\n{"current_steps": 2, "loss": 1.5}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"trainer_log.jsonl line 1 is not JSON"):
        JsonlLogCallback(log).on_train_begin(None, state, None)  # type: ignore[arg-type]


def test_deeply_nested_json_is_a_located_data_error(tmp_path: Path) -> None:
    """Finding 6: 200k-deep nesting was a RecursionError traceback (preprocess and train)."""
    from fastsft.data.sources.parser import _iter_json_file
    from fastsft.errors import DataError

    depth = 200_000
    for name, text in [
        ("array.json", "[" + "[" * depth + "]" * depth + "]"),
        ("lines.jsonl", '{"a": 1}\n{"conversations": ' + "[" * depth + "]" * depth + "}\n"),
    ]:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match="nested too deeply") as caught:
            list(_iter_json_file(str(path), name))
        if name == "lines.jsonl":
            assert "line 2" in str(caught.value)


def test_the_thread_policy_ignores_a_stale_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 7: a load average still counting the previous run made the policy choose 1 thread."""
    from fastsft.train import environment

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(environment, "busy_cores", lambda cores, interval=0.25: 0)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert environment.idle_cores() == len(os.sched_getaffinity(0))


def test_busy_cores_sees_a_busy_loop() -> None:
    """The measurement behind the policy: a core held by a spinning process counts as busy."""
    from fastsft.train.environment import busy_cores

    cores = sorted(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(cores, interval=0.5) >= 1
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.slow
def test_a_double_ctrl_c_still_exits_130_with_one_line(tmp_path: Path) -> None:
    """Finding 6: a second Ctrl-C during the shutdown exited -2 with a traceback."""
    output = tmp_path / "out"
    paused = Paused("checkpoint-write", tmp_path, argv(output))
    paused.process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    paused.process.send_signal(signal.SIGINT)
    code, err = paused.finish()
    assert code == 130, err[-3000:]
    assert "last checkpoint:" in last_line(err)
