"""The declared dependency ranges are the tested ones: ``pyproject.toml``'s lower bounds are the versions
``.ci/oldest.txt`` pins (the second environment ``.ci/run`` tests training in), and that environment
really runs them."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO_ROOT = Path(__file__).resolve().parent.parent
OLDEST_PACKAGES = ("transformers", "datasets", "accelerate", "peft", "tokenizers")


def pins() -> dict[str, str]:
    lines = (REPO_ROOT / ".ci" / "oldest.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip().lower().replace("_", "-"): version.strip() for name, version in pairs}


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {Requirement(line).name.lower(): Requirement(line) for line in project["dependencies"]}


@pytest.mark.parametrize("package", OLDEST_PACKAGES)
def test_the_lower_bound_is_the_version_the_oldest_environment_tests(package: str) -> None:
    requirement = declared()[package]
    lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    assert lower == [pins()[package]], f"pyproject.toml: {requirement}; .ci/oldest.txt: {pins()[package]}"


def test_every_dependency_has_both_ends() -> None:
    for name, requirement in declared().items():
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and "<" in operators, f"{name}: {requirement} has an untested end"


@pytest.mark.skipif(not os.environ.get("FASTSFT_OLDEST"), reason="runs in .ci/run's .venv-oldest job")
@pytest.mark.parametrize("package", OLDEST_PACKAGES)
def test_the_oldest_environment_runs_the_pinned_versions(package: str) -> None:
    assert importlib.metadata.version(package) == pins()[package]
    module = __import__(package)
    assert module.__version__ == pins()[package]
