"""fastsft's cache of what it may recompute (tokenizer specs, encoder verdicts and tables):
where it lives, what keys it, and how its files are read and written.

A cached value is only as good as its key, so a tokenizer folder is keyed by the content of its
files (``folder_digest``), never by names, sizes and times that ``cp -p``, ``rsync -a`` or a moved
symlink keep. A cached file starts with the SHA-256 of the rest and is read back only when it
matches (``read_checked_bytes``; ``read_checked`` for JSON); files are replaced atomically. A
cache that cannot be read or written (another user's folder, a full disk) is skipped with one
warning per folder, never fatal: every cached value can be computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_ENV_VAR",
    "cache_dir",
    "folder_digest",
    "read_checked",
    "read_checked_bytes",
    "write_atomic",
    "write_checked",
    "write_checked_bytes",
]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "FASTSFT_CACHE_DIR"

# Files of model weights (never read by a tokenizer) and files larger than any tokenizer file are
# too large to hash on every load: they enter a folder's digest by identity instead (resolved path,
# inode, size, mtime and ctime; ``os.utime``, ``cp -p`` and a moved symlink all change one of these).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
_HASHED_MAX_BYTES = 256 << 20

_warned: set[str] = set()  # cache folders already reported unusable in this process


def cache_dir() -> Path:
    """Where fastsft keeps what it may recompute: ``$FASTSFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastsft``,
    else ``~/.cache/fastsft``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastsft"


def folder_digest(folder: Path) -> str:
    """The SHA-256 of everything under ``folder`` a tokenizer may read: each file's relative path and
    content, symlinks followed (weights and very large files by identity, see ``_WEIGHT_SUFFIXES``)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode("utf-8", "surrogateescape") + b"\0")
            try:
                real = os.path.realpath(path)
                st = os.stat(real)
                if name.endswith(_WEIGHT_SUFFIXES) or st.st_size > _HASHED_MAX_BYTES:
                    identity = (real, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    digest.update(repr(identity).encode("utf-8", "surrogateescape"))
                else:
                    with open(path, "rb") as f:
                        digest.update(hashlib.file_digest(f, "sha256").digest())
            # A dangling link or an unreadable file: the tokenizer cannot read it either.
            except OSError as err:
                digest.update(f"unreadable {err.errno}".encode())
            digest.update(b"\0")
    return digest.hexdigest()


def read_checked(path: Path) -> Any:
    """The JSON value ``write_checked`` wrote at ``path``; ``None`` when the file is missing, damaged
    or unreadable (an unreadable cache is reported once)."""
    body = read_checked_bytes(path)
    try:
        return None if body is None else json.loads(body)
    except ValueError:
        return None


def write_checked(path: Path, value: Any) -> None:
    """``value`` as JSON at ``path``, checked as ``write_checked_bytes`` checks bytes."""
    write_checked_bytes(path, json.dumps(value).encode("utf-8"))


def read_checked_bytes(path: Path) -> bytes | None:
    """The bytes ``write_checked_bytes`` wrote at ``path``; ``None`` when the file is missing,
    damaged or unreadable (an unreadable cache is reported once)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        skip_unusable(path, err)
        return None
    return data[32:] if hashlib.sha256(data[32:]).digest() == data[:32] else None


def write_checked_bytes(path: Path, payload: bytes) -> None:
    """``payload`` at ``path``, after the 32 bytes of its SHA-256."""
    write_atomic(path, hashlib.sha256(payload).digest() + payload)


def write_atomic(path: Path, content: bytes) -> None:
    """``content`` at ``path`` via a temporary file and a rename; a cache that cannot be written is skipped."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(temporary, path)
    except OSError as err:
        skip_unusable(path, err)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def skip_unusable(path: Path, err: OSError) -> None:
    """Report, once per cache folder and process, that the cache cannot be used there."""
    root = str(cache_dir())
    if root not in _warned:
        _warned.add(root)
        logger.warning(
            "the tokenizer cache in %s cannot be used (%s: %s); going on without it",
            root,
            path,
            err.strerror or err,
        )
