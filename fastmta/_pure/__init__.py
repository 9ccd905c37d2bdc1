"""Pure-Python twins of the Cython kernels in fastmta._ext (same API, same errors)."""
