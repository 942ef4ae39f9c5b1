"""The one kernel interface: the same flat-buffer functions, compiled or pure Python, chosen once.

``select_kernels(path)`` returns the module for an encode path, ``"compiled"`` (default;
``fastsft.kernels.compiled`` over ``fastsft._core``) or ``"python"`` (``fastsft.kernels.reference``).
Both satisfy one typed interface, ``Kernels`` (``gather_segments``, ``assemble_supervised``,
``pack`` for every strategy of ``fastsft.kernels.packing.STRATEGIES``, ``materialize_rows``,
``varlen_flatten``), with the same named results (``fastsft.kernels.types``). Callers hold the
module and never branch on the path.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Literal, cast

from fastsft.errors import ConfigError
from fastsft.lazy import lazy_getattr

if TYPE_CHECKING:
    from fastsft.kernels.interface import Kernels

# Imported on first use: the interface and the result types import numpy, which the option
# declarations (`backend`, `packing_strategy` choices, and so `fastsft --help`) need not pay for.
_HOMES = {
    "Kernels": "interface",
    "STRATEGIES": "packing",
    "PackingStrategy": "packing",
    **dict.fromkeys(("Packing", "Rows", "Segments", "Supervised", "Varlen", "offsets_from_lengths"), "types"),
}
__getattr__ = lazy_getattr(__name__, _HOMES)

__all__ = [
    "ENCODE_PATHS",
    "ENCODE_PATH_ENV",
    "STRATEGIES",
    "EncodePath",
    "Kernels",
    "Packing",
    "PackingStrategy",
    "Rows",
    "Segments",
    "Supervised",
    "Varlen",
    "offsets_from_lengths",
    "resolve_encode_path",
    "select_kernels",
]

EncodePath = Literal["compiled", "python"]
ENCODE_PATHS: tuple[EncodePath, ...] = ("compiled", "python")
ENCODE_PATH_ENV = "FASTSFT_BACKEND"  # the user-facing name is `backend` (--backend, FASTSFT_BACKEND)


def resolve_encode_path(path: str | None = None) -> EncodePath:
    """The argument, else ``$FASTSFT_BACKEND``, else ``"compiled"``; checks the name only."""
    chosen = path or os.environ.get(ENCODE_PATH_ENV) or "compiled"
    if chosen not in ENCODE_PATHS:
        source = "backend" if path else f"${ENCODE_PATH_ENV}"
        raise ConfigError(f"{source} must be one of {', '.join(ENCODE_PATHS)}, got {chosen!r}")
    return chosen  # type: ignore[return-value]


def select_kernels(path: str | None = None) -> Kernels:
    """The kernel module for ``path`` (see ``resolve_encode_path``).

    ``"compiled"`` imports ``fastsft._core``, so a missing extension fails here with the command
    that builds it (``KernelsNotBuiltError``); there is no silent fallback to the slower path.
    """
    name = "reference" if resolve_encode_path(path) == "python" else "compiled"
    return cast("Kernels", importlib.import_module(f"fastsft.kernels.{name}"))
