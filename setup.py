"""Build pycds with setuptools:  pip install --no-build-isolation .

The Makefile is the primary build (per-interpreter build dirs, tests,
`make install`); this builds the same extension from the same sources and
flags for pip users.  Metadata lives in pyproject.toml.
"""

import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class build_py_with_pth(build_py):
    """Also put pycds/*.pth (the activation line) at the top of the wheel,
    so that it lands in site-packages next to the package, as `make
    install` does."""

    def run(self):
        super().run()
        for pth in sorted(glob.glob("pycds/*.pth")):
            self.copy_file(pth, os.path.join(self.build_lib, os.path.basename(pth)))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, os.path.basename(pth))
            for pth in sorted(glob.glob("pycds/*.pth"))]


setup(
    cmdclass={"build_py": build_py_with_pth},
    ext_modules=[
        Extension(
            # Beside the package, not in it: SHARE's common case imports
            # it from the .pth without importing the package (docs/IMPORT.md).
            "_pycds",
            sources=sorted(glob.glob("src/*.c")),
            depends=sorted(glob.glob("include/pycds/*.h")),
            include_dirs=["include"],
            extra_compile_args=["-std=c11", "-D_GNU_SOURCE"],
        )
    ],
)
