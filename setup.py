"""Build hook for the optional C kernels (bitconv/_ckernels.c); all metadata lives in pyproject.toml.

The extension is optional: where it cannot be compiled, bitconv runs the same arithmetic in numpy (same bytes,
slower). Floating point must stay in IEEE order (the kernel replays torch's float32 summation order exactly), so no
-ffast-math and no FMA contraction.
"""

import os

from setuptools import Extension, setup

flags = [] if os.name == "nt" else ["-O3", "-fno-fast-math", "-ffp-contract=off", "-std=c99"]
setup(ext_modules=[Extension("bitconv._ckernels", ["bitconv/_ckernels.c"], optional=True,
                             extra_compile_args=flags)])
