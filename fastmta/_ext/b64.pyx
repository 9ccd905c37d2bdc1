# cython: language_level=3
"""Streaming base64 (RFC 2045 6.8), compiled.  Behaviour: see b64.pyi and fastmta._pure.b64.

C loops over the caller's buffer (buffer protocol, no copy) with 256-entry
lookup tables; each call writes into one bytes object allocated at its final
(encode) or maximal (decode) size.  `Base64DecodeError` is the pure twin's
class, so callers catch one class whichever backend runs.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_DECREF, PyObject
from fastmta._ext._bytesout cimport bytes_data, drop_bytes, new_bytes, take_bytes

from fastmta._pure.b64 import Base64DecodeError

__all__ = [
    "Base64DecodeError",
    "Base64Encoder",
    "Base64Decoder",
    "b64_encode",
    "b64_decode",
]


cdef const char *ENCODE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# Decode table: 0-63 data, and the classes below.
cdef enum:
    C_SPACE = 64  # CR, LF, SP, TAB: ignored
    C_PAD = 65    # "="
    C_OTHER = 66  # anything else

cdef unsigned char DECODE[256]


cdef void _build_tables():
    cdef int i
    for i in range(256):
        DECODE[i] = C_OTHER
    for i in range(64):
        DECODE[<unsigned char>ENCODE[i]] = i
    for i in b" \t\r\n":
        DECODE[i] = C_SPACE
    DECODE[ord("=")] = C_PAD


_build_tables()


cdef class Base64Encoder:
    """Encode a byte stream as base64 lines of `line_length` characters ending in CRLF."""

    cdef readonly int line_length
    cdef unsigned char carry[2]
    cdef int ncarry
    cdef int column
    cdef bint finished

    def __init__(self, int line_length=76):
        if line_length < 0 or line_length % 4:
            raise ValueError(
                f"line_length={line_length}: use a positive multiple of 4 "
                "(76 for MIME, RFC 2045 6.8) or 0 for one unbroken line"
            )
        self.line_length = line_length
        self.ncarry = 0
        self.column = 0
        self.finished = False

    def feed(self, data) -> bytes:
        """Encode `data`; return the base64 text completed so far."""
        if self.finished:
            raise ValueError("Base64Encoder.feed() after finish(); create a new encoder")
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef object _feed(self, const unsigned char *src, Py_ssize_t n):
        cdef Py_ssize_t total = self.ncarry + n
        cdef Py_ssize_t groups = total // 3
        cdef unsigned char first[3]
        cdef Py_ssize_t skip = 0, i
        if groups == 0:
            for i in range(n):
                self.carry[self.ncarry] = src[i]
                self.ncarry += 1
            return b""
        cdef Py_ssize_t chars = groups * 4
        cdef int width = self.line_length
        cdef Py_ssize_t size = chars
        if width:
            size += 2 * ((self.column + chars) // width)
        out = PyBytes_FromStringAndSize(NULL, size)
        cdef char *dst = PyBytes_AS_STRING(out)
        cdef Py_ssize_t written = 0
        if self.ncarry:
            skip = 3 - self.ncarry
            for i in range(self.ncarry):
                first[i] = self.carry[i]
            for i in range(skip):
                first[self.ncarry + i] = src[i]
            written = self._groups(first, 1, dst)
            groups -= 1
        written += self._groups(src + skip, groups, dst + written)
        cdef Py_ssize_t used = skip + groups * 3
        self.ncarry = <int>(n - used)
        for i in range(self.ncarry):
            self.carry[i] = src[used + i]
        return out

    cdef Py_ssize_t _groups(self, const unsigned char *src, Py_ssize_t groups, char *dst) noexcept:
        """Encode `groups` 3-byte groups, breaking lines; return the characters written."""
        cdef int width = self.line_length
        cdef int column = self.column
        cdef Py_ssize_t g = 0, o = 0, k, line_groups
        cdef unsigned int triple
        if width == 0:
            for g in range(groups):
                triple = (src[0] << 16) | (src[1] << 8) | src[2]
                dst[o] = ENCODE[triple >> 18]
                dst[o + 1] = ENCODE[(triple >> 12) & 63]
                dst[o + 2] = ENCODE[(triple >> 6) & 63]
                dst[o + 3] = ENCODE[triple & 63]
                src += 3
                o += 4
            return o
        while g < groups:
            # As many groups as fit on the current line, then CRLF if it is full.
            line_groups = (width - column) // 4
            if line_groups > groups - g:
                line_groups = groups - g
            for k in range(line_groups):
                triple = (src[0] << 16) | (src[1] << 8) | src[2]
                dst[o] = ENCODE[triple >> 18]
                dst[o + 1] = ENCODE[(triple >> 12) & 63]
                dst[o + 2] = ENCODE[(triple >> 6) & 63]
                dst[o + 3] = ENCODE[triple & 63]
                src += 3
                o += 4
            g += line_groups
            column += <int>(line_groups * 4)
            if column == width:
                dst[o] = b'\r'
                dst[o + 1] = b'\n'
                o += 2
                column = 0
        self.column = column
        return o

    def finish(self) -> bytes:
        """Encode what is left, with padding, and end the last line."""
        if self.finished:
            raise ValueError("Base64Encoder.finish() called twice; create a new encoder")
        self.finished = True
        cdef char tail[8]
        cdef int o = 0
        cdef unsigned int triple
        if self.ncarry:
            triple = self.carry[0] << 16
            if self.ncarry == 2:
                triple |= self.carry[1] << 8
            tail[0] = ENCODE[triple >> 18]
            tail[1] = ENCODE[(triple >> 12) & 63]
            tail[2] = ENCODE[(triple >> 6) & 63] if self.ncarry == 2 else b'='
            tail[3] = b'='
            o = 4
            self.column += 4
            self.ncarry = 0
        if self.line_length and self.column:
            tail[o] = b'\r'
            tail[o + 1] = b'\n'
            o += 2
        self.column = 0
        return PyBytes_FromStringAndSize(tail, o)


# Decoder states.
cdef enum:
    S_DATA = 0
    S_NEED_PAD = 1  # strict only: "=" after two data characters, a second "=" is due
    S_ENDED = 2


cdef class Base64Decoder:
    """Decode base64 fed in arbitrary chunks; see b64.pyi for strictness."""

    cdef readonly bint strict
    cdef unsigned int acc  # data bits of the incomplete quantum
    cdef int count  # data characters in it (0-3)
    cdef int state
    cdef Py_ssize_t offset
    cdef bint finished

    def __init__(self, bint strict=True):
        self.strict = strict
        self.acc = 0
        self.count = 0
        self.state = S_DATA
        self.offset = 0
        self.finished = False

    def feed(self, data) -> bytes:
        """Decode `data`; return the bytes completed so far."""
        if self.finished:
            raise ValueError("Base64Decoder.feed() after finish(); create a new decoder")
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef object _feed(self, const unsigned char *src, Py_ssize_t n):
        cdef Py_ssize_t base = self.offset
        self.offset += n
        cdef PyObject *raw = new_bytes(NULL, (self.count + n) // 4 * 3 + 3)
        cdef unsigned char *dst = <unsigned char *>bytes_data(raw)
        cdef Py_ssize_t failed_at = -1
        cdef const char *reason = NULL
        cdef Py_ssize_t i = 0, o = 0
        cdef unsigned int acc = self.acc, a, b, c, d
        cdef int count = self.count
        cdef unsigned char cls
        cdef bint strict = self.strict
        while i < n:
            if count == 0 and self.state == S_DATA:
                # Fast path: whole quanta of data characters (line breaks fall between them).
                while i + 4 <= n:
                    a = DECODE[src[i]]
                    b = DECODE[src[i + 1]]
                    c = DECODE[src[i + 2]]
                    d = DECODE[src[i + 3]]
                    if (a | b | c | d) & 0xC0:
                        break
                    a = (a << 18) | (b << 12) | (c << 6) | d
                    dst[o] = <unsigned char>(a >> 16)
                    dst[o + 1] = <unsigned char>(a >> 8)
                    dst[o + 2] = <unsigned char>a
                    o += 3
                    i += 4
                    if i + 2 <= n and src[i] == b'\r' and src[i + 1] == b'\n':
                        i += 2
                if i >= n:
                    break
            cls = DECODE[src[i]]
            if cls == C_SPACE:
                pass
            elif cls == C_OTHER:
                if strict:
                    failed_at = i
                    break
            elif self.state == S_ENDED:
                if strict:
                    failed_at = i
                    reason = b"data after the end of the padding"
                    break
            elif self.state == S_NEED_PAD:
                if cls != C_PAD:
                    failed_at = i
                    reason = b"expected a second '=' to end the padding"
                    break
                self.state = S_ENDED
            elif cls < 64:
                acc = (acc << 6) | cls
                count += 1
                if count == 4:
                    dst[o] = <unsigned char>(acc >> 16)
                    dst[o + 1] = <unsigned char>(acc >> 8)
                    dst[o + 2] = <unsigned char>acc
                    o += 3
                    count = 0
                    acc = 0
            else:  # "="
                if count < 2:
                    if strict:
                        failed_at = i
                        reason = b"'=' where a data character is expected"
                        break
                elif count == 2:
                    dst[o] = <unsigned char>(acc >> 4)
                    o += 1
                    count = 0
                    acc = 0
                    self.state = S_NEED_PAD if strict else S_ENDED
                else:
                    dst[o] = <unsigned char>(acc >> 10)
                    dst[o + 1] = <unsigned char>(acc >> 2)
                    o += 2
                    count = 0
                    acc = 0
                    self.state = S_ENDED
            i += 1
        self.acc = acc
        self.count = count
        if failed_at >= 0:
            drop_bytes(raw)
            if reason == NULL:
                raise Base64DecodeError(
                    base + failed_at, f"byte 0x{src[failed_at]:02x} is not in the base64 alphabet"
                )
            raise Base64DecodeError(base + failed_at, reason.decode("ascii"))
        return take_bytes(raw, o)

    def finish(self) -> bytes:
        """End the stream; return the last bytes (lenient) or raise if it was cut short (strict)."""
        if self.finished:
            raise ValueError("Base64Decoder.finish() called twice; create a new decoder")
        self.finished = True
        cdef int count = self.count
        cdef unsigned int acc = self.acc
        cdef unsigned char tail[2]
        self.count = 0
        self.acc = 0
        if self.state == S_NEED_PAD:
            raise Base64DecodeError(self.offset, "input ends inside the padding (one '=' missing)")
        if self.state == S_ENDED or count == 0:
            return b""
        if self.strict:
            raise Base64DecodeError(
                self.offset,
                f"input ends with {count} characters of an incomplete quantum (padding missing)",
            )
        if count == 2:
            tail[0] = <unsigned char>(acc >> 4)
            return PyBytes_FromStringAndSize(<char *>tail, 1)
        if count == 3:
            tail[0] = <unsigned char>(acc >> 10)
            tail[1] = <unsigned char>(acc >> 2)
            return PyBytes_FromStringAndSize(<char *>tail, 2)
        return b""  # six bits cannot make a byte


def b64_encode(data, int line_length=76) -> bytes:
    """Encode `data` in one go: lines of `line_length` characters, each ending in CRLF."""
    encoder = Base64Encoder(line_length)
    return encoder.feed(data) + encoder.finish()


def b64_decode(data, bint strict=True) -> bytes:
    """Decode `data` in one go; see `Base64Decoder` for `strict`."""
    decoder = Base64Decoder(strict)
    return decoder.feed(data) + decoder.finish()
