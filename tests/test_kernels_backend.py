"""Backend choice: the compiled kernels are the ones loaded, and the user can see which.

CI runs these on an installed checkout, so a build that silently fell back to the
pure-Python twins fails here instead of shipping a slow MTA.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastmta import kernels

FORCED_PURE = os.environ.get("FASTMTA_PURE_PYTHON") == "1"
BUILD_HINT = (
    "the compiled kernels did not load ({error}); install a C compiler and the Python "
    "headers (Debian: apt-get install build-essential python3-dev), then reinstall with "
    "`pip install -e '.[test]'` or rebuild with `python setup.py build_ext --inplace`"
)


def run_python(*args: str, pure: bool) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "FASTMTA_PURE_PYTHON"}
    if pure:
        env["FASTMTA_PURE_PYTHON"] = "1"
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(FORCED_PURE, reason="FASTMTA_PURE_PYTHON=1 forces the pure-Python twins")
def test_compiled_backend_is_loaded():
    assert kernels.BACKEND == "cython", BUILD_HINT.format(error=kernels.COMPILED_IMPORT_ERROR)


@pytest.mark.skipif(FORCED_PURE, reason="FASTMTA_PURE_PYTHON=1 forces the pure-Python twins")
@pytest.mark.parametrize("module", kernels.KERNEL_MODULES)
def test_compiled_modules_are_extensions_not_python_files(module):
    try:
        loaded = importlib.import_module(f"fastmta._ext.{module}")
    except ImportError as exc:
        pytest.fail(BUILD_HINT.format(error=exc))
    assert Path(loaded.__file__).suffix in (".so", ".pyd"), loaded.__file__


def test_forcing_pure_python_loads_the_twins_without_a_warning():
    probe = "from fastmta import kernels; print(kernels.BACKEND, kernels.LineSplitter.__module__)"
    result = run_python("-c", probe, pure=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["python", "fastmta._pure.lines"]
    assert result.stderr == ""


@pytest.mark.parametrize("pure", [False, True])
def test_version_names_the_kernel_backend(pure):
    if FORCED_PURE and not pure:
        pytest.skip("FASTMTA_PURE_PYTHON=1: the compiled kernels may not be built")
    result = run_python("-m", "fastmta", "--version", pure=pure)
    assert result.returncode == 0, result.stderr
    backend = "python" if pure else "cython"
    assert result.stdout.startswith("fastmta ")
    assert f"kernels: {backend}" in result.stdout


@pytest.mark.parametrize("module", kernels.KERNEL_MODULES)
def test_both_backends_export_the_same_names(module):
    pure = importlib.import_module(f"fastmta._pure.{module}")
    try:
        compiled = importlib.import_module(f"fastmta._ext.{module}")
    except ImportError as exc:
        if FORCED_PURE:
            pytest.skip(f"compiled {module} not built and FASTMTA_PURE_PYTHON=1")
        pytest.fail(BUILD_HINT.format(error=exc))
    assert sorted(compiled.__all__) == sorted(pure.__all__)
    for name in pure.__all__:
        assert hasattr(compiled, name), f"fastmta._ext.{module} lacks {name}"
        if isinstance(getattr(pure, name), int):  # flag constants must match exactly
            assert getattr(compiled, name) == getattr(pure, name), name
