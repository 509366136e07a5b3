"""Build pycds with setuptools:  pip install --no-build-isolation .

The Makefile is the primary build (per-interpreter build dirs, tests,
`make install`); this builds the same extension from the same sources and
flags for pip users.  Metadata lives in pyproject.toml.
"""

import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pycds._pycds",
            sources=sorted(glob.glob("src/*.c")),
            depends=sorted(glob.glob("include/pycds/*.h")),
            include_dirs=["include"],
            libraries=["elf", "xxhash"],
            extra_compile_args=["-std=c11", "-D_GNU_SOURCE"],
        )
    ],
)
