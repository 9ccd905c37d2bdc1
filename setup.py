"""Build the Cython kernels in fastmta/_ext.

Each kernel is an optional extension: if there is no C compiler the builds fail,
one summary warning names them, and fastmta runs on the pure-Python twins
(fastmta.kernels says so once at import).  FASTMTA_NO_EXT=1 skips the extensions
on purpose.
"""
import os
import subprocess
import sys
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build each kernel if a C compiler works; otherwise keep the pure-Python twin.

    setuptools' own `optional=True` does not catch every way a missing compiler fails
    (newer versions raise CalledProcessError from the compiler spawn), so catch here,
    collect the failures, and print one warning for all of them at the end."""

    def initialize_options(self) -> None:
        super().initialize_options()
        self._failed: dict[str, str] = {}  # extension name -> why it failed

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler at all, broken toolchain
            for ext in self.extensions or ():
                self._failed.setdefault(ext.name, _reason(exc))
        self._report()

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the pure twin
            self._failed[ext.name] = _reason(exc)

    def copy_extensions_to_source(self) -> None:
        # --inplace and editable installs copy every built module into the tree;
        # a module that failed to build was never made, so do not look for it.
        all_extensions = self.extensions
        self.extensions = [ext for ext in all_extensions if ext.name not in self._failed]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = all_extensions

    def _report(self) -> None:
        if not self._failed:
            return
        names = ", ".join(sorted(name.rsplit(".", 1)[-1] for name in self._failed))
        reasons = sorted(set(self._failed.values()))
        print(
            f"\nfastmta: WARNING: could not compile {len(self._failed)} of "
            f"{len(self.extensions or ())} Cython kernels ({names}): {reasons[0]}"
            + (f" (and {len(reasons) - 1} other errors)" if len(reasons) > 1 else "")
            + ".\nfastmta: the install goes on; these kernels will use their pure-Python twins "
            "(same behaviour, slower), and `fastmta --version` will say "
            "`kernels: python`.\nfastmta: to fix: install a C compiler and the Python headers "
            "(Debian/Ubuntu: apt-get install build-essential python3-dev), then reinstall "
            "fastmta.\n",
            file=sys.stderr,
        )


def _reason(exc: BaseException) -> str:
    """One short line saying why a build failed (not the whole compiler command line)."""
    cause: BaseException | None = exc
    while cause is not None:  # setuptools wraps the compiler's CalledProcessError
        if isinstance(cause, subprocess.CalledProcessError):
            cmd = cause.cmd[0] if isinstance(cause.cmd, (list, tuple)) and cause.cmd else cause.cmd
            return f"the C compiler '{cmd}' failed with exit status {cause.returncode}"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


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
