"""Build the compiled kernels ``fastsft._core`` (metadata lives in pyproject.toml).

``FASTSFT_DEBUG_KERNELS=1`` builds a bounds-checked, unoptimised variant with debug symbols, so the
kernel tests can run against memory-safe code: every typed-memoryview index (negative ones too) is
checked and raises ``IndexError`` instead of reading or writing out of bounds.
"""

from __future__ import annotations

import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG_KERNELS = os.environ.get("FASTSFT_DEBUG_KERNELS", "") == "1"

if DEBUG_KERNELS:
    # wraparound stays off: with it on, a negative index silently wraps to the end of the buffer
    # instead of failing the bounds check. The kernels never index from the end on purpose.
    directives = {"boundscheck": True, "wraparound": False, "initializedcheck": True}
    compile_args = ["-O0", "-g"]
    macros = [("FASTSFT_DEBUG_KERNELS", "1")]
else:
    directives = {"boundscheck": False, "wraparound": False, "initializedcheck": False}
    compile_args = ["-O3"]
    macros = []

core = Extension(
    "fastsft._core",
    sources=["csrc/_core.pyx"],
    # The included kernel files: rebuild when they change, and ship them in the sdist.
    depends=[
        "csrc/_core.pyx",
        "csrc/encode.pxi",
        "csrc/pack.pxi",
        "csrc/collate.pxi",
        "csrc/scan.pxi",
        "csrc/render.pxi",
        "csrc/bpe.pxi",
    ],
    include_dirs=[np.get_include()],
    define_macros=[*macros, ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=[*compile_args, "-pthread"],  # the BPE's std::thread (csrc/bpe.pxi)
    extra_link_args=["-pthread"],
    language="c++",
)

setup(
    ext_modules=cythonize(
        [core],
        compiler_directives={"language_level": 3, "cdivision": True, "embedsignature": True, **directives},
        # Separate generated sources per flavour: Cython only regenerates when the .pyx is newer,
        # so a shared output file would let one flavour silently reuse the other's code.
        build_dir=os.path.join("build", "cython-debug" if DEBUG_KERNELS else "cython-release"),
    ),
)
