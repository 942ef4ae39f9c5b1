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


def test_modules_import_only_declared_names_from_each_other() -> None:
    """Every ``from fastsft.X import name`` in the package names a submodule of X or one of X's
    ``__all__``: a name that crosses a module boundary is declared there. Modules without
    ``__all__`` are not checked: ``fastsft/__init__.py`` (``IGNORE_INDEX``, ``__version__``), the
    generated ``unicode_classes`` and the packages whose ``__init__`` is only a docstring."""
    import ast
    import importlib
    import importlib.util

    undeclared = []
    for path in sorted((REPO_ROOT / "fastsft").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if node.module != "fastsft" and not node.module.startswith("fastsft."):
                continue
            module = importlib.import_module(node.module)
            declared = getattr(module, "__all__", None)
            for alias in node.names:
                if declared is None or alias.name in declared:
                    continue
                if hasattr(module, "__path__") and importlib.util.find_spec(f"{node.module}.{alias.name}"):
                    continue  # a submodule
                undeclared.append(f"{path.relative_to(REPO_ROOT)}: {node.module}.{alias.name}")
    assert not undeclared, "\n".join(undeclared)
