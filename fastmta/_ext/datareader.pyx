# cython: language_level=3
"""Incremental DATA reader (compiled twin of fastmta._pure.datareader).

Feeds of the raw bytes that follow a 354 reply come in; the message content comes
out, dot-unstuffed (RFC 5321 4.5.2), in as few and as large pieces as the input
allows.  The reader stops at the end-of-data marker and keeps what follows it
(pipelined commands) for `take_rest()`.

Invariants (identical to the pure-Python twin, which is the reference):
- Only CR LF "." CR LF ends the data.  LF.LF, CR.CR, LF.CRLF and CRLF.LF never do
  (SMTP smuggling); they are content, and counted as bare LF / bare CR.
- The content returned ends with the CRLF of its last line; the terminating
  ".CRLF" is not part of it.  Data that is only ".CRLF" is an empty message.
- A leading dot is removed only after a real CRLF (or at the very start).
- At most 4 bytes (a possible start of the end marker) are held between feeds.
- `size` counts content octets returned; `long_lines` counts wire lines longer
  than `max_line` octets including their line end (RFC 5321 4.5.3.1.6: 1000);
  `bare_lf` / `bare_cr` count lone line-end bytes.
- With `normalise=True`, lone LF and lone CR are rewritten to CRLF in the output.

How: one pass over each feed with a matcher for CR LF "." CR LF.  `_matched` is
how many leading bytes of that marker end the input seen so far (KMP state); those
bytes are held, not yet written, because the next byte decides what they were.
Runs of ordinary bytes between CR/LF are found and copied in one pass (16 bytes
at a time with SSE2) straight into the one bytes object a feed returns; a CRLF followed by a byte that
cannot continue the marker (neither "." nor CR) skips the matcher.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject

__all__ = ["DataReader"]


cdef extern from "Python.h":
    # The raw forms: the output bytes object is filled in place and shrunk once,
    # which needs a pointer we own rather than a Cython-managed reference.
    PyObject *_new_bytes "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t size) except NULL
    int _PyBytes_Resize(PyObject **string, Py_ssize_t newsize) except -1
    void _decref "Py_DECREF"(PyObject *o)


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    /* Copy src[i:] to out until the first CR or LF; return that byte's index in src,
       or `length` when there is none.  Scanning and copying are one pass (the run of
       ordinary bytes is usually a line of text, too short to amortise two memchr
       calls and a memcpy).  Whole blocks are stored before they are checked, so up
       to 15 bytes past the copied run may be written: `out` needs that much room. */
    static inline Py_ssize_t fastmta_copy_run(const unsigned char *src, Py_ssize_t i,
                                              Py_ssize_t length, unsigned char *out) {
    #if defined(__SSE2__)
        const __m128i cr = _mm_set1_epi8('\\r'), lf = _mm_set1_epi8('\\n');
        while (i + 16 <= length) {
            __m128i block = _mm_loadu_si128((const __m128i *)(src + i));
            _mm_storeu_si128((__m128i *)out, block);
            int hits = _mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(block, cr), _mm_cmpeq_epi8(block, lf)));
            if (hits) {
                return i + __builtin_ctz((unsigned)hits);
            }
            i += 16;
            out += 16;
        }
    #else
        /* Eight bytes at a time: a lane is flagged when it equals CR or LF. */
        const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
        while (i + 8 <= length) {
            uint64_t word, x, y;
            memcpy(&word, src + i, 8);
            memcpy(out, &word, 8);
            x = word ^ (ones * '\\r');
            y = word ^ (ones * '\\n');
            if ((((x - ones) & ~x) | ((y - ones) & ~y)) & highs) {
                break;  /* the byte-wise loop below finds which one */
            }
            i += 8;
            out += 8;
        }
    #endif
        while (i < length && src[i] != '\\r' && src[i] != '\\n') {
            *out++ = src[i++];
        }
        return i;
    }
    """
    Py_ssize_t fastmta_copy_run(const unsigned char *src, Py_ssize_t i, Py_ssize_t length,
                                unsigned char *out) noexcept nogil


# Room past the last output byte for the block stores of fastmta_copy_run.
cdef Py_ssize_t _SLACK = 16


cdef class DataReader:
    """Turn the wire form of DATA into message content, chunk by chunk."""

    cdef readonly Py_ssize_t max_line
    cdef readonly bint normalise
    cdef readonly bint done
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t long_lines
    cdef readonly Py_ssize_t bare_lf
    cdef readonly Py_ssize_t bare_cr
    cdef int _matched  # held bytes: the first `_matched` bytes of CR LF "." CR LF
    cdef bint _pretend  # the held CRLF is the one imagined before the first line
    cdef Py_ssize_t _line_len  # wire octets of the current line written so far
    cdef bytes _rest

    def __cinit__(self, Py_ssize_t max_line=1000, bint normalise=False):
        if max_line < 2:
            raise ValueError("max_line must be at least 2 (room for CRLF)")
        self.max_line = max_line
        self.normalise = normalise
        self.done = False
        self.size = 0
        self.long_lines = 0
        self.bare_lf = 0
        self.bare_cr = 0
        # The message starts at a line start: behave as if a CRLF came before it,
        # and never write that CRLF.
        self._matched = 2
        self._pretend = True
        self._line_len = 0
        self._rest = b""

    def feed(self, data) -> bytes:
        """Consume `data`; return the content it completes (possibly empty)."""
        cdef Py_buffer view
        if self.done:
            raise ValueError(
                "DataReader.feed() after the end of data; pass take_rest() to the command "
                "parser and start a new DataReader for the next message"
            )
        if PyBytes_CheckExact(data):
            return self._feed(<const unsigned char *>PyBytes_AS_STRING(data),
                              PyBytes_GET_SIZE(data))
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def take_rest(self) -> bytes:
        """Return the bytes received after the end-of-data marker (once)."""
        rest = self._rest
        self._rest = b""
        return rest

    cdef inline void _end_line(self, Py_ssize_t line_end_octets) noexcept:
        if self._line_len + line_end_octets > self.max_line:
            self.long_lines += 1
        self._line_len = 0

    cdef bytes _feed(self, const unsigned char *src, Py_ssize_t length):
        if length == 0:
            return b""
        # Each input byte yields at most 2 output bytes (normalised bare CR/LF) or 1;
        # the held marker bytes released by this feed add at most 4.
        cdef Py_ssize_t capacity = (2 * length if self.normalise else length) + 4 + _SLACK
        cdef PyObject *raw = _new_bytes(NULL, capacity)
        cdef unsigned char *out = <unsigned char *>PyBytes_AS_STRING(<object>raw)
        cdef Py_ssize_t written = 0
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t stop
        cdef int matched = self._matched
        cdef bint normalise = self.normalise
        cdef Py_ssize_t rest_start = -1
        cdef unsigned char byte
        cdef object result
        while i < length:
            if matched == 0:
                # Copy the run of ordinary bytes up to the next CR or LF.
                stop = fastmta_copy_run(src, i, length, out + written)
                if stop > i:
                    written += stop - i
                    self._line_len += stop - i
                    i = stop
                    if i == length:
                        break
                byte = src[i]
                i += 1
                if byte == b"\r":
                    if (i + 1 < length and src[i] == b"\n"
                            and src[i + 1] != b"." and src[i + 1] != b"\r"):
                        # The common case, CRLF then an ordinary line: it cannot start
                        # the end marker, so skip the matcher.
                        out[written] = b"\r"
                        out[written + 1] = b"\n"
                        written += 2
                        self._end_line(2)
                        i += 1
                    else:
                        matched = 1
                else:  # a LF with no CR before it
                    self.bare_lf += 1
                    if normalise:
                        out[written] = b"\r"
                        written += 1
                    out[written] = b"\n"
                    written += 1
                    self._end_line(1)
                continue
            byte = src[i]
            i += 1
            if matched == 1:  # held: CR
                if byte == b"\n":
                    matched = 2
                    continue
                self._write_bare_cr(out, &written)
            elif matched == 2:  # held: CR LF
                if byte == b".":
                    matched = 3
                    continue
                self._write_crlf(out, &written)
            elif matched == 3:  # held: CR LF "."
                if byte == b"\r":
                    matched = 4
                    continue
                # A dot-stuffed line: the dot is dropped but was on the wire.
                self._write_crlf(out, &written)
                self._line_len = 1
            else:  # held: CR LF "." CR
                if byte == b"\n":
                    self._write_crlf(out, &written)
                    self.done = True
                    rest_start = i
                    matched = 0
                    break
                self._write_crlf(out, &written)
                self._line_len = 1
                self._write_bare_cr(out, &written)
            # The held bytes were not a marker: `byte` starts afresh.
            if byte == b"\r":
                matched = 1
            else:
                matched = 0
                i -= 1  # let the run copier above take it
        self._matched = matched
        self.size += written
        if written == 0:
            _decref(raw)
            result = b""
        else:
            _PyBytes_Resize(&raw, written)  # on failure it frees the object itself
            result = <object>raw  # takes a new reference; drop the creation one
            _decref(raw)
        if rest_start >= 0:
            self._rest = PyBytes_FromStringAndSize(<const char *>src + rest_start, length - rest_start)
        return result

    cdef inline void _write_crlf(self, unsigned char *out, Py_ssize_t *written) noexcept:
        """Write the held CRLF, which ended a line (unless it is the imagined first one)."""
        if self._pretend:
            self._pretend = False
            self._line_len = 0
            return
        out[written[0]] = b"\r"
        out[written[0] + 1] = b"\n"
        written[0] += 2
        self._end_line(2)

    cdef inline void _write_bare_cr(self, unsigned char *out, Py_ssize_t *written) noexcept:
        self.bare_cr += 1
        self._line_len += 1
        out[written[0]] = b"\r"
        written[0] += 1
        if self.normalise:
            out[written[0]] = b"\n"
            written[0] += 1
