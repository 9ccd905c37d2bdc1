"""Shared fixtures: both kernel backends, free loopback ports, temporary spools."""

from __future__ import annotations

import pytest

pytest_plugins = ["helpers.dns_server", "helpers.server", "helpers.mta_process"]

BACKEND_NAMES = ("cython", "python")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest):
    """Each kernel test runs once against the compiled kernels and once against the twins."""
    from fastmta import kernels

    return kernels.load_backend(request.param)
