"""Which implementation runs: the compiled kernels (default) or the pure-Python reference."""

from __future__ import annotations

import os
from typing import Literal

from fastsft.errors import ConfigError

Backend = Literal["compiled", "python"]
BACKEND_ENV = "FASTSFT_BACKEND"
BACKENDS = ("compiled", "python")


def resolve_backend(backend: str | None = None) -> Backend:
    """The argument, else ``$FASTSFT_BACKEND``, else ``"compiled"``.

    Choosing ``"compiled"`` imports the kernels, so a missing extension fails here with the
    command that builds it; there is no silent fallback to the slower path.
    """
    chosen = backend or os.environ.get(BACKEND_ENV) or "compiled"
    if chosen not in BACKENDS:
        source = "backend" if backend else f"${BACKEND_ENV}"
        raise ConfigError(f"{source} must be one of {', '.join(BACKENDS)}, got {chosen!r}")
    if chosen == "compiled":
        import fastsft._kernels  # noqa: F401
    return chosen  # type: ignore[return-value]
