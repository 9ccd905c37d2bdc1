# cython: language_level=3
"""Streaming quoted-printable (RFC 2045 6.7), compiled.  Behaviour: see qp.pyi and fastmta._pure.qp.

Both directions are state machines in C over the caller's buffer, driven by
256-entry class tables, writing into one bytes object per call sized for the
worst case and shrunk in place.  The decoder's common shapes (runs of ordinary
bytes, "=XX", line breaks) take a fast path that copies eight bytes at a time;
everything else goes byte by byte.  State carried between calls is a few
bytes, plus (decoder) the whitespace run at the end of the current line, whose
fate is known only when the line ends.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport Py_DECREF, PyObject
from libc.string cimport memcpy
from fastmta._ext._bytesout cimport bytes_data, drop_bytes, new_bytes, take_bytes

__all__ = ["QPEncoder", "QPDecoder", "qp_encode", "qp_decode"]


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Which of the 8 bytes at p is the first "=", CR or LF?  8 if none.  A
       word-at-a-time zero-byte test on p XOR each pattern: its lowest set bit
       is exact (only bits above a zero byte can be wrong). */
    static inline int fastmta_qp_first_special(const unsigned char *p) {
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        uint64_t w, a, b, c, mask;
        memcpy(&w, p, 8);
        a = w ^ (ones * 0x3D);
        b = w ^ (ones * 0x0D);
        c = w ^ (ones * 0x0A);
        mask = (((a - ones) & ~a) | ((b - ones) & ~b) | ((c - ones) & ~c)) & highs;
        if (!mask) return 8;
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return __builtin_ctzll(mask) >> 3;
    #else
        for (int k = 0; k < 8; k++)
            if (p[k] == 0x3D || p[k] == 0x0D || p[k] == 0x0A) return k;
        return 8;
    #endif
    }
    """
    int first_special "fastmta_qp_first_special"(const unsigned char *p) noexcept nogil


cdef enum:
    CONTENT_MAX = 75  # RFC 2045 6.7 rule 5: 76 characters per line, "=" of a soft break included

cdef const char *HEX = b"0123456789ABCDEF"

# Encoder byte classes.
cdef enum:
    E_LITERAL = 0
    E_ESCAPE = 1
    E_SPACE = 2  # SP, TAB
    E_CR = 3

# Decoder byte classes.
cdef enum:
    D_PLAIN = 0
    D_SPACE = 1
    D_CR = 2
    D_LF = 3
    D_EQUALS = 4

cdef unsigned char ENCODE_CLASS[256]
cdef unsigned char DECODE_CLASS[256]
cdef unsigned char HEX_VALUE[256]  # 255: not a hex digit


cdef void _build_tables():
    cdef int i
    for i in range(256):
        ENCODE_CLASS[i] = E_LITERAL if (33 <= i <= 126 and i != 61) else E_ESCAPE
        DECODE_CLASS[i] = D_PLAIN
        HEX_VALUE[i] = 255
    ENCODE_CLASS[32] = E_SPACE
    ENCODE_CLASS[9] = E_SPACE
    ENCODE_CLASS[13] = E_CR
    DECODE_CLASS[32] = D_SPACE
    DECODE_CLASS[9] = D_SPACE
    DECODE_CLASS[13] = D_CR
    DECODE_CLASS[10] = D_LF
    DECODE_CLASS[61] = D_EQUALS
    for i in range(10):
        HEX_VALUE[48 + i] = i
    for i in range(6):
        HEX_VALUE[65 + i] = 10 + i
        HEX_VALUE[97 + i] = 10 + i


_build_tables()


cdef class QPEncoder:
    """Encode a byte stream as quoted-printable, text or binary mode."""

    cdef readonly bint binary
    cdef unsigned char held_space  # 0, or a SP/TAB whose encoding depends on the next byte
    cdef bint held_cr  # text mode: a CR that may start a CRLF
    cdef int column
    cdef bint finished

    def __init__(self, bint binary=False):
        self.binary = binary
        self.held_space = 0
        self.held_cr = False
        self.column = 0
        self.finished = False

    def feed(self, data) -> bytes:
        """Encode `data`; return the encoded text completed so far."""
        if self.finished:
            raise ValueError("QPEncoder.feed() after finish(); create a new encoder")
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._encode(<const unsigned char *>view.buf, view.len, False)
        finally:
            PyBuffer_Release(&view)

    def finish(self) -> bytes:
        """Encode what is held back (a final SP/TAB is encoded, a final CR is =0D)."""
        if self.finished:
            raise ValueError("QPEncoder.finish() called twice; create a new encoder")
        self.finished = True
        return self._encode(NULL, 0, True)

    cdef object _encode(self, const unsigned char *src, Py_ssize_t n, bint final):
        # Worst case: 3 characters per byte (2 held bytes included), plus a soft
        # break for every 73 characters (a line holds at least 73 before one).
        cdef Py_ssize_t escaped = 3 * (n + 2)
        cdef PyObject *raw = new_bytes(NULL, escaped + 3 * (escaped // 73 + 2))
        cdef char *dst = bytes_data(raw)
        cdef Py_ssize_t i, o = 0
        cdef int column = self.column
        cdef unsigned char c, space = self.held_space, cls
        cdef bint cr = self.held_cr
        cdef bint binary = self.binary
        for i in range(n):
            c = src[i]
            if cr:
                cr = False
                if c == 10:  # CRLF: a hard line break; a space before it is encoded
                    if space:
                        if column + 3 > CONTENT_MAX:
                            dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                            o += 3
                        dst[o] = b'='; dst[o + 1] = HEX[space >> 4]; dst[o + 2] = HEX[space & 15]
                        o += 3
                        space = 0
                    dst[o] = b'\r'; dst[o + 1] = b'\n'
                    o += 2
                    column = 0
                    continue
                if space:
                    if column + 1 > CONTENT_MAX:
                        dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                        o += 3
                        column = 0
                    dst[o] = space
                    o += 1
                    column += 1
                    space = 0
                if column + 3 > CONTENT_MAX:
                    dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                    o += 3
                    column = 0
                dst[o] = b'='; dst[o + 1] = b'0'; dst[o + 2] = b'D'
                o += 3
                column += 3
            cls = ENCODE_CLASS[c]
            if cls == E_CR and not binary:
                cr = True
                continue
            if space:
                if column + 1 > CONTENT_MAX:
                    dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                    o += 3
                    column = 0
                dst[o] = space
                o += 1
                column += 1
                space = 0
            if cls == E_SPACE:
                space = c
            elif cls == E_LITERAL:
                if column + 1 > CONTENT_MAX:
                    dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                    o += 3
                    column = 0
                dst[o] = c
                o += 1
                column += 1
            else:
                if column + 3 > CONTENT_MAX:
                    dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                    o += 3
                    column = 0
                dst[o] = b'='; dst[o + 1] = HEX[c >> 4]; dst[o + 2] = HEX[c & 15]
                o += 3
                column += 3
        if final:
            if cr:
                if space:
                    if column + 1 > CONTENT_MAX:
                        dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                        o += 3
                        column = 0
                    dst[o] = space
                    o += 1
                    column += 1
                    space = 0
                if column + 3 > CONTENT_MAX:
                    dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                    o += 3
                    column = 0
                dst[o] = b'='; dst[o + 1] = b'0'; dst[o + 2] = b'D'
                o += 3
                cr = False
            elif space:
                if column + 3 > CONTENT_MAX:
                    dst[o] = b'='; dst[o + 1] = b'\r'; dst[o + 2] = b'\n'
                    o += 3
                dst[o] = b'='; dst[o + 1] = HEX[space >> 4]; dst[o + 2] = HEX[space & 15]
                o += 3
                space = 0
            column = 0
        self.column = column
        self.held_space = space
        self.held_cr = cr
        return take_bytes(raw, o)


# Decoder states (see QPDecoder).
cdef enum:
    S_NORMAL = 0  # in a line; `spaces` may hold a whitespace run
    S_CR = 1  # ... then a CR: line end if LF follows
    S_EQ = 2  # "=" seen
    S_EQ_HEX = 3  # "=" and one hex digit
    S_EQ_SPACE = 4  # "=" then whitespace (in `spaces`): soft break if the line ends
    S_EQ_CR = 5  # "=", maybe whitespace, then CR


cdef class QPDecoder:
    """Decode quoted-printable fed in arbitrary chunks."""

    cdef int state
    cdef unsigned char first_hex
    cdef unsigned char *spaces  # whitespace not yet known to be trailing
    cdef Py_ssize_t nspaces, spaces_capacity
    cdef bint finished

    def __cinit__(self):
        self.spaces = NULL
        self.nspaces = 0
        self.spaces_capacity = 0

    def __init__(self):
        self.state = S_NORMAL
        self.nspaces = 0
        self.finished = False

    def __dealloc__(self):
        PyMem_Free(self.spaces)

    def feed(self, data) -> bytes:
        """Decode `data`; return the bytes completed so far."""
        if self.finished:
            raise ValueError("QPDecoder.feed() after finish(); create a new decoder")
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._decode(<const unsigned char *>view.buf, view.len, False)
        finally:
            PyBuffer_Release(&view)

    def finish(self) -> bytes:
        """Decode the held end of the last line as the end of the data."""
        if self.finished:
            raise ValueError("QPDecoder.finish() called twice; create a new decoder")
        self.finished = True
        return self._decode(NULL, 0, True)

    cdef bint _hold_space(self, unsigned char c) noexcept:
        """Append to the held whitespace; False if memory ran out (the caller raises)."""
        cdef Py_ssize_t capacity
        cdef unsigned char *grown
        if self.nspaces == self.spaces_capacity:
            capacity = self.spaces_capacity * 2 if self.spaces_capacity else 64
            grown = <unsigned char *>PyMem_Realloc(self.spaces, capacity)
            if grown == NULL:
                return False
            self.spaces = grown
            self.spaces_capacity = capacity
        self.spaces[self.nspaces] = c
        self.nspaces += 1
        return True

    cdef object _decode(self, const unsigned char *src, Py_ssize_t n, bint final):
        # Each output byte comes from one input byte, now or held from before.
        cdef PyObject *raw = new_bytes(NULL, n + self.nspaces + 4)
        cdef unsigned char *dst = <unsigned char *>bytes_data(raw)
        cdef Py_ssize_t i = 0, o = 0
        cdef unsigned char c, cls
        cdef int state = self.state
        cdef unsigned char high, low
        cdef Py_ssize_t floor, kept
        cdef int step
        cdef bint out_of_memory = False
        while i < n:
            if state == S_NORMAL and self.nspaces == 0:
                # Fast path for the common shapes: plain bytes and whitespace,
                # "=XX", soft and hard line breaks.  Whitespace is copied at once
                # and taken back if the line ends right after it (rule 3); `floor`
                # is where the output of the current line can no longer be
                # taken back (after a decoded escape or a line end).
                floor = o
                while i < n:
                    c = src[i]
                    cls = DECODE_CLASS[c]
                    if cls <= D_SPACE:
                        # A run of bytes up to the next "=", CR or LF, eight at a
                        # time (the output always has room for eight more).
                        while i + 8 <= n:
                            memcpy(dst + o, src + i, 8)
                            step = first_special(src + i)
                            i += step
                            o += step
                            if step < 8:
                                break
                        else:
                            while i < n and DECODE_CLASS[src[i]] <= D_SPACE:
                                dst[o] = src[i]
                                o += 1
                                i += 1
                    elif cls == D_EQUALS and i + 2 < n:
                        high = HEX_VALUE[src[i + 1]]
                        low = HEX_VALUE[src[i + 2]]
                        if (high | low) < 16:
                            dst[o] = (high << 4) | low
                            o += 1
                            i += 3
                            # 8-bit text comes as runs of escapes ("=C3=A9"): stay here.
                            while i + 2 < n and src[i] == 61:
                                high = HEX_VALUE[src[i + 1]]
                                low = HEX_VALUE[src[i + 2]]
                                if (high | low) >= 16:
                                    break
                                dst[o] = (high << 4) | low
                                o += 1
                                i += 3
                            floor = o
                            continue
                        elif not (src[i + 1] == 13 and src[i + 2] == 10):
                            break  # neither an escape nor a soft break
                        floor = o
                        i += 3
                    elif cls == D_CR and i + 1 < n and src[i + 1] == 10:
                        while o > floor and (dst[o - 1] == 32 or dst[o - 1] == 9):
                            o -= 1
                        dst[o] = 13
                        dst[o + 1] = 10
                        o += 2
                        i += 2
                        floor = o
                    elif cls == D_LF:
                        while o > floor and (dst[o - 1] == 32 or dst[o - 1] == 9):
                            o -= 1
                        dst[o] = 10
                        o += 1
                        i += 1
                        floor = o
                    else:
                        break
                # Whitespace at the end of what was copied is undecided again:
                # hand it to the byte-by-byte machine.
                kept = o
                while kept > floor and (dst[kept - 1] == 32 or dst[kept - 1] == 9):
                    kept -= 1
                while kept < o:
                    if not self._hold_space(dst[kept]):
                        out_of_memory = True
                        break
                    kept += 1
                if out_of_memory:
                    break
                o = o - self.nspaces
                if i == n:
                    break
            c = src[i]
            cls = DECODE_CLASS[c]
            if state == S_NORMAL:
                if cls == D_PLAIN:
                    if self.nspaces:
                        memcpy(dst + o, self.spaces, self.nspaces)
                        o += self.nspaces
                        self.nspaces = 0
                    # Copy the run of plain bytes in one tight loop.
                    while True:
                        dst[o] = c
                        o += 1
                        i += 1
                        if i == n:
                            break
                        c = src[i]
                        if DECODE_CLASS[c] != D_PLAIN:
                            break
                    continue
                elif cls == D_SPACE:
                    if not self._hold_space(c):
                        out_of_memory = True
                        break
                elif cls == D_CR:
                    state = S_CR
                elif cls == D_LF:
                    self.nspaces = 0  # trailing whitespace is dropped (rule 3)
                    dst[o] = 10
                    o += 1
                else:
                    memcpy(dst + o, self.spaces, self.nspaces)
                    o += self.nspaces
                    self.nspaces = 0
                    state = S_EQ
            elif state == S_CR:
                if cls == D_LF:
                    self.nspaces = 0
                    dst[o] = 13
                    dst[o + 1] = 10
                    o += 2
                    state = S_NORMAL
                else:  # a lone CR is content: keep it, and look at this byte again
                    memcpy(dst + o, self.spaces, self.nspaces)
                    o += self.nspaces
                    self.nspaces = 0
                    dst[o] = 13
                    o += 1
                    state = S_NORMAL
                    continue
            elif state == S_EQ:
                if HEX_VALUE[c] != 255:
                    self.first_hex = c
                    state = S_EQ_HEX
                elif cls == D_SPACE:
                    if not self._hold_space(c):
                        out_of_memory = True
                        break
                    state = S_EQ_SPACE
                elif cls == D_CR:
                    state = S_EQ_CR
                elif cls == D_LF:
                    state = S_NORMAL  # soft line break
                elif cls == D_EQUALS:
                    dst[o] = 61  # malformed "=": literal; this "=" starts anew
                    o += 1
                else:
                    dst[o] = 61
                    dst[o + 1] = c
                    o += 2
                    state = S_NORMAL
            elif state == S_EQ_HEX:
                if HEX_VALUE[c] != 255:
                    dst[o] = (HEX_VALUE[self.first_hex] << 4) | HEX_VALUE[c]
                    o += 1
                    state = S_NORMAL
                else:
                    dst[o] = 61
                    dst[o + 1] = self.first_hex
                    o += 2
                    state = S_NORMAL
                    continue
            elif state == S_EQ_SPACE:
                if cls == D_SPACE:
                    if not self._hold_space(c):
                        out_of_memory = True
                        break
                elif cls == D_CR:
                    state = S_EQ_CR
                elif cls == D_LF:
                    self.nspaces = 0
                    state = S_NORMAL  # soft line break with transport whitespace
                else:
                    dst[o] = 61
                    o += 1
                    memcpy(dst + o, self.spaces, self.nspaces)
                    o += self.nspaces
                    self.nspaces = 0
                    state = S_NORMAL
                    continue
            else:  # S_EQ_CR
                if cls == D_LF:
                    self.nspaces = 0
                    state = S_NORMAL
                else:
                    dst[o] = 61
                    o += 1
                    memcpy(dst + o, self.spaces, self.nspaces)
                    o += self.nspaces
                    self.nspaces = 0
                    dst[o] = 13
                    o += 1
                    state = S_NORMAL
                    continue
            i += 1
        if final:
            # The end of the data ends the last line.
            if state == S_CR:
                memcpy(dst + o, self.spaces, self.nspaces)
                o += self.nspaces
                dst[o] = 13
                o += 1
            elif state == S_EQ_HEX:
                dst[o] = 61
                dst[o + 1] = self.first_hex
                o += 2
            elif state == S_EQ_CR:
                dst[o] = 61
                o += 1
                memcpy(dst + o, self.spaces, self.nspaces)
                o += self.nspaces
                dst[o] = 13
                o += 1
            # S_NORMAL, S_EQ, S_EQ_SPACE: trailing whitespace and a final soft break vanish.
            self.nspaces = 0
            state = S_NORMAL
        self.state = state
        if out_of_memory:
            drop_bytes(raw)
            raise MemoryError("quoted-printable decoder: no memory to hold a whitespace run")
        return take_bytes(raw, o)


def qp_encode(data, bint binary=False) -> bytes:
    """Encode `data` in one go; see `QPEncoder`."""
    encoder = QPEncoder(binary)
    return encoder.feed(data) + encoder.finish()


def qp_decode(data) -> bytes:
    """Decode `data` in one go; see `QPDecoder`."""
    decoder = QPDecoder()
    return decoder.feed(data) + decoder.finish()
