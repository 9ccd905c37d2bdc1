"""Build the Cython kernels in fastmta/_ext.

Each kernel is an optional extension: if there is no C compiler the build of that
extension fails quietly and fastmta runs on its pure-Python twin (fastmta.kernels
says so once at import).  FASTMTA_NO_EXT=1 skips the extensions on purpose.
"""
import os
import sys
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build each kernel if a C compiler works; otherwise warn and keep the pure-Python twin.

    setuptools' own `optional=True` does not catch every way a missing compiler fails
    (newer versions raise CalledProcessError from the compiler spawn), so catch here."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all, broken toolchain
            self._warn("the Cython kernels", exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(ext.name, exc)

    @staticmethod
    def _warn(what: str, exc: BaseException) -> None:
        print(f"fastmta: could not compile {what} ({exc}); fastmta will run on the pure-Python "
              "twins. Install a C compiler and the Python headers, then reinstall, for full speed.",
              file=sys.stderr)


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


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
