# cython: language_level=3
"""A kernel's output bytes built in place: allocate the largest size the input can give,
fill it through a pointer, cut it to the size used (shared by b64, qp and rfc2047).

The output object is held by a C pointer until it is cut to size, because
_PyBytes_Resize needs the only reference to it.
"""

from cpython.ref cimport Py_DECREF, PyObject


cdef extern from "Python.h":
    PyObject *new_bytes "PyBytes_FromStringAndSize"(const char *, Py_ssize_t) except NULL
    char *bytes_data "PyBytes_AS_STRING"(PyObject *)
    void drop_bytes "Py_DECREF"(PyObject *)
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize) except -1


cdef inline object take_bytes(PyObject *raw, Py_ssize_t used):
    """Take over `raw` (a new bytes object nobody else holds), cut it to `used` bytes in place."""
    _PyBytes_Resize(&raw, used)  # on failure CPython frees it and raises MemoryError
    result = <object>raw
    Py_DECREF(result)  # `result` now holds the one reference `raw` had
    return result
