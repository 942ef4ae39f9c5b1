"""``benchmarks/gpu_throughput.py`` runs as written: its ``--dry-run`` (CPU, tiny model) in CI, so
the GPU benchmark cannot rot between the sessions that lend a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_throughput.py"
# The script as a user runs it, with the compiled core made unimportable (a lent machine has none
# built for its Python): collation must go through the Python kernels.
WITHOUT_CORE = (
    "import runpy, sys; sys.modules['fastsft._core'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.slow
def test_dry_run_trains_every_mode_and_precision_without_the_compiled_core(tmp_path: Path) -> None:
    output = tmp_path / "gpu.json"
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_CORE, str(SCRIPT), "--dry-run", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(output.read_text(encoding="utf-8"))
    results = report["results"]
    assert [(r["mode"], r["precision"]) for r in results] == [
        (mode, precision)
        for precision in ("fp32_autocast", "bf16")
        for mode in ("padded_sdpa", "lf_neat_packing_dense_mask", "fastsft_varlen")
    ]
    assert all(r["error"] is None for r in results), [r["error"] for r in results]
    assert len({r["non_pad_tokens"] for r in results}) == 1  # every run trains the same tokens
    for r in results:
        assert r["tokens_per_second"] > 0 and r["loss_setup"].startswith("chunked loss")
        assert r["first_step_loss_matches_padded"] is (None if r["mode"] == "padded_sdpa" else True)
        expected = (
            {"sdpa_per_sequence": "no varlen kernel on cpu"}
            if r["mode"] == "fastsft_varlen"
            else {"sdpa": "transformers' attn_implementation"}
        )
        assert r["kernels"] == expected
    assert results[2]["padding_fraction"] == 0.0 < results[0]["padding_fraction"]
    assert report["args"]["gradient_checkpointing"] is True  # fastsft train's default
    assert "fastsft_varlen              fp32_autocast" in run.stdout and "(= padded)" in run.stdout


def load_script(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_a_failing_run_is_recorded_and_the_json_is_written_after_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = load_script(monkeypatch)

    def broken(samples: list, cutoff_len: int) -> list:
        raise RuntimeError("no kernels here\nsecond line")

    written: list[list[str | None]] = []
    real_write = script.write_json

    def recording_write(path: Path, report: dict) -> None:
        written.append([r["error"] for r in report["results"]])
        real_write(path, report)

    monkeypatch.setattr(script, "varlen_batches", broken)
    monkeypatch.setattr(script, "write_json", recording_write)
    output = tmp_path / "gpu.json"
    argv = [
        "--dry-run",
        "--precisions",
        "bf16",
        "--modes",
        "fastsft_varlen,padded_sdpa",
        "--json",
        str(output),
    ]
    results = script.main(argv)
    assert [r.mode for r in results] == ["padded_sdpa", "fastsft_varlen"]
    assert written == [[None], [None, "RuntimeError: no kernels here"]]
    assert (
        json.loads(output.read_text(encoding="utf-8"))["results"][1]["error"]
        == "RuntimeError: no kernels here"
    )


@pytest.mark.parametrize(
    ("name", "sm_count", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 132, 989.0),
        ("NVIDIA H100 PCIe", 114, 756.0),
        ("NVIDIA H100 NVL", 132, 835.0),
        ("NVIDIA H200", 132, 989.0),
        ("NVIDIA A100-SXM4-80GB", 108, 312.0),
        ("NVIDIA Quadro P1000", 5, None),
    ],
)
def test_peak_flops_from_the_device_name_and_sm_count(
    monkeypatch: pytest.MonkeyPatch, name: str, sm_count: int, tflops: float | None
) -> None:
    script = load_script(monkeypatch)

    class Properties:
        multi_processor_count = sm_count

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    peak, source = script.peak_bf16_flops(torch.device("cuda"), None)
    assert peak == (tflops * 1e12 if tflops else None)
    assert ("--peak-tflops" in source) is (tflops is None)
    assert script.peak_bf16_flops(torch.device("cuda"), 500.0) == (500e12, "--peak-tflops")
