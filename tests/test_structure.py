"""The code's structure, checked: the layering contracts, the kernel interface, the compiled stubs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TYPING = REPO_ROOT / "tests" / "typing"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_layers_and_no_cycles() -> None:
    """pyproject.toml's import-linter contracts: no lower layer imports a higher one, no package has a cycle."""
    result = _run(
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.slow
def test_both_kernel_modules_satisfy_the_kernels_protocol() -> None:
    """mypy checks ``fastsft.kernels.reference`` and ``fastsft.kernels.compiled`` against ``Kernels``."""
    result = _run("-m", "mypy", "--no-incremental", str(TYPING / "kernels_protocol.py"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_tokenizer_package_is_typed() -> None:
    """mypy finds no error in ``fastsft.tokenizer``, and every function there is annotated."""
    result = _run(
        "-m", "mypy", "--no-incremental", "--disallow-untyped-defs", "--disallow-incomplete-defs",
        "fastsft/tokenizer",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_core_stub_matches_the_built_module() -> None:
    """``fastsft/_core.pyi`` names every kernel of the built ``fastsft._core`` with its parameters."""
    result = _run(
        "-m", "mypy.stubtest", "fastsft._core", "--allowlist", str(TYPING / "stubtest_allowlist.txt")
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_packing_strategy_has_its_compiled_kernel() -> None:
    """The table's ``kernel`` names exist in ``fastsft._core`` (and so, by the stub test, in ``_core.pyi``)."""
    from fastsft import _core
    from fastsft.kernels.packing import STRATEGIES

    for strategy in STRATEGIES.values():
        assert callable(getattr(_core, strategy.kernel)), strategy
