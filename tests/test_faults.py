"""Fault injection: ``fastsft preprocess`` killed, raced and starved never loses or corrupts data.

Each case runs the real command in a subprocess (``tests/fault_driver.py`` pauses it at a named
point), does something to it, then checks that the previous output is byte-identical and
loadable, and that no temporary folder or lock is left once a later run has been.
"""

from __future__ import annotations

import hashlib
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
DRIVER = Path(__file__).with_name("fault_driver.py")
TINY_DATA = REPO_ROOT / "examples" / "tiny" / "data" / "tiny_sharegpt.json"
TOKENIZER = REPO_ROOT / "examples" / "tiny" / "tokenizer"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}


def argv(output: Path, *extra: str) -> list[str]:
    return [
        "preprocess",
        *("--dataset", str(TINY_DATA), "--tokenizer", str(TOKENIZER), "--template", "qwen"),
        *("--output", str(output), "--preprocessing-batch-size", "50", "--quiet", *extra),
    ]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastsft", *args], env=ENV, capture_output=True, text=True, timeout=120
    )


class Paused:
    """A ``fastsft`` run held at ``point`` until ``resume``."""

    def __init__(self, point: str, tmp_path: Path, args: list[str]) -> None:
        self.ready = tmp_path / f"ready-{point}-{time.monotonic_ns()}"
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), point, str(self.ready), *args],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                _, err = self.process.communicate(timeout=10)
                raise AssertionError(f"the run never reached {point}: {err[-2000:]}")
            time.sleep(0.02)

    def resume(self) -> None:
        self.ready.with_name(self.ready.name + ".go").touch()

    def finish(self) -> tuple[int, str]:
        _, err = self.process.communicate(timeout=120)
        return self.process.returncode, err


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def debris(output: Path) -> list[str]:
    """Temporary folders and lock files beside ``output``."""
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def loadable(output: Path) -> int:
    from datasets import load_from_disk

    return len(load_from_disk(str(output))["train"])


def assert_one_line(err: str, start: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(start), err[-2000:]
    assert "Traceback" not in err, err[-2000:]


@pytest.fixture(scope="module")
def previous_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished output (the first 100 samples), copied by each test that replaces one."""
    output = tmp_path_factory.mktemp("previous") / "out"
    done = run(*argv(output, "--max-samples", "100"))
    assert done.returncode == 0, done.stderr
    return output


@pytest.fixture
def output(tmp_path: Path, previous_output: Path) -> Path:
    target = tmp_path / "work" / "out"
    target.parent.mkdir()
    shutil.copytree(previous_output, target)
    return target


@pytest.mark.slow
@pytest.mark.parametrize("point", ["encode", "save"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_killed_run_keeps_the_previous_output_and_leaves_nothing(
    tmp_path: Path, output: Path, point: str, sig: signal.Signals
) -> None:
    before = snapshot(output)
    paused = Paused(point, tmp_path, argv(output, "--overwrite"))
    paused.process.send_signal(sig)
    code, err = paused.finish()
    assert code == EXIT_CODES[sig], err
    if sig != signal.SIGKILL:
        name = "SIGTERM" if sig == signal.SIGTERM else "interrupted"
        assert_one_line(err, f"fastsft preprocess: {name}; temporary files removed")
        assert debris(output) == []
    else:
        assert [name for name in debris(output) if ".tmp-" in name], "SIGKILL leaves its temporary folder"
    assert snapshot(output) == before
    assert loadable(output) == 100

    again = run(*argv(output, "--overwrite"))  # the next run on the path cleans up after a killed one
    assert again.returncode == 0, again.stderr
    assert ("left by an interrupted run" in again.stderr) == (sig == signal.SIGKILL)
    assert debris(output) == []
    assert loadable(output) == 400


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_the_swap_waits_for_it(tmp_path: Path, output: Path, sig: signal.Signals) -> None:
    paused = Paused("swap", tmp_path, argv(output, "--overwrite"))  # the previous output is aside now
    paused.process.send_signal(sig)
    paused.resume()
    code, err = paused.finish()
    assert code == EXIT_CODES[sig], err
    assert loadable(output) == 400  # the swap finished, then the signal was handled
    assert debris(output) == []
    name = "SIGTERM" if sig == signal.SIGTERM else "interrupted"
    assert_one_line(  # what is on disk: the new output, not "left as they were"
        err,
        f"fastsft preprocess: {name}; the signal came after the new output was in place: {output} is complete",
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.parametrize("point", ["swapped", "cleanup"])
def test_a_signal_or_kill_after_the_swap_keeps_the_new_output_and_the_next_run_clears_the_old(
    tmp_path: Path, output: Path, point: str, sig: signal.Signals
) -> None:
    """The new output is in place and the one it replaced sits in the temporary folder: whatever
    stops the run there, the message says so, and the next run deletes the old copy and never
    puts it back, even when the user has removed the new output meanwhile."""
    paused = Paused(point, tmp_path, argv(output, "--overwrite"))
    paused.process.send_signal(sig)
    paused.resume()
    code, err = paused.finish()
    assert code == EXIT_CODES[sig], err
    assert loadable(output) == 400
    if sig != signal.SIGKILL:
        name = "SIGTERM" if sig == signal.SIGTERM else "interrupted"
        assert_one_line(
            err,
            f"fastsft preprocess: {name}; the signal came after the new output was in place: {output} is complete",
        )
    left = [name for name in debris(output) if ".tmp-" in name]
    assert bool(left) == (sig == signal.SIGKILL or point == "cleanup"), (left, err)
    shutil.rmtree(output)  # the user removes the new output: the old one must not come back
    again = run(*argv(output, "--max-samples", "10"))
    assert again.returncode == 0, again.stderr
    assert "could not be put back" not in again.stderr and "restored" not in again.stderr, again.stderr
    assert ("left by an interrupted run" in again.stderr) == bool(left), again.stderr
    assert loadable(output) == 10
    assert debris(output) == []


@pytest.mark.slow
def test_a_run_killed_during_the_swap_has_the_previous_output_put_back(tmp_path: Path, output: Path) -> None:
    before = snapshot(output)
    paused = Paused("swap", tmp_path, argv(output, "--overwrite"))
    paused.process.kill()
    paused.finish()
    assert not output.exists()  # moved aside into the killed run's temporary folder
    again = run(*argv(output))
    assert "restored the previous" in again.stderr, again.stderr
    assert again.returncode == 2 and "already exists" in again.stderr  # no --overwrite: kept
    assert snapshot(output) == before
    assert debris(output) == []


@pytest.mark.slow
def test_two_runs_to_one_output_never_both_succeed(tmp_path: Path) -> None:
    output = tmp_path / "out"
    first = Paused("encode", tmp_path, argv(output))
    second = run(*argv(output))
    assert second.returncode == 2
    assert_one_line(
        second.stderr, f"fastsft preprocess: error: another run (pid {first.process.pid}) is writing"
    )
    first.resume()
    code, err = first.finish()
    assert code == 0, err
    assert loadable(output) == 400
    assert debris(output) == []


@pytest.mark.slow
def test_a_folder_that_appears_during_the_run_is_never_replaced(tmp_path: Path) -> None:
    output = tmp_path / "out"
    paused = Paused("save", tmp_path, argv(output))
    output.mkdir()
    (output / "precious.txt").write_text("mine", encoding="utf-8")
    paused.resume()
    code, err = paused.finish()
    assert code == 2
    assert_one_line(
        err, f"fastsft preprocess: error: {output} appeared during the run; it was left untouched"
    )
    assert snapshot(output) == {"precious.txt": hashlib.sha256(b"mine").hexdigest()}
    assert debris(output) == []


@pytest.mark.slow
def test_an_output_replaced_during_the_run_is_left_alone(tmp_path: Path, output: Path) -> None:
    paused = Paused("save", tmp_path, argv(output, "--overwrite"))
    output.rename(tmp_path / "moved")
    output.mkdir()
    (output / "precious.txt").write_text("mine", encoding="utf-8")
    paused.resume()
    code, err = paused.finish()
    assert code == 2
    assert_one_line(
        err, f"fastsft preprocess: error: {output} was replaced during the run; it was left untouched"
    )
    assert [p.name for p in output.iterdir()] == ["precious.txt"]
    assert debris(output) == []


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
@pytest.mark.parametrize(
    ("error", "options", "cause"),
    [
        ("enospc", "size=64k", "No space left on device (a run needs about the output's size free"),
        ("erofs", "ro,size=64k", "Read-only file system (choose an --output on a writable file system)"),
    ],
)
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, how: str, error: str, options: str, cause: str, small_filesystem: Any
) -> None:
    folder = tmp_path / "disk"
    with small_filesystem(folder, options if how == "tmpfs" else None) as mounted:
        if how == "tmpfs" and not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root); the injected case covers the error")
        output = folder / "out"
        if how == "tmpfs":
            done = run(*argv(output))
            code, err = done.returncode, done.stderr
        else:
            process = subprocess.run(
                [sys.executable, str(DRIVER), error, str(tmp_path / "unused"), *argv(output)],
                env=ENV,
                capture_output=True,
                text=True,
                timeout=120,
            )
            code, err = process.returncode, process.stderr
        assert code == 2, err
        assert_one_line(err, f"fastsft preprocess: error: cannot write {output}:")
        assert cause in err
        assert list(folder.iterdir()) == []


def test_a_json_array_after_much_leading_whitespace_is_read_as_an_array(tmp_path: Path) -> None:
    """The format is told by the first byte that is not whitespace, however far it is."""
    import json

    rows = json.loads(TINY_DATA.read_text(encoding="utf-8"))[:5]
    data = tmp_path / "spaced.json"
    data.write_text(" " * 5000 + "\n" * 100 + json.dumps(rows), encoding="utf-8")
    output = tmp_path / "out"
    done = run(*[str(data) if arg == str(TINY_DATA) else arg for arg in argv(output)])
    assert done.returncode == 0, done.stderr
    assert loadable(output) == 5


@pytest.mark.slow
def test_export_overwrite_interrupted_after_the_swap_keeps_the_new_model_and_says_so(tmp_path: Path) -> None:
    """``fastsft export --overwrite`` swaps through the same code: Ctrl-C right after the swap
    leaves the new model in place, nothing behind, and the line says so."""
    import yaml

    train_goldens = REPO_ROOT / "tests" / "goldens" / "train"
    merged = tmp_path / "merged"
    merged.mkdir()  # a previous export, as far as --overwrite is concerned
    (merged / "fastsft_output.json").write_text('{"created_by": "fastsft export"}', encoding="utf-8")
    config = tmp_path / "merge.yaml"
    values = {
        "model_name_or_path": str(train_goldens / "tiny_base"),
        "adapter_name_or_path": str(train_goldens / "fastsft_adapters" / "lora_all"),
        "export_dir": str(merged),
    }
    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    paused = Paused("swapped", tmp_path, ["export", str(config), "--overwrite"])
    paused.process.send_signal(signal.SIGINT)
    paused.resume()
    code, err = paused.finish()
    assert code == 130, err
    assert (merged / "model.safetensors").is_file()  # the new export is in place
    assert_one_line(
        err,
        f"fastsft export: interrupted; the signal came after the new output was in place: {merged} is complete",
    )
    assert debris(merged) == []


def test_the_interrupted_line_reports_only_this_commands_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In one process (a notebook, a test), an output an earlier command published is not claimed
    by a later command interrupted before its own swap."""
    from fastsft import cli
    from fastsft.data import pipeline

    assert cli.main(argv(tmp_path / "first", "--max-samples", "5")) == 0

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_dataset_dict", interrupted)
    assert cli.main(argv(tmp_path / "second", "--max-samples", "5")) == 130
    assert_one_line(
        capsys.readouterr().err,
        "fastsft preprocess: interrupted; temporary files removed, existing outputs left as they were",
    )
