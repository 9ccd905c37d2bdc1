"""Chooses the byte-level kernel backend once, at import, and re-exports its API.

The kernels (line splitting, DATA reading, dot-stuffing, base64, quoted-printable,
RFC 2047 words, the spool's batch commit) exist twice with identical behaviour: compiled in `fastmta._ext`
(Cython) and as pure-Python twins in `fastmta._pure`.  Everything else imports them
from here, never from either package directly.

- The compiled backend is used when all of its modules import.
- `FASTMTA_PURE_PYTHON=1` forces the pure-Python twins.
- If the compiled backend cannot be loaded (no C compiler at install time), the
  twins are used and one warning says so on stderr.

`BACKEND` names the backend in use ("cython" or "python").  `load_backend(name)`
returns either backend as a namespace, for tests that run against both.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import SimpleNamespace

KERNEL_MODULES = ("lines", "datareader", "dotstuff", "b64", "qp", "rfc2047", "spoolio")
_PACKAGES = {"cython": "fastmta._ext", "python": "fastmta._pure"}


def load_backend(name: str) -> SimpleNamespace:
    """Import every kernel module of backend `name` and return their public names."""
    package = _PACKAGES[name]
    names: dict[str, object] = {"BACKEND": name}
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"{package}.{module_name}")
        for public in getattr(module, "__all__", ()):
            names[public] = getattr(module, public)
    return SimpleNamespace(**names)


def _choose() -> tuple[SimpleNamespace, str | None]:
    if os.environ.get("FASTMTA_PURE_PYTHON") == "1":
        return load_backend("python"), None
    try:
        return load_backend("cython"), None
    except ImportError as exc:
        return load_backend("python"), str(exc)


_impl, COMPILED_IMPORT_ERROR = _choose()
BACKEND: str = _impl.BACKEND

if COMPILED_IMPORT_ERROR is not None:
    print(
        "fastmta: compiled kernels are not available "
        f"({COMPILED_IMPORT_ERROR}); running on the pure-Python twins, which are slower. "
        "Install a C compiler and the Python headers, then reinstall fastmta.",
        file=sys.stderr,
    )

globals().update({k: v for k, v in vars(_impl).items() if k != "BACKEND"})
