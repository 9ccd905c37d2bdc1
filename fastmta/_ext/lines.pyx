# cython: language_level=3
"""Incremental SMTP command-line splitter (compiled twin of fastmta._pure.lines).

`feed()` appends received bytes; `next_line()` returns the next complete line
(without its line end) and a set of flags, or None when only a partial line is
buffered.  The caller may stop taking lines at any point (DATA, BDAT, STARTTLS)
and `take_rest()` hands back everything not yet consumed.

Invariants (identical to the pure-Python twin, which is the reference):
- A line is terminated by LF.  CRLF is the proper end; a lone LF ends the line too
  but sets LINE_BARE_LF.  A CR not followed by LF sets LINE_BARE_CR.
- `limit` counts the whole line including its CRLF (RFC 5321 4.5.3.1.4: 512 for
  commands).  A longer line is returned once, truncated to `limit` bytes, with
  LINE_TOO_LONG, when its LF arrives (so a reply to it stays in order with the
  lines around it); its remaining bytes are dropped as they arrive, so memory per
  splitter is bounded by `limit` plus what one `feed()` brings.
- Work is linear in the input: no byte is scanned twice for a line end.

Storage is one C buffer: unconsumed bytes live in [_start, _end).  `feed()` first
slides them to the front, so the buffer never grows past the unconsumed bytes
plus one feed; a buffer grown by a huge feed is shrunk again once it is drained.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcpy, memmove

__all__ = [
    "LineSplitter",
    "LINE_OK",
    "LINE_TOO_LONG",
    "LINE_BARE_LF",
    "LINE_BARE_CR",
    "LINE_NUL",
]

# C constants for the hot path; the Python names below are the same values.
cdef enum:
    _OK = 0
    _TOO_LONG = 1
    _BARE_LF = 2
    _BARE_CR = 4
    _NUL = 8

LINE_OK = _OK
LINE_TOO_LONG = _TOO_LONG
LINE_BARE_LF = _BARE_LF
LINE_BARE_CR = _BARE_CR
LINE_NUL = _NUL

# Keep a drained buffer at most this big; one that grew past it for a large feed
# is given back to the allocator so idle connections stay small.
cdef Py_ssize_t _KEEP_CAPACITY = 64 * 1024


cdef class LineSplitter:
    """Split a byte stream into CRLF-terminated lines of at most `limit` octets."""

    cdef readonly Py_ssize_t limit
    cdef char *_buf
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _start  # first unconsumed byte
    cdef Py_ssize_t _end  # one past the last received byte
    cdef Py_ssize_t _scanned  # bytes after _start already known to hold no LF
    cdef bint _discarding  # inside an over-long line whose bytes are dropped
    cdef bytes _head  # first `limit` bytes of the over-long line

    def __cinit__(self, Py_ssize_t limit=512):
        if limit < 2:
            raise ValueError("limit must be at least 2 (room for CRLF)")
        self.limit = limit
        self._buf = NULL
        self._capacity = 0
        self._start = 0
        self._end = 0
        self._scanned = 0
        self._discarding = False
        self._head = b""

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def buffered(self) -> int:
        """Number of received bytes not yet returned as lines."""
        return self._end - self._start

    def feed(self, data) -> None:
        """Append received bytes."""
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            self._append(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._append(<const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef int _append(self, const char *data, Py_ssize_t length) except -1:
        cdef Py_ssize_t kept = self._end - self._start
        cdef Py_ssize_t needed = kept + length
        cdef Py_ssize_t capacity
        cdef char *grown
        if self._start:
            memmove(self._buf, self._buf + self._start, kept)
            self._start = 0
            self._end = kept
        if needed > self._capacity or (
            self._capacity > _KEEP_CAPACITY and needed < self._capacity // 4
        ):
            capacity = max(needed, min(2 * self._capacity, needed + _KEEP_CAPACITY), 256)
            grown = <char *>PyMem_Realloc(self._buf, capacity)
            if grown is NULL:
                raise MemoryError("LineSplitter: cannot grow the line buffer")
            self._buf = grown
            self._capacity = capacity
        if length:
            memcpy(self._buf + self._end, data, length)
            self._end += length
        return 0

    def next_line(self):
        """Return (line without its line end, flags) or None if no full line is buffered."""
        cdef const char *base = self._buf
        cdef const char *newline
        cdef Py_ssize_t available, window, line_length
        cdef int flags
        cdef bytes head
        if not self._discarding:
            available = self._end - self._start
            window = available if available < self.limit else self.limit
            newline = NULL
            if window > self._scanned:
                newline = <const char *>memchr(
                    base + self._start + self._scanned, b"\n", window - self._scanned
                )
            if newline is NULL:
                if available < self.limit:
                    self._scanned = available
                    return None
                # No line end within `limit` octets: the line is too long.
                self._scanned = 0
                self._head = PyBytes_FromStringAndSize(base + self._start, self.limit)
                self._discarding = True
                self._start += self.limit
            else:
                self._scanned = 0
                line_length = newline - (base + self._start)
                flags = _OK
                if line_length and base[self._start + line_length - 1] == b"\r":
                    line_length -= 1
                else:
                    flags |= _BARE_LF
                if line_length:
                    if memchr(base + self._start, b"\r", line_length) is not NULL:
                        flags |= _BARE_CR
                    if memchr(base + self._start, 0, line_length) is not NULL:
                        flags |= _NUL
                line = PyBytes_FromStringAndSize(base + self._start, line_length)
                self._start = newline - base + 1
                return line, flags
        # Dropping the rest of an over-long line until its LF arrives.
        newline = NULL
        if self._end > self._start:
            newline = <const char *>memchr(base + self._start, b"\n", self._end - self._start)
        if newline is NULL:
            self._start = 0
            self._end = 0
            return None
        self._discarding = False
        self._start = newline - base + 1
        head = self._head
        self._head = b""
        return head, _TOO_LONG

    def take_rest(self) -> bytes:
        """Remove and return every buffered byte not yet returned as a line."""
        rest = b""
        if self._end > self._start:
            rest = PyBytes_FromStringAndSize(self._buf + self._start, self._end - self._start)
        self._discarding = False
        self._head = b""
        self._start = 0
        self._end = 0
        self._scanned = 0
        return rest
