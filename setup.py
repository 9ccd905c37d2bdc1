"""Build the Cython kernels in fastmta/_ext.

Each kernel is an optional extension: if there is no C compiler the build of that
extension fails quietly and fastmta runs on its pure-Python twin (fastmta.kernels
says so once at import).  FASTMTA_NO_EXT=1 skips the extensions on purpose.
"""
import os
import sys
from glob import glob

from setuptools import Extension, setup


def extensions() -> list:
    if os.environ.get("FASTMTA_NO_EXT") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:  # pragma: no cover - build-system requires Cython
        print("fastmta: Cython is missing; installing the pure-Python kernels only", file=sys.stderr)
        return []
    exts = [
        Extension(
            "fastmta._ext." + os.path.splitext(os.path.basename(path))[0],
            [path],
            extra_compile_args=["-O3"],
            optional=True,
        )
        for path in sorted(glob("fastmta/_ext/*.pyx"))
    ]
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions())
