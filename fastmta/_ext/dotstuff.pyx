# cython: language_level=3
"""Streaming dot-stuffer for the sending side (compiled twin of fastmta._pure.dotstuff).

Message content goes in, in chunks of any size; its SMTP wire form comes out
(RFC 5321 4.5.2): every line end becomes CRLF, every line that starts with "."
gets a second one, and `finish()` closes the data with ".CRLF".

Invariants (identical to the pure-Python twin, which is the reference):
- CRLF, a lone LF and a lone CR each count as one line end and are sent as CRLF
  (RFC 5321 2.3.8: a bare CR or LF must not go on the wire).
- A CR that ends a chunk is held back until the next byte shows whether it
  starts a CRLF; nothing else is held between feeds.
- `finish()` adds a CRLF first when the content did not end with a line end, so
  the end marker is always CRLF "." CRLF.  An empty message is sent as ".CRLF".
- Feeding the output to a DataReader gives back the content with its line ends
  normalised to CRLF.

How: runs of ordinary bytes between CR/LF are found with memchr and copied with
memcpy straight into the one bytes object a feed returns (sized for the worst
case, every byte doubled, and shrunk once at the end).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.string cimport memchr, memcpy

__all__ = ["DotStuffer", "dot_stuff"]


cdef extern from "Python.h":
    # The raw forms: the output bytes object is filled in place and shrunk once,
    # which needs a pointer we own rather than a Cython-managed reference.
    PyObject *_new_bytes "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t size) except NULL
    int _PyBytes_Resize(PyObject **string, Py_ssize_t newsize) except -1
    void _decref "Py_DECREF"(PyObject *o)


cdef inline Py_ssize_t _find(const unsigned char *data, Py_ssize_t start, Py_ssize_t end,
                             unsigned char wanted) noexcept nogil:
    """Index of the first `wanted` byte in data[start:end], or `end`."""
    if start >= end:
        return end
    cdef const void *hit = memchr(data + start, wanted, end - start)
    if hit is NULL:
        return end
    return <const unsigned char *>hit - data


cdef struct _State:
    bint at_line_start  # the next content byte starts a line
    bint held_cr  # the last byte fed was a CR not yet written


cdef Py_ssize_t _stuff(_State *state, const unsigned char *src, Py_ssize_t length,
                       unsigned char *out) noexcept nogil:
    """Write the wire form of src[:length] to `out` (room for 2 * length + 2); return its size."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t written = 0
    cdef Py_ssize_t next_cr = -1  # cached memchr results, refreshed once passed
    cdef Py_ssize_t next_lf = -1
    cdef Py_ssize_t stop
    cdef unsigned char byte
    if length == 0:
        return 0
    if state.held_cr:
        # The held CR ends a line whatever follows; a LF right after it is its pair.
        state.held_cr = False
        out[0] = b"\r"
        out[1] = b"\n"
        written = 2
        state.at_line_start = True
        if src[0] == b"\n":
            i = 1
    while i < length:
        if state.at_line_start:
            state.at_line_start = False
            if src[i] == b".":
                out[written] = b"."
                written += 1
        if next_cr < i:
            next_cr = _find(src, i, length, b"\r")
        if next_lf < i:
            next_lf = _find(src, i, length, b"\n")
        stop = next_cr if next_cr < next_lf else next_lf
        if stop > i:
            memcpy(out + written, src + i, stop - i)
            written += stop - i
            i = stop
            if i == length:
                break
        byte = src[i]
        i += 1
        if byte == b"\r":
            if i == length:
                state.held_cr = True  # CRLF or bare CR: the next feed tells
                break
            if src[i] == b"\n":
                i += 1
        out[written] = b"\r"
        out[written + 1] = b"\n"
        written += 2
        state.at_line_start = True
    return written


cdef object _finish_bytes(PyObject *raw, Py_ssize_t written):
    """Shrink the raw output object to `written` bytes and return it as an owned object."""
    cdef object result
    if written == 0:
        _decref(raw)
        return b""
    _PyBytes_Resize(&raw, written)  # on failure it frees the object itself
    result = <object>raw  # takes a new reference; drop the creation one
    _decref(raw)
    return result


cdef class DotStuffer:
    """Turn message content into the wire form of DATA, chunk by chunk."""

    cdef _State _state
    cdef bint _finished

    def __cinit__(self):
        self._state.at_line_start = True
        self._state.held_cr = False
        self._finished = False

    def feed(self, data) -> bytes:
        """Consume content bytes; return their wire form (possibly empty)."""
        cdef Py_buffer view
        if self._finished:
            raise ValueError("DotStuffer.feed() after finish(); create a new DotStuffer per message")
        if PyBytes_CheckExact(data):
            return self._feed(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef object _feed(self, const unsigned char *src, Py_ssize_t length):
        if length == 0:
            return b""
        cdef PyObject *raw = _new_bytes(NULL, 2 * length + 2)
        cdef Py_ssize_t written = _stuff(
            &self._state, src, length, <unsigned char *>PyBytes_AS_STRING(<object>raw)
        )
        return _finish_bytes(raw, written)

    def finish(self) -> bytes:
        """Return the bytes that close the data: a CRLF if needed, then ".CRLF"."""
        if self._finished:
            raise ValueError("DotStuffer.finish() called twice; create a new DotStuffer per message")
        self._finished = True
        if self._state.held_cr or not self._state.at_line_start:
            self._state.held_cr = False
            return b"\r\n.\r\n"
        return b".\r\n"


def dot_stuff(data) -> bytes:
    """Return the complete wire form of one message, ending with ".CRLF"."""
    cdef _State state
    cdef Py_ssize_t written
    cdef PyObject *raw
    cdef unsigned char *out
    cdef Py_buffer view
    cdef const unsigned char *src
    cdef Py_ssize_t length
    cdef bint has_view = not PyBytes_CheckExact(data)
    if has_view:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        src = <const unsigned char *>view.buf
        length = view.len
    else:
        src = <const unsigned char *>PyBytes_AS_STRING(data)
        length = PyBytes_GET_SIZE(data)
    try:
        state.at_line_start = True
        state.held_cr = False
        # Worst case: every byte doubled, then CRLF "." CRLF.
        raw = _new_bytes(NULL, 2 * length + 5)
        out = <unsigned char *>PyBytes_AS_STRING(<object>raw)
        written = _stuff(&state, src, length, out)
    finally:
        if has_view:
            PyBuffer_Release(&view)
    if state.held_cr or not state.at_line_start:
        memcpy(out + written, b"\r\n", 2)
        written += 2
    memcpy(out + written, b".\r\n", 3)
    written += 3
    return _finish_bytes(raw, written)
