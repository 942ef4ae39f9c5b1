"""Checked by mypy in tests/test_structure.py (not collected by pytest): both kernel modules are a ``Kernels``."""

from fastsft.kernels import Kernels, compiled, reference

reference_kernels: Kernels = reference
compiled_kernels: Kernels = compiled
