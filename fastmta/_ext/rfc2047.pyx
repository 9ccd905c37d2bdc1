# cython: language_level=3
"""RFC 2047 encoded words, compiled.  Behaviour: see rfc2047.pyi and fastmta._pure.rfc2047.

The byte-level work is C: finding `=?charset?X?text?=` words in the value and
decoding or encoding their Q and B payloads, with lookup tables, into one
preallocated bytes object per payload.  Turning bytes into text needs Python's
codecs, and that part (charset lookup, joining words, problems, cutting text
into words at character boundaries) is shared with the pure twin so the two
cannot drift apart.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_DECREF, PyObject
from fastmta._ext._bytesout cimport bytes_data, new_bytes, take_bytes

from fastmta._pure.rfc2047 import DecodedHeader, assemble, plan_words, prepare

__all__ = ["DecodedHeader", "decode_words", "encode_words"]


cdef const char *HEX = b"0123456789ABCDEF"
cdef const char *B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

cdef unsigned char HEX_VALUE[256]  # 255: not a hex digit
cdef unsigned char B64_VALUE[256]  # 255: not in the alphabet
cdef unsigned char Q_LITERAL[256]  # RFC 2047 5 (3): letters, digits, ! * + - /
cdef unsigned char CHARSET_STOP[256]  # ends a charset name: "?", "*", whitespace


cdef void _build_tables():
    cdef int i
    for i in range(256):
        HEX_VALUE[i] = 255
        B64_VALUE[i] = 255
        Q_LITERAL[i] = 0
        CHARSET_STOP[i] = 0
    for i in range(10):
        HEX_VALUE[48 + i] = i
        Q_LITERAL[48 + i] = 1
    for i in range(6):
        HEX_VALUE[65 + i] = 10 + i
        HEX_VALUE[97 + i] = 10 + i
    for i in range(26):
        Q_LITERAL[65 + i] = 1
        Q_LITERAL[97 + i] = 1
    for i in b"!*+-/":
        Q_LITERAL[i] = 1
    for i in range(64):
        B64_VALUE[<unsigned char>B64[i]] = i
    for i in b"?* \t\r\n\x0b\x0c":  # the pure twin's regex: [^?\s*]
        CHARSET_STOP[i] = 1


_build_tables()


cdef object _q_decode(const unsigned char *src, Py_ssize_t n):
    cdef PyObject *raw = new_bytes(NULL, n)
    cdef unsigned char *dst = <unsigned char *>bytes_data(raw)
    cdef Py_ssize_t i = 0, o = 0
    cdef unsigned char c
    while i < n:
        c = src[i]
        if c == b'_':
            dst[o] = b' '
        elif c == b'=' and i + 2 < n and HEX_VALUE[src[i + 1]] != 255 and HEX_VALUE[src[i + 2]] != 255:
            dst[o] = (HEX_VALUE[src[i + 1]] << 4) | HEX_VALUE[src[i + 2]]
            i += 2
        else:
            dst[o] = c  # a malformed "=" stays literal
        o += 1
        i += 1
    return take_bytes(raw, o)


cdef tuple _b_decode(const unsigned char *src, Py_ssize_t n):
    """Lenient B decoding: junk skipped, missing padding supplied; (bytes, well formed)."""
    cdef Py_ssize_t end = n, padding, i, o = 0, clean = 0
    while end and src[end - 1] == b'=':
        end -= 1
    padding = n - end
    cdef PyObject *raw = new_bytes(NULL, end // 4 * 3 + 3)
    cdef unsigned char *dst = <unsigned char *>bytes_data(raw)
    cdef unsigned int acc = 0
    cdef int count = 0
    cdef unsigned char value
    cdef bint junk = False
    for i in range(end):
        value = B64_VALUE[src[i]]
        if value == 255:
            junk = True
            continue
        clean += 1
        acc = (acc << 6) | value
        count += 1
        if count == 4:
            dst[o] = <unsigned char>(acc >> 16)
            dst[o + 1] = <unsigned char>(acc >> 8)
            dst[o + 2] = <unsigned char>acc
            o += 3
            count = 0
            acc = 0
    if count == 2:
        dst[o] = <unsigned char>(acc >> 4)
        o += 1
    elif count == 3:
        dst[o] = <unsigned char>(acc >> 10)
        dst[o + 1] = <unsigned char>(acc >> 2)
        o += 2
    cdef bint well_formed = (
        not junk and count != 1 and (padding == 0 or padding == (4 - count) % 4)
    )
    return take_bytes(raw, o), well_formed


cdef Py_ssize_t _find_word_end(const unsigned char *src, Py_ssize_t start, Py_ssize_t n):
    """Index of the "?=" closing encoded text that begins at `start`, or -1 (no CR/LF allowed)."""
    cdef Py_ssize_t i = start
    while i + 1 < n:
        if src[i] == b'?' and src[i + 1] == b'=':
            return i
        if src[i] == b'\r' or src[i] == b'\n':
            return -1
        i += 1
    return -1


cdef list _scan(const unsigned char *src, Py_ssize_t n):
    """Split a value into (raw, charset or None, payload, well formed) pieces."""
    cdef list pieces = []
    cdef Py_ssize_t position = 0, at = 0, i, charset_end, text_start, text_end
    cdef unsigned char encoding
    cdef const char *text = <const char *>src
    while at + 1 < n:
        if not (src[at] == b'=' and src[at + 1] == b'?'):
            at += 1
            continue
        # charset: one or more bytes up to "?", "*" or whitespace
        i = at + 2
        while i < n and not CHARSET_STOP[src[i]]:
            i += 1
        charset_end = i
        if charset_end == at + 2 or i >= n:
            at += 1
            continue
        if src[i] == b'*':  # RFC 2231 5 language suffix, ignored
            i += 1
            while i < n and src[i] != b'?' and not (CHARSET_STOP[src[i]] and src[i] != b'*'):
                i += 1
        # "?" encoding "?"
        if i + 2 >= n or src[i] != b'?' or src[i + 2] != b'?':
            at += 1
            continue
        encoding = src[i + 1]
        if encoding not in b"BbQq":
            at += 1
            continue
        text_start = i + 3
        text_end = _find_word_end(src, text_start, n)
        if text_end < 0:
            at += 1
            continue
        if at > position:
            pieces.append((text[position:at], None, b"", True))
        if encoding == b'B' or encoding == b'b':
            payload, well_formed = _b_decode(src + text_start, text_end - text_start)
        else:
            payload, well_formed = _q_decode(src + text_start, text_end - text_start), True
        pieces.append((text[at:text_end + 2], text[at + 2:charset_end], payload, well_formed))
        position = at = text_end + 2
    if position < n:
        pieces.append((text[position:n], None, b"", True))
    return pieces


def decode_words(value) -> DecodedHeader:
    """Decode the encoded words in a header value; see rfc2047.pyi."""
    data, from_str = prepare(value)
    cdef const unsigned char *src = data
    cdef Py_ssize_t n = len(data)
    if b"=?" not in data:
        return assemble([(data, None, b"", True)] if n else [], from_str)
    return assemble(_scan(src, n), from_str)


def q_length(data) -> int:
    """Length of `data` in the restricted Q encoding."""
    cdef Py_buffer view
    cdef Py_ssize_t i, total = 0
    cdef const unsigned char *src
    cdef unsigned char c
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        src = <const unsigned char *>view.buf
        for i in range(view.len):
            c = src[i]
            total += 1 if (Q_LITERAL[c] or c == b' ') else 3
        return total
    finally:
        PyBuffer_Release(&view)


def q_encode(data) -> bytes:
    """`data` in the restricted Q encoding of RFC 2047 5 (3)."""
    cdef Py_buffer view
    cdef Py_ssize_t i, o = 0
    cdef const unsigned char *src
    cdef unsigned char c
    cdef char *dst
    cdef PyObject *raw
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        raw = new_bytes(NULL, 3 * view.len)
        dst = bytes_data(raw)
        src = <const unsigned char *>view.buf
        for i in range(view.len):
            c = src[i]
            if Q_LITERAL[c]:
                dst[o] = c
                o += 1
            elif c == b' ':
                dst[o] = b'_'
                o += 1
            else:
                dst[o] = b'='
                dst[o + 1] = HEX[c >> 4]
                dst[o + 2] = HEX[c & 15]
                o += 3
        return take_bytes(raw, o)
    finally:
        PyBuffer_Release(&view)


def b_encode(data) -> bytes:
    """`data` in base64 without line breaks."""
    cdef Py_buffer view
    cdef Py_ssize_t i, o = 0, whole
    cdef const unsigned char *src
    cdef unsigned int triple
    cdef char *dst
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, (view.len + 2) // 3 * 4)
        dst = PyBytes_AS_STRING(out)
        src = <const unsigned char *>view.buf
        whole = view.len - view.len % 3
        for i in range(0, whole, 3):
            triple = (src[i] << 16) | (src[i + 1] << 8) | src[i + 2]
            dst[o] = B64[triple >> 18]
            dst[o + 1] = B64[(triple >> 12) & 63]
            dst[o + 2] = B64[(triple >> 6) & 63]
            dst[o + 3] = B64[triple & 63]
            o += 4
        if view.len > whole:
            triple = src[whole] << 16
            if view.len - whole == 2:
                triple |= src[whole + 1] << 8
            dst[o] = B64[triple >> 18]
            dst[o + 1] = B64[(triple >> 12) & 63]
            dst[o + 2] = B64[(triple >> 6) & 63] if view.len - whole == 2 else b'='
            dst[o + 3] = b'='
        return out
    finally:
        PyBuffer_Release(&view)


def encode_words(str text, str charset="utf-8", int offset=0) -> str:
    """Encode `text` as folded encoded words; see rfc2047.pyi."""
    return plan_words(text, charset, offset, q_length, q_encode, b_encode)
