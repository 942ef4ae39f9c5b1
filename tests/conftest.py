"""Shared test fixtures: repository paths and tokenizers.

Tokenizer fixtures load a fresh instance per test because the pipeline fixes the tokenizer in
place (EOS replacement, pad = eos, stop words), exactly as LLaMA-Factory does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = REPO_ROOT / "tests" / "data"
FIXTURE_TOKENIZER_DIR = REPO_ROOT / "examples" / "tiny" / "tokenizer"
QWEN2_TOKENIZER_ENV = "FASTSFT_QWEN2_TOKENIZER"
LLAMA3_TOKENIZER_DIR = REPO_ROOT / ".cache" / "tokenizers" / "llama3"  # scripts/make_llama3_tokenizer.py


def qwen2_tokenizer_dir() -> Path:
    """Where the real Qwen2 tokenizer is looked for: ``$FASTSFT_QWEN2_TOKENIZER`` or ``../shared``."""
    configured = os.environ.get(QWEN2_TOKENIZER_ENV)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "tokenizers" / "qwen2"


def load_tokenizer(path: Path) -> Any:
    """A fresh HF tokenizer from ``path``, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def pretend_upgraded(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` read as version 999.0 (fastsft by ``__version__``, the others by their
    installed metadata), as after an upgrade."""
    import importlib.metadata

    import fastsft

    if package == "fastsft":
        monkeypatch.setattr(fastsft, "__version__", "999.0")
        return
    installed = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "999.0" if name == package else installed(name)
    )


def saved_tiny_model(folder: Path) -> Path:
    """The tiny example's random-init model (``torch.manual_seed(0)``), saved to ``folder``: runs that
    must start from the same weights (ZeRO-3 and plain init draw different numbers) load it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(REPO_ROOT / "examples" / "tiny" / "model" / "config.json")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def fastsft_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fastsft's cache (``fastsft.tokenizer.loader``) in a temporary folder, for the tests and the
    commands they start, never the user's."""
    folder = tmp_path_factory.mktemp("fastsft-cache")
    os.environ["FASTSFT_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture
def fastsft_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty fastsft cache for this test alone (``$FASTSFT_CACHE_DIR``, also for the commands it
    starts): a test of what the cache keeps starts cold and sees only its own files."""
    folder = tmp_path / "fastsft-cache"
    monkeypatch.setenv("FASTSFT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def repo_cwd(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the repository root: the example YAMLs use paths relative to it, as LLaMA-Factory's do."""
    monkeypatch.chdir(REPO_ROOT)
    return REPO_ROOT


@pytest.fixture(scope="session")
def test_data_dir() -> Path:
    """``tests/data``: the sample datasets and their ``dataset_info.json``."""
    return TEST_DATA_DIR


@pytest.fixture(scope="session")
def fixture_tokenizer_path() -> Path:
    """The small committed tokenizer (``scripts/make_fixture_tokenizer.py``)."""
    if not (FIXTURE_TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.fail(
            f"fixture tokenizer missing at {FIXTURE_TOKENIZER_DIR}; run scripts/make_fixture_tokenizer.py"
        )
    return FIXTURE_TOKENIZER_DIR


@pytest.fixture(scope="session")
def qwen2_tokenizer_path() -> Path:
    """The real Qwen2 tokenizer directory, or skip when it is not on this machine."""
    path = qwen2_tokenizer_dir()
    if not path.is_dir():
        pytest.skip(f"Qwen2 tokenizer not found at {path} (set {QWEN2_TOKENIZER_ENV} to its directory)")
    return path


@pytest.fixture(scope="session")
def llama3_tokenizer_path() -> Path:
    """Meta's Llama 3 tokenizer as built by ``scripts/make_llama3_tokenizer.py``, or skip when it is not built."""
    if not (LLAMA3_TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip(
            f"Llama 3 tokenizer not built at {LLAMA3_TOKENIZER_DIR} "
            "(run scripts/make_llama3_tokenizer.py; it downloads the llama-models wheel)"
        )
    return LLAMA3_TOKENIZER_DIR


@pytest.fixture
def fixture_tokenizer(fixture_tokenizer_path: Path) -> Any:
    """A fresh fixture tokenizer for this test."""
    return load_tokenizer(fixture_tokenizer_path)


@pytest.fixture
def qwen2_tokenizer(qwen2_tokenizer_path: Path) -> Any:
    """A fresh Qwen2 tokenizer for this test (skipped when absent)."""
    return load_tokenizer(qwen2_tokenizer_path)


@pytest.fixture
def new_fixture_tokenizer(fixture_tokenizer_path: Path) -> Callable[[], Any]:
    """A factory of fresh fixture tokenizers, for tests that run the pipeline more than once."""
    return lambda: load_tokenizer(fixture_tokenizer_path)


@contextlib.contextmanager
def _small_filesystem(folder: Path, options: str | None) -> Iterator[bool]:
    """``folder``, with a tmpfs mounted on it when ``options`` are given and this process may mount
    one (root); yields whether it mounted."""
    folder.mkdir()
    mounted = False
    if options is not None and os.geteuid() == 0 and shutil.which("mount"):
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
        mounted = subprocess.run(command, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_filesystem() -> Callable[[Path, str | None], contextlib.AbstractContextManager[bool]]:
    """``small_filesystem(folder, options)``: a tmpfs of those mount options on ``folder`` for the
    block (a full or read-only disk), where this process may mount one; yields whether it did."""
    return _small_filesystem
